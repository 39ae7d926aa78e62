"""The registry lock every promoter shares: which lock each registry gets, the PostgreSQL advisory lock on a real
PostgreSQL, and two clones promoting at once against one real MLflow server on PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from conftest import TINY_MODELS, real_params, tiny_params, write_tiny_catalogue
from pydantic import ValidationError
from registry_helpers import cli, cli_args
from server_helpers import free_port, stop_process_group, wait_until_answers

from catalog_classifier.config.params import REGISTRY_LOCK_URL_ENV, RegistryParams
from catalog_classifier.infra.postgres import PostgresCluster
from catalog_classifier.registry.locking import (
    CONNECT_TIMEOUT_S,
    FileRegistryLock,
    PostgresAdvisoryLock,
    advisory_key,
    choose_lock,
)
from catalog_classifier.registry.versions import RegistryError, RegistryLockTimeout, RegistryLockUnavailable

SERVER_STARTUP_S = 180
MODEL = TINY_MODELS[0]
EXPERIMENT = "catalog-classifier"


def registry_params(**changes: Any) -> RegistryParams:
    """params.yaml's registry section (validated alone: the whole file would import timm to check model names)."""
    return RegistryParams.model_validate({**real_params()["registry"], **changes})


@contextlib.contextmanager
def held_by_test(url: str, model_name: str, who: str = "test-holder") -> Iterator[psycopg.Connection]:
    """The registry lock of ``model_name`` taken by this test's own session, as another promoter would hold it."""
    with psycopg.connect(url, autocommit=True, application_name=who) as connection:
        connection.execute("SELECT pg_advisory_lock(%s)", (advisory_key(model_name),))
        yield connection


def holders(url: str, model_name: str) -> list[str]:
    """application_name of every session holding ``model_name``'s advisory lock (pg_locks + pg_stat_activity)."""
    unsigned = advisory_key(model_name) & 0xFFFFFFFFFFFFFFFF
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %s AND l.objid::bigint = %s",
            (unsigned >> 32, unsigned & 0xFFFFFFFF)).fetchall()
    return [row[0] for row in rows]


# --- which lock for which registry -----------------------------------------------------------------------------


def test_the_embedded_sqlite_store_keeps_its_file_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REGISTRY_LOCK_URL_ENV, raising=False)
    lock = choose_lock(f"sqlite:///{tmp_path}/mlruns/mlflow.db", tmp_path, registry_params(), "promote")
    assert lock == FileRegistryLock(tmp_path / "mlruns" / "mlflow.db.registry.lock", 600)


def test_an_http_server_without_a_shared_lock_is_refused_saying_how_to_set_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REGISTRY_LOCK_URL_ENV, raising=False)
    with pytest.raises(RegistryError) as refused:
        choose_lock("http://mlflow.example:5000", tmp_path, registry_params(), "rollback")
    message = str(refused.value)
    assert "\n" not in message and not isinstance(refused.value, RegistryLockTimeout)
    assert message.startswith("rollback refused: the registry at http://mlflow.example:5000 is shared")
    assert f"set {REGISTRY_LOCK_URL_ENV}=postgresql://" in message and "registry.lock_url" in message


def test_the_lock_url_comes_from_the_environment_then_params_then_a_postgresql_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REGISTRY_LOCK_URL_ENV, raising=False)
    from_params = choose_lock("http://h:5000", tmp_path, registry_params(lock_url="postgresql://team@db:5433/locks",
                                                                          model_name="m"), "promote")
    assert isinstance(from_params, PostgresAdvisoryLock) and from_params.url == "postgresql://team@db:5433/locks"
    assert from_params.describe() == f"PostgreSQL advisory lock {advisory_key('m')} on db:5433/locks"
    store = choose_lock("postgresql+psycopg://u:secret@db/mlflow", tmp_path, registry_params(), "promote")
    assert isinstance(store, PostgresAdvisoryLock) and "secret" not in repr(store)
    monkeypatch.setenv(REGISTRY_LOCK_URL_ENV, "postgresql://u:secret@envdb/locks")
    from_env = choose_lock(f"sqlite:///{tmp_path}/mlflow.db", tmp_path,
                           registry_params(lock_url="postgresql://team@db/locks"), "promote")
    assert isinstance(from_env, PostgresAdvisoryLock) and from_env.url == "postgresql://u:secret@envdb/locks"
    monkeypatch.setenv(REGISTRY_LOCK_URL_ENV, "mysql://u:secret@envdb/locks")
    with pytest.raises(RegistryError, match=r"must be a postgresql:// URL, not mysql://u:\*\*\*@envdb/locks"):
        choose_lock("http://h:5000", tmp_path, registry_params(), "promote")


def test_params_refuse_a_password_or_another_database_for_the_lock() -> None:
    with pytest.raises(ValidationError) as leaked:
        registry_params(lock_url="postgresql://team:hunter2@db/locks")
    [message] = [error["msg"] for error in leaked.value.errors()]
    assert "no password in params.yaml" in message and REGISTRY_LOCK_URL_ENV in message and "hunter2" not in message
    with pytest.raises(ValidationError, match="the registry lock is a PostgreSQL advisory lock"):
        registry_params(lock_url="http://db/locks")
    assert real_params()["registry"]["lock_url"] is None and registry_params(lock_url="").lock_url is None


def test_the_key_depends_on_the_model_name_only_and_is_the_same_in_another_process() -> None:
    assert advisory_key("a") != advisory_key("b") and advisory_key("a") == advisory_key("a")
    printed = subprocess.run([sys.executable, "-c", "from catalog_classifier.registry.locking import advisory_key;"
                              "print(advisory_key('catalog-classifier'))"], capture_output=True, text=True,
                             check=True).stdout
    assert int(printed) == advisory_key("catalog-classifier")  # not Python's per-process salted hash()


# --- the advisory lock on a real PostgreSQL ----------------------------------------------------------------------


def pg_lock(url: str, name: str, timeout_s: float, who: str = "catalog-classifier promote t") -> PostgresAdvisoryLock:
    return PostgresAdvisoryLock(url, name, timeout_s, who)


def test_a_held_lock_times_out_naming_its_holder_then_is_taken_once_released(postgres: PostgresCluster) -> None:
    url = postgres.create_database("registry_lock")
    with held_by_test(url, "held"):
        started = time.monotonic()
        with pytest.raises(RegistryLockTimeout) as timed_out, pg_lock(url, "held", 1.5).held():
            pass
        waited = time.monotonic() - started
        assert 1.5 <= waited < 4, waited
        message = str(timed_out.value)
        assert "\n" not in message and postgres.password() not in message
        assert message.startswith("another promote or rollback has held the registry lock of 'held' (PostgreSQL "
                                  f"advisory lock {advisory_key('held')} on 127.0.0.1:{postgres.port}/registry_lock)"
                                  " for over 1.5s: held by 'test-holder' (server pid ")
        with pg_lock(url, "other", 1).held():  # another registered model has its own lock
            assert holders(url, "other") == ["catalog-classifier promote t"]
    with pg_lock(url, "held", 1).held():
        assert holders(url, "held") == ["catalog-classifier promote t"]
    assert holders(url, "held") == []


def test_a_promoter_killed_while_holding_the_lock_releases_it(postgres: PostgresCluster) -> None:
    url = postgres.create_database("registry_lock")
    script = ("import sys, time\nfrom catalog_classifier.registry.locking import PostgresAdvisoryLock\n"
              "with PostgresAdvisoryLock(sys.argv[1], 'killed', 5, 'doomed promoter').held():\n"
              "    print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", script, url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert holders(url, "killed") == ["doomed promoter"]
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with pg_lock(url, "killed", 10).held():  # the server ended the dead session and its lock with it
            assert holders(url, "killed") == ["catalog-classifier promote t"]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_an_unreachable_lock_database_fails_within_seconds_in_one_line(postgres: PostgresCluster) -> None:
    nobody = postgres.url("registry_lock").replace(f":{postgres.port}/", f":{free_port()}/")
    started = time.monotonic()
    with pytest.raises(RegistryLockUnavailable) as unreachable:
        pg_lock(nobody, "m", 600).check()
    assert time.monotonic() - started < CONNECT_TIMEOUT_S + 1
    message = str(unreachable.value)
    assert "\n" not in message and postgres.password() not in message
    assert message.startswith(f"registry lock database 127.0.0.1:{nobody.rsplit(':', 1)[1]} unreachable (")
    assert "Connection refused" in message


# --- two clones, one MLflow server on PostgreSQL -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on a PostgreSQL store with proxied artifacts, as a team runs it; its URL."""
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow-server")
    store = postgres.create_database("reglock_mlflow")
    port = free_port()
    log = folder / "server.log"
    # Without MLflow's job runner (GenAI scoring and trace jobs, unused here): one process less on a loaded
    # machine, and a server that stops in seconds instead of waiting ~20 s for the runner's consumers.
    environment = {**{key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")},
                   "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", store, "--artifacts-destination", str(folder / "artifacts")]
    with log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{url}/health", server, log, SERVER_STARTUP_S)
        # The experiment as the team's server holds it: artifacts proxied by the server, not in one clone's folder.
        mlflow.MlflowClient(tracking_uri=url).create_experiment(EXPERIMENT)
        yield url
    finally:
        stop_process_group(server)


def make_clone(root: Path, real_data: Path) -> Path:
    """A tiny project with one candidate and no training: split by the real stage, an untrained ``MODEL`` saved
    the way the train stage saves one. Its predictions are arbitrary; the race only needs both clones to hold the
    same candidate, so the second judged against the first is never better (equal is not)."""
    from catalog_classifier.config.layout import Project
    from catalog_classifier.modeling.models import create_classifier, save_classifier

    write_tiny_catalogue(root / "data", real_data, per_class=6)
    with (root / "params.yaml").open("w", encoding="utf-8") as handle:
        yaml.safe_dump(tiny_params(), handle, sort_keys=False)
    assert cli(["split", "--params", str(root / "params.yaml")]) == 0
    project = Project.load(root / "params.yaml")
    model, _ = create_classifier(MODEL, len(project.params.data.classes), image_size=project.params.train.image_size)
    project.model_dir(MODEL).mkdir(parents=True)
    save_classifier(model, MODEL, list(project.params.data.classes), project.weights(MODEL))
    return root


def with_own_run(clone: Path, server: str) -> Path:
    """The candidate's run on the shared server, holding the training manifest promote reads (as train logs it)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server)
    run = client.create_run(client.get_experiment_by_name(EXPERIMENT).experiment_id, run_name=f"{clone.name}-{MODEL}")
    client.log_artifact(run.info.run_id, str(clone / "artifacts/splits/train.csv"), "splits")
    client.set_terminated(run.info.run_id)
    (clone / f"artifacts/models/{MODEL}/run.json").write_text(json.dumps({"run_id": run.info.run_id}))
    return clone


@pytest.fixture(scope="module")
def clones(real_data: Path, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two working copies of one project (the second copied from the first), each with its own run."""
    folder = tmp_path_factory.mktemp("clones")
    first = make_clone(folder / "clone-a", real_data)
    second = shutil.copytree(first, folder / "clone-b")
    return [with_own_run(clone, mlflow_server) for clone in (first, second)]


def promote_command(clone: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "catalog_classifier", "promote", "--model", MODEL,
            *cli_args(clone, name, registry__class_f1_floor=0)]


@pytest.mark.slow
def test_two_clones_promoting_at_once_leave_one_champion_and_both_decisions(
        clones: list[Path], mlflow_server: str, postgres: PostgresCluster) -> None:
    from mlflow import MlflowClient

    name = "race"
    lock_url = postgres.url("reglock_mlflow")  # the lock lives in the MLflow server's own database
    environment = {**{key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")},
                   "MLFLOW_TRACKING_URI": mlflow_server, REGISTRY_LOCK_URL_ENV: lock_url}
    racers = [subprocess.Popen(promote_command(clone, name), cwd=clone, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True) for clone in clones]
    outputs = [racer.communicate(timeout=600)[0] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], "\n".join(outputs)

    registry = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    model = registry.get_registered_model(name)
    assert {alias: str(version) for alias, version in model.aliases.items()} == {"champion": "1", "challenger": "2"}
    assert json.loads(model.tags["champion_history"]) == ["1"]
    versions = {str(v.version): v.tags for v in registry.search_model_versions(f"name='{name}'")}
    assert sorted(versions) == ["1", "2"]
    reports = [json.loads((clone / "artifacts/promotion.json").read_text()) for clone in clones]
    first, second = sorted(reports, key=lambda report: report["version"])
    # Whoever took the lock first registered v1 and became champion; the other was judged against it.
    assert (first["version"], first["decision"], first["champion_before"], first["champion_after"]) == (
        "1", "promoted", None, "1")
    assert (second["version"], second["decision"], second["champion_before"], second["champion_after"]) == (
        "2", "rejected", "1", "1")
    assert second["figures"]["delta"] == 0  # the same weights in both clones: equal is not better
    for report in reports:  # each clone's decision is on its own version, from its own run
        tags = versions[report["version"]]
        assert tags["decision"] == report["decision"] and tags["source_run_id"] == report["source_run_id"]
        assert tags["compared_with"] == (report["champion_before"] or "none")
    assert {report["source_run_id"] for report in reports} == {
        json.loads((clone / f"artifacts/models/{MODEL}/run.json").read_text())["run_id"] for clone in clones}
    assert holders(lock_url, name) == []
    assert not any((clone / "mlruns").exists() for clone in clones)  # no per-clone store or file lock was used


@pytest.mark.slow
def test_promote_waits_for_a_held_lock_then_fails_with_the_timeout_error(
        clones: list[Path], mlflow_server: str, postgres: PostgresCluster, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = "held"
    lock_url = postgres.url("reglock_mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv(REGISTRY_LOCK_URL_ENV, lock_url)
    args = ["promote", "--model", MODEL, *cli_args(clones[0], name, registry__lock_timeout_s=2,
                                                   registry__out_json=clones[0] / "held.json")]
    with held_by_test(lock_url, name, who="release-manager on laptop"), caplog.at_level("INFO"):
        capsys.readouterr()
        assert cli(args) == 75  # transient: the orchestrator retries later
        failed_at = time.time()
    [waiting] = [record for record in caplog.records if "waiting up to 2s" in record.getMessage()]
    assert waiting.getMessage().startswith("registry lock of 'held' is held by 'release-manager on laptop'")
    assert 2 <= failed_at - waiting.created < 4  # the configured timeout, from the moment promote began to wait
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's own log lines
    assert lock_url not in error and postgres.password() not in error
    assert error.startswith(f"catalog-classifier promote: error: another promote or rollback has held the registry "
                            f"lock of 'held' (PostgreSQL advisory lock {advisory_key(name)} on 127.0.0.1:")
    assert "for over 2s: held by 'release-manager on laptop' (server pid " in error
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST|not found"):
        MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server).get_registered_model(name)
    assert not (clones[0] / "held.json").exists()


@pytest.mark.slow
def test_an_http_server_without_a_shared_lock_refuses_before_writing_anything(
        clones: list[Path], mlflow_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        ) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv(REGISTRY_LOCK_URL_ENV, raising=False)
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    logged = len(client.search_logged_models(experiment_ids=[experiment], max_results=1000))
    capsys.readouterr()
    assert cli(["promote", "--model", MODEL, *cli_args(clones[1], "unguarded")]) == 2
    assert cli(["rollback", *cli_args(clones[1], "unguarded")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("catalog-classifier ")]
    assert [line.split(":", 1)[0] for line in errors] == ["catalog-classifier promote", "catalog-classifier rollback"]
    for action, line in zip(("promote", "rollback"), errors, strict=True):
        assert line.startswith(f"catalog-classifier {action}: error: {action} refused: the registry at "
                               f"{mlflow_server} is shared")
        assert f"set {REGISTRY_LOCK_URL_ENV}=postgresql://" in line
    assert len(client.search_logged_models(experiment_ids=[experiment], max_results=1000)) == logged
    assert client.search_registered_models("name='unguarded'") == []
