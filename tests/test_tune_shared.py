"""Optuna on a shared database: several workers on one study in PostgreSQL (and sqlite), a global trial cap, start
points queued once, one MLflow parent run, and a SIGKILLed worker's trial failed by its heartbeat and run again.

The tiny colour project of test_tune.py (3 classes, 32 px, resnet10t, 2 epochs, heartbeat 1 s) keeps each trial to
a second or two; what is slow here is starting Python processes (torch), so the tests start few, side by side.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
from conftest import run
from server_helpers import free_port
from test_tune import FAMILY, N_TRIALS, make_colour_project, subprocess_env

# A worker that SIGKILLs itself at epoch 1 of its first trial: a hard kill mid-trial, not tied to timing.
KILLED_WORKER = """
import os, signal, sys
import catalog_classifier.tuning.objective as tune

real_fit = tune.fit_model

def fit(*args, on_epoch, **kwargs):
    def hook(epoch, row):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        on_epoch(epoch, row)

    return real_fit(*args, on_epoch=hook, **kwargs)

tune.fit_model = fit
from catalog_classifier.cli import main
sys.exit(main(sys.argv[1:]))
"""
# The other worker: the plain CLI, started at the same moment (its imports overlap the first worker's), but only
# let into the study once the first worker holds a trial, so that one is sure to die mid-trial.
PATIENT_WORKER = """
import os, sys, time
import sqlalchemy
import catalog_classifier.tuning.objective  # the slow imports, while the first worker makes its own
from catalog_classifier.cli import main

engine = sqlalchemy.create_engine(os.environ["CATALOG_TUNE_STORAGE"])
deadline = time.monotonic() + 180
while time.monotonic() < deadline:
    try:
        with engine.connect() as connection:  # SQL, not optuna.load_study: that would create the tables unlocked
            if connection.execute(sqlalchemy.text("SELECT count(*) FROM trials WHERE state = 'RUNNING'")).scalar():
                break
    except sqlalchemy.exc.ProgrammingError:  # no tables yet
        pass
    time.sleep(0.2)
engine.dispose()
sys.exit(main(sys.argv[1:]))
"""
# N processes open one new study at the same moment (a file barrier), then race for its trial slots.
RACING_WORKER = """
import sys, time
from pathlib import Path
import optuna
from catalog_classifier.tuning.storage import StorageLock
from catalog_classifier.tuning.shared import open_study, run_study

url, n_trials, barrier, index, workers = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
(barrier / index).touch()
while len(list(barrier.iterdir())) < workers:
    time.sleep(0.01)
lock = StorageLock(url, timeout_s=60)
study, worker = open_study(url, "race", seed=7, pruner=optuna.pruners.NopPruner(), heartbeat_s=1, stale_retries=1,
                           lock=lock, setup={"v": 1}, points={"baseline": {"x": 0.5}})

def objective(trial):
    x = trial.suggest_float("x", 0.0, 1.0)
    time.sleep(0.05)
    return x

print(run_study(study, objective, n_trials, None, lock, poll_s=0.2))
"""


def storage_env(url: str) -> dict[str, str]:
    """The PostgreSQL URL reaches the workers from the environment, its password never through params.yaml."""
    return {**subprocess_env(), "CATALOG_TUNE_STORAGE": url}


def states(study: optuna.Study) -> list[str]:
    return [trial.state.name for trial in study.trials]


def finished(study: optuna.Study) -> int:
    return sum(state in ("COMPLETE", "PRUNED") for state in states(study))


def tuning_runs(root: Path) -> list[mlflow.entities.Run]:
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlruns/mlflow.db")
    return mlflow.search_runs(experiment_names=["catalog-classifier-tuning"], output_format="list")


def study_runs(root: Path, study: str) -> list[mlflow.entities.Run]:
    return [run_ for run_ in tuning_runs(root) if run_.data.tags.get("optuna.study_name") == study]


def tune_args(prefix: str) -> list[str]:
    """The CLI's tune command on the shared project, with this scenario's own study name and output folder."""
    return ["tune", "--family", FAMILY, "--set", f"tune.study_prefix={prefix}", "--set", f"tune.out_dir=out/{prefix}"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One split colour project for the scenarios below (each has its own database, study name and outputs)."""
    from catalog_classifier.config.layout import Project
    from catalog_classifier.stages.split import run_split

    root = make_colour_project(tmp_path_factory.mktemp("shared") / "project")
    run_split(Project.load(root / "params.yaml"))
    return root


@pytest.fixture(scope="module")
def two_workers(project: Path, postgres: Any) -> dict[str, Any]:
    """``tune --workers 2`` on a new study in PostgreSQL."""
    url = postgres.create_database("tune_two_workers")
    done = run(["catalog-classifier", *tune_args("two"), "--workers", "2"], project, env=storage_env(url))
    return {"root": project, "url": url, "log": done.stderr, "study": optuna.load_study(study_name=f"two-{FAMILY}",
                                                                                         storage=url)}


@pytest.mark.slow
def test_two_workers_stop_at_the_global_cap_with_one_baseline(two_workers: dict[str, Any]) -> None:
    study = two_workers["study"]
    assert finished(study) == N_TRIALS  # the study's cap, not N_TRIALS per worker
    assert set(states(study)) <= {"COMPLETE", "PRUNED"}  # nothing left RUNNING or queued
    starts = [trial.user_attrs.get("start_point") for trial in study.trials]
    assert starts.count("baseline") == 1 and starts.count("enqueue[0]") == 1
    seeds = {key: value["sampler_seed"] for key, value in study.user_attrs.items() if key.startswith("worker.")}
    assert seeds == {"worker.000": 42, "worker.001": 43}  # one registration and one seed per worker process
    assert {trial.user_attrs["worker"] for trial in study.trials} <= {0, 1}
    summary = json.loads((two_workers["root"] / "out/two/tiny/summary.json").read_text())
    assert summary["trials_run_now"] == N_TRIALS and sum(summary["states"].values()) == N_TRIALS
    assert sorted(summary["workers"]) == ["000", "001"]


@pytest.mark.slow
def test_two_workers_share_one_mlflow_parent_run(two_workers: dict[str, Any]) -> None:
    study, root = two_workers["study"], two_workers["root"]
    runs = study_runs(root, study.study_name)
    parents = [run_ for run_ in runs if "mlflow.parentRunId" not in run_.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_id == study.user_attrs["mlflow_parent_run_id"] and parent.info.status == "FINISHED"
    nested = {int(run_.data.tags["optuna.trial_number"]): run_ for run_ in runs if run_ is not parent}
    assert sorted(nested) == [trial.number for trial in study.trials]
    for trial in study.trials:
        assert nested[trial.number].data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert nested[trial.number].data.tags["optuna.worker"] == str(trial.user_attrs["worker"])
        assert nested[trial.number].info.status == "FINISHED"
    # The storage is named, its password is not (in MLflow, in the summary, in the log).
    password = two_workers["url"].split(":")[2].split("@")[0]
    assert parent.data.tags["optuna.storage"].startswith("postgresql://catalog:***@127.0.0.1:")
    assert password not in (root / "out/two/tiny/summary.json").read_text()
    assert password not in two_workers["log"]


@pytest.fixture(scope="module")
def killed_worker(project: Path, postgres: Any) -> dict[str, Any]:
    """Two workers started by hand (as on two machines); the first is SIGKILLed at epoch 1 of its first trial."""
    url = postgres.create_database("tune_killed_worker")
    env = storage_env(url)
    doomed, patient = (subprocess.Popen([sys.executable, "-c", script, *tune_args("killed")], cwd=project, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                       for script in (KILLED_WORKER, PATIENT_WORKER))
    _, patient_log = patient.communicate(timeout=600)
    _, doomed_log = doomed.communicate(timeout=60)
    assert patient.returncode == 0, patient_log[-3000:]
    return {"root": project, "doomed": doomed.returncode, "doomed_log": doomed_log, "log": patient_log,
            "study": optuna.load_study(study_name=f"killed-{FAMILY}", storage=url)}


@pytest.mark.slow
def test_a_killed_workers_trial_fails_and_is_run_again(killed_worker: dict[str, Any]) -> None:
    assert killed_worker["doomed"] == -signal.SIGKILL, killed_worker["doomed_log"][-3000:]
    study = killed_worker["study"]
    failed = [trial for trial in study.trials if trial.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].user_attrs["worker"] == 0  # the killed worker's trial: never RUNNING
    assert "RUNNING" not in states(study) and finished(study) == N_TRIALS
    retries = [trial for trial in study.trials if trial.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retries) == 1 and retries[0].params == failed[0].params
    assert retries[0].state.name in ("COMPLETE", "PRUNED") and retries[0].user_attrs["worker"] == 1
    runs = {run_.info.run_id: run_ for run_ in study_runs(killed_worker["root"], study.study_name)}
    assert runs[failed[0].user_attrs["mlflow_run_id"]].info.status == "KILLED"
    assert runs[study.user_attrs["mlflow_parent_run_id"]].info.status == "FINISHED"
    assert len([run_ for run_ in runs.values() if "mlflow.parentRunId" not in run_.data.tags]) == 1


# --- the lock itself, with a trivial objective: many processes, a new study, one moment ---------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_racing_workers_create_one_study_queue_one_baseline_and_respect_the_cap(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/race.db"
    else:
        url = request.getfixturevalue("postgres").create_database("tune_race")
    workers, n_trials = 3, 8
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    processes = [subprocess.Popen([sys.executable, "-c", RACING_WORKER, url, str(n_trials), str(barrier), str(index),
                                   str(workers)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for index in range(workers)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0] * workers, [err[-2000:] for _, err in outputs]
    study = optuna.load_study(study_name="race", storage=url)
    assert states(study) == ["COMPLETE"] * n_trials  # not one trial past the cap
    assert sum(int(out.split()[-1]) for out, _ in outputs) == n_trials
    assert [trial.user_attrs.get("start_point") for trial in study.trials].count("baseline") == 1
    seeds = sorted(value["sampler_seed"] for key, value in study.user_attrs.items() if key.startswith("worker."))
    assert seeds == [7, 8, 9]


# --- storage URLs ---------------------------------------------------------------------------------------------------

def test_storage_urls_paths_environment_and_secrets(tmp_path: Path) -> None:
    from test_tune import tune_params

    from catalog_classifier.config.params import ParamsError, parse_params
    from catalog_classifier.infra.postgres import redact_url
    from catalog_classifier.tuning.storage import resolve_storage

    assert resolve_storage("artifacts/tune/optuna.db", tmp_path, {}) == f"sqlite:///{tmp_path}/artifacts/tune/optuna.db"
    assert resolve_storage("sqlite:///artifacts/tune/optuna.db", tmp_path, {}) == (
        f"sqlite:///{tmp_path}/artifacts/tune/optuna.db")
    assert resolve_storage("sqlite:////srv/optuna.db", tmp_path, {}) == "sqlite:////srv/optuna.db"
    templated = "postgresql://optuna:${OPTUNA_DB_PASSWORD}@db.example:5432/optuna"
    url = resolve_storage(templated, tmp_path, {"OPTUNA_DB_PASSWORD": "s3cret"})
    assert url == "postgresql://optuna:s3cret@db.example:5432/optuna"
    assert redact_url(url) == "postgresql://optuna:***@db.example:5432/optuna"
    # CATALOG_TUNE_STORAGE replaces the whole value (a worker pointed at the team database without editing params)
    assert resolve_storage("artifacts/tune/optuna.db", tmp_path, {"CATALOG_TUNE_STORAGE": url}) == url
    with pytest.raises(ParamsError, match=r"\$\{OPTUNA_DB_PASSWORD\} is not set"):
        resolve_storage(templated, tmp_path, {})
    with pytest.raises(ParamsError, match="mysql:// is not supported"):
        resolve_storage("x", tmp_path, {"CATALOG_TUNE_STORAGE": "mysql://u:p@h/db"})
    with pytest.raises(ParamsError, match="needs a file"):
        resolve_storage("sqlite://", tmp_path, {})
    raw = tune_params()
    raw["tune"]["storage"] = "mongodb://db/optuna"
    with pytest.raises(ParamsError, match="tune.storage"):
        parse_params(raw)


def test_an_unreachable_postgresql_fails_fast_with_one_line(tmp_path: Path) -> None:
    from catalog_classifier.tuning.shared import open_study
    from catalog_classifier.tuning.storage import StorageLock, StorageUnavailable

    url = f"postgresql://catalog:pw@127.0.0.1:{free_port()}/optuna"  # nothing listens there
    started = time.perf_counter()
    with pytest.raises(StorageUnavailable) as caught:
        open_study(url, "s", seed=1, pruner=optuna.pruners.NopPruner(), heartbeat_s=5, stale_retries=1,
                   lock=StorageLock(url, timeout_s=5), setup={}, points={})
    assert time.perf_counter() - started < 15
    message = str(caught.value)
    assert "\n" not in message and "unreachable" in message and ":pw@" not in message and "***" in message


def test_storage_overhead_is_timed_per_phase_on_both_backends(tmp_path: Path, postgres: Any) -> None:
    """make bench-tune's storage figure, on a few trials: every trial completes, every phase is timed."""
    from test_tune import tune_params

    from catalog_classifier.benchmarks.tuning_storage_cost import PHASES, storage_overhead
    from catalog_classifier.config.params import parse_params

    tune = parse_params(tune_params()).tune
    for url in (f"sqlite:///{tmp_path}/bench.db", postgres.create_database("tune_storage_bench")):
        figures = storage_overhead(url, tune, ["resnet10t"], n_trials=6, n_reports=3)
        assert figures["states"] == ["COMPLETE"] and figures["n_trials"] == 6 and figures["n_reports"] == 3
        assert set(figures["phases_ms_mean"]) == set(PHASES) and all(
            value > 0 for value in figures["phases_ms_mean"].values())
        assert figures["ms_per_trial"]["mean"] >= sum(figures["phases_ms_mean"].values()) * 0.99
        assert ":***@" in figures["storage"] or figures["backend"] == "sqlite"
        study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
        # reports 1..3 on every trial, as a real trial reports its epochs
        assert [list(trial.intermediate_values) for trial in study.trials] == [[1, 2, 3]] * 6
