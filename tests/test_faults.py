"""Faults on a tiny project seeded with every awkward image: the run goes on, interrupts leave nothing half done.

One module-scoped project (a few real images per class plus the generated zoo of broken and awkward images):
``split`` excludes the broken ones with reasons, ``check-data`` prints the same report, a training stage killed
half-way leaves no output and a KILLED MLflow run, its rerun completes, and an unreachable tracking server stops
``train`` before any training.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from badinput_support import (
    EXCLUDED,
    LOADED,
    cli_command,
    cli_env,
    closed_port,
    make_fault_project,
    run_cli,
    write_params,
)
from conftest import tiny_params

import catalog_classifier.data.datacheck as datacheck
from catalog_classifier.cli import main
from catalog_classifier.ops.interrupts import Terminated, exit_status, mark_interrupted_run_killed
from catalog_classifier.ops.io import atomic_path, write_json

pytestmark = pytest.mark.slow

MODEL = "resnet10t"
OTHER_MODEL = "mobilevitv2_050"
PER_CLASS = 4
N_REAL = 7 * PER_CLASS


def client(root: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db")


def runs_of(root: Path, model: str) -> list[Any]:
    experiment = client(root).get_experiment_by_name("catalog-classifier")
    runs = client(root).search_runs([experiment.experiment_id], filter_string=f"tags.model = '{model}'",
                                    order_by=["attributes.start_time ASC"])
    return list(runs)


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) if folder.exists() else []


@pytest.fixture()
def isolated_mlflow(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in-process stages against no inherited MLflow state, and leave none behind.

    ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI (and setup_mlflow sets MLFLOW_REGISTRY_URI):
    left over, they would point every later test and its subprocesses at this test's store.
    """
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)  # recorded as it was before: restored afterwards
    mlflow.set_tracking_uri(None)
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)
    mlflow.set_tracking_uri(None)  # forgets the URI and unsets the variable it exported


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> Path:
    return make_fault_project(tmp_path_factory.mktemp("faults") / "project", real_data, per_class=PER_CLASS)


@pytest.fixture(scope="module")
def split_result(project: Path) -> subprocess.CompletedProcess:
    result = run_cli(["split"], cwd=project)
    assert result.returncode == 0, result.stderr
    return result


# --- the run goes on: broken images excluded with reasons -------------------------------------------------------


def test_split_excludes_each_broken_image_with_its_reason_and_goes_on(
    project: Path, split_result: subprocess.CompletedProcess
) -> None:
    quality = json.loads((project / "artifacts/splits/quality.json").read_text())
    assert quality["rows"] == N_REAL + len(LOADED) + len(EXCLUDED)
    assert quality["usable_images"] == N_REAL + len(LOADED)
    assert quality["missing_files"] == ["dangling.jpg", "missing.jpg"]
    reasons = {item["image"]: item["reason"] for item in quality["unreadable_files"]}
    assert sorted(reasons) == sorted(name for name, reason in EXCLUDED.items() if reason)
    for name, reason in reasons.items():
        assert EXCLUDED[name] in reason, (name, reason)
    assert ["gray.png", "link_inside.png"] in quality["duplicate_groups"]
    manifests = pd.concat([pd.read_csv(project / f"artifacts/splits/{name}.csv") for name in ("train", "val", "test")])
    assert len(manifests) == quality["usable_images"] == sum(quality["split_counts"].values())
    assert set(LOADED) <= set(manifests["image"]) and not set(EXCLUDED) & set(manifests["image"])
    assert "unreadable: text.jpg: not an image (format not recognised)" in split_result.stdout
    assert "Traceback" not in split_result.stderr
    for name in EXCLUDED:  # one warning per exclusion, naming the image
        assert f"excluded {name}:" in split_result.stderr


def test_check_data_prints_the_same_report_for_any_folder(
    project: Path, split_result: subprocess.CompletedProcess, capsys: pytest.CaptureFixture[str],
    isolated_mlflow: None, tmp_path: Path,
) -> None:
    params = str(project / "params.yaml")
    assert main(["check-data", str(project / "data"), "--params", params, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    quality = json.loads((project / "artifacts/splits/quality.json").read_text())
    # The audit's part of quality.json (the split adds its counts and the near-duplicate groups it splits by).
    assert {key: report[key] for key in quality if key in report} == {
        key: value for key, value in quality.items() if not key.startswith("split_") and "near_duplicate" not in key}
    assert report["images_dir"] == str(project / "data" / "Images")

    # Another delivery: a plain image,label CSV under any name, images beside it.
    delivery = tmp_path / "seller"
    (delivery / "Images").mkdir(parents=True)
    for name in ("cmyk.jpg", "text.jpg"):
        (delivery / "Images" / name).write_bytes((project / "data" / "Images" / name).read_bytes())
    (delivery / "seller_upload.csv").write_text("image,label\ncmyk.jpg,Watches\ntext.jpg,Watches\n", encoding="utf-8")
    assert main(["check-data", str(delivery), "--params", params]) == 0
    out = capsys.readouterr().out
    assert f"catalogue:              {delivery / 'seller_upload.csv'}" in out
    assert "usable images:          1" in out and f"  {'Watches':<30} 1" in out
    assert "  unreadable: text.jpg: not an image (format not recognised)" in out

    (delivery / "other.csv").write_text("image,label\n", encoding="utf-8")
    assert main(["check-data", str(delivery), "--params", params]) == 2
    assert "expected flipkart_com-ecommerce_sample_1050.csv or a single CSV (found: other.csv, seller_upload.csv)" \
        in capsys.readouterr().err
    assert main(["check-data", str(delivery), "--params", params, "--catalogue", str(delivery / "seller_upload.csv"),
                 "--images", str(delivery / "Pictures")]) == 2
    assert "images folder not found" in capsys.readouterr().err


# --- interruption: SIGTERM half-way through training ---------------------------------------------------------------


def _val_metric_rows(database: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=5)) as connection:
            return connection.execute("SELECT count(*) FROM metrics WHERE key = 'val/f1_macro'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet, or busy
        return 0


@pytest.fixture(scope="module")
def interrupted(project: Path, split_result: subprocess.CompletedProcess) -> dict[str, Any]:
    """Start a long training, SIGTERM it once its first epoch is in MLflow, then rerun it normally."""
    model_dir = project / "artifacts/models" / MODEL
    process = subprocess.Popen(
        [cli_command(), "train", "--model", MODEL, "--set", "train.max_epochs=500", "--set", "train.patience=500"],
        cwd=project, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 900
        while _val_metric_rows(project / "mlruns/mlflow.db") < 1:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "training never logged its first epoch"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    after_kill = files_under(model_dir)
    history_after_kill = (project / f"artifacts/history/{MODEL}.csv").exists()
    rerun = run_cli(["train", "--model", MODEL], cwd=project)
    return {"returncode": process.returncode, "stderr": stderr, "after_kill": after_kill,
            "history_after_kill": history_after_kill, "rerun": rerun}


def test_sigterm_exits_143_with_one_clear_line(interrupted: dict[str, Any]) -> None:
    assert interrupted["returncode"] == 128 + signal.SIGTERM
    stderr = interrupted["stderr"]
    assert "Traceback" not in stderr
    assert "epoch 1/500" in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("catalog-classifier train: interrupted (terminated by signal 15); MLflow run ")
    assert last.endswith(" marked KILLED")


def test_killed_attempt_leaves_no_output_that_looks_complete(interrupted: dict[str, Any]) -> None:
    # Nothing at all: no weights, metrics or run record, and no temporary file left behind either.
    assert interrupted["after_kill"] == []
    assert not interrupted["history_after_kill"]


def test_killed_run_is_marked_killed_and_the_rerun_finishes(project: Path, interrupted: dict[str, Any]) -> None:
    rerun = interrupted["rerun"]
    assert rerun.returncode == 0, rerun.stderr
    killed, finished = runs_of(project, MODEL)[:2]  # later tests add runs
    assert killed.info.status == "KILLED" and killed.info.end_time is not None
    assert killed.info.run_id in interrupted["stderr"]
    assert killed.data.params["train.max_epochs"] == "500"
    assert len(client(project).get_metric_history(killed.info.run_id, "val/f1_macro")) >= 1
    assert finished.info.status == "FINISHED"
    assert finished.data.params["train.max_epochs"] == "2"
    record = json.loads((project / "artifacts/models" / MODEL / "run.json").read_text())
    assert record["run_id"] == finished.info.run_id


def test_rerun_outputs_are_complete_and_consistent(project: Path, interrupted: dict[str, Any]) -> None:
    from catalog_classifier.modeling.models import load_classifier

    model_dir = project / "artifacts/models" / MODEL
    assert [name for name in files_under(model_dir) if name.startswith(".")] == []  # no temp files
    metrics = json.loads((model_dir / "train_metrics.json").read_text())
    history = pd.read_csv(project / f"artifacts/history/{MODEL}.csv")
    assert metrics["epochs_run"] == len(history) == history["epoch"].max()
    assert metrics["best_epoch"] == int(history.loc[history["val_loss"].idxmin(), "epoch"])
    model, config = load_classifier(model_dir / "model.pt")
    assert config["model_name"] == MODEL and len(config["classes"]) == 7
    assert model.backbone.get_classifier().out_features == 7


def test_interrupt_after_the_weights_are_saved_leaves_no_run_record(
    project: Path, interrupted: dict[str, Any], monkeypatch: pytest.MonkeyPatch, isolated_mlflow: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The narrowest window: weights and metrics written, run.json (written last) not yet. The folder must not
    keep the previous run's run.json, which would pair these weights with another run's logged model."""
    import catalog_classifier.stages.train as train_stage

    model_dir = project / "artifacts/models" / MODEL
    before = (model_dir / "model.pt").read_bytes()
    previous_run = json.loads((model_dir / "run.json").read_text())["run_id"]

    def killed_while_logging(*args: Any, **kwargs: Any) -> None:
        raise Terminated(signal.SIGTERM)

    monkeypatch.setattr(train_stage, "log_model", killed_while_logging)
    status = main(["train", "--model", MODEL, "--params", str(project / "params.yaml"),
                   "--set", "train.max_epochs=1", "--set", "train.lr=0.01"])
    assert status == 143
    assert "marked KILLED" in capsys.readouterr().err
    assert (model_dir / "model.pt").read_bytes() != before  # this attempt's weights did land, atomically
    assert not (model_dir / "run.json").exists()
    runs = runs_of(project, MODEL)
    assert runs[-1].info.status == "KILLED" and runs[-1].info.run_id != previous_run
    assert [run.info.status for run in runs[:-1]] == ["KILLED", "FINISHED"]


# --- unreachable tracking server -----------------------------------------------------------------------------------


def test_unreachable_tracking_server_stops_train_before_any_training(
    project: Path, split_result: subprocess.CompletedProcess
) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    result = run_cli(["train", "--model", OTHER_MODEL], cwd=project, MLFLOW_TRACKING_URI=uri)
    assert result.returncode == 75  # transient (EX_TEMPFAIL): the pipeline flow retries it
    assert result.stderr.strip().splitlines() == [
        f"catalog-classifier train: error: MLflow tracking server {uri} is unreachable ([Errno 111] Connection "
        "refused); start it (make ui) or unset MLFLOW_TRACKING_URI to use the local store"]
    assert not (project / "artifacts/models" / OTHER_MODEL).exists()
    assert not (project / "artifacts/history" / f"{OTHER_MODEL}.csv").exists()


def test_unreachable_tracking_server_stops_evaluate_before_scoring(
    project: Path, interrupted: dict[str, Any], monkeypatch: pytest.MonkeyPatch, isolated_mlflow: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    weights = project / "artifacts/models" / MODEL / "model.pt"
    assert weights.is_file()  # a trained model: without the check, evaluate would score it and only then fail
    assert main(["evaluate", "--model", MODEL, "--params", str(project / "params.yaml")]) == 75
    assert capsys.readouterr().err.startswith(f"catalog-classifier evaluate: error: MLflow tracking server {uri} "
                                              "is unreachable")
    assert not (project / "artifacts/eval").exists()


# --- the building blocks ----------------------------------------------------------------------------------------------


def test_atomic_write_interrupted_mid_file_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"epochs_run": 3})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):  # json.dump fails after writing part of the payload
        write_json(target, {"a_first": list(range(1000)), "z_last": Unserialisable()})
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text('{"epochs_run": ', encoding="utf-8")
        raise Terminated(signal.SIGTERM)
    assert json.loads(target.read_text()) == {"epochs_run": 3}
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def test_exit_status_follows_the_shell_convention() -> None:
    assert exit_status(Terminated(signal.SIGTERM)) == 143
    assert exit_status(KeyboardInterrupt()) == 130


def test_mark_interrupted_run_killed(tmp_path: Path, isolated_mlflow: None) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    store = mlflow.MlflowClient()
    with mlflow.start_run() as finished:
        pass
    assert mark_interrupted_run_killed() is None  # a run that ended normally is left alone
    with pytest.raises(KeyboardInterrupt), mlflow.start_run() as interrupted:
        raise KeyboardInterrupt
    assert store.get_run(interrupted.info.run_id).info.status == "FAILED"  # what MLflow's own exit does
    assert mark_interrupted_run_killed(ended_before=interrupted.info.run_id) is None  # ended by an earlier command
    assert mark_interrupted_run_killed(ended_before=finished.info.run_id) == interrupted.info.run_id
    dangling = mlflow.start_run()  # an interrupt outside a with block leaves the run active
    assert mark_interrupted_run_killed() == dangling.info.run_id
    assert mlflow.active_run() is None
    statuses = [store.get_run(run.info.run_id).info.status for run in (finished, interrupted, dangling)]
    assert statuses == ["FINISHED", "KILLED", "KILLED"]


def test_ctrl_c_exits_130_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_mlflow: None, capsys: pytest.CaptureFixture[str]
) -> None:
    def pressed_ctrl_c(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(datacheck, "check_data_folder", pressed_ctrl_c)
    params = write_params(tmp_path / "params.yaml", tiny_params())
    stray = Path.cwd() / "mlflow.db"  # MLflow's default store: this command must neither create nor touch it
    before = stray.stat().st_mtime_ns if stray.exists() else None
    assert main(["check-data", str(tmp_path), "--params", str(params)]) == 130
    # No MLflow run was touched by this command (earlier tests in this process ended some: none is re-marked).
    assert capsys.readouterr().err == "catalog-classifier check-data: interrupted (Ctrl-C)\n"
    assert (stray.stat().st_mtime_ns if stray.exists() else None) == before
