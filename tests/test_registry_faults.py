"""A failed or killed run never touches the model registry: versions, aliases and tags stay exactly as they were."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
from badinput_support import cli_command, cli_env, run_cli

pytestmark = pytest.mark.slow

MODEL = "resnet10t"


def registry_snapshot(root: Path) -> list[tuple[Any, ...]]:
    database = f"sqlite:///{root}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=database, registry_uri=database)
    return sorted((model.name, sorted(model.aliases.items()), version.version, version.current_stage,
                   version.run_id, sorted(version.tags.items()))
                  for model in client.search_registered_models()
                  for version in client.search_model_versions(f"name='{model.name}'"))


def run_statuses(root: Path) -> list[str]:
    database = f"sqlite:///{root}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=database)
    experiment = client.get_experiment_by_name("catalog-classifier")
    return [run.info.status for run in client.search_runs([experiment.experiment_id],
                                                          order_by=["attributes.start_time ASC"])]


def val_metric_rows(database: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=5)) as connection:
            return connection.execute("SELECT count(*) FROM metrics WHERE key = 'val/f1_macro'").fetchone()[0]
    except sqlite3.OperationalError:  # busy
        return -1


def test_killed_and_failed_stages_leave_the_registry_as_it_was(tmp_path: Path, tiny_pipeline: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(tiny_pipeline, root, symlinks=True)
    before = registry_snapshot(root)
    assert before, "the tiny pipeline's promote stage registered a version: the state that must survive"
    statuses_before = run_statuses(root)

    # 1. A training killed half-way (SIGTERM after its first epoch reached MLflow).
    database = root / "mlruns/mlflow.db"
    epochs_before = val_metric_rows(database)
    process = subprocess.Popen([cli_command(), "train", "--model", MODEL, "--set", "train.max_epochs=500",
                                "--set", "train.patience=500"], cwd=root, env=cli_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while val_metric_rows(database) <= epochs_before:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "training never logged its first epoch"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    assert run_statuses(root) == [*statuses_before, "KILLED"]
    assert registry_snapshot(root) == before

    # 2. A promote that fails on bad input (the comparison it reads is not JSON): exit 2, registry as it was.
    (root / "artifacts/comparison.json").write_text("{not json", encoding="utf-8")
    failed = run_cli(["promote"], cwd=root)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr
    assert failed.stderr.strip() == (f"catalog-classifier promote: error: {root / 'artifacts/comparison.json'} is not "
                                     "valid JSON (line 1, column 2: Expecting property name enclosed in double "
                                     "quotes); rerun the stage that writes it (dvc repro, or dvc repro -f STAGE)")
    assert registry_snapshot(root) == before
