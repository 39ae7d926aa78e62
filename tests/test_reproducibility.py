"""Same params, same data, same machine settings: the train stage gives bit-identical results in two clones.

Each clone is a separate project folder (its own copy of the code, params and data) and each stage runs in its own
process, as on a second machine. What may differ between machines (thread count, CPU instruction set, torch
build) changes float rounding and with it the whole trajectory; so every run records those facts
(docs/reproducibility.md has the measurements).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import make_tiny_project

from catalog_classifier.ops.io import read_json

MODEL = "resnet10t"
TIMING_KEYS = {"fit_time_s", "fit_cpu_time_s", "decode_time_s"}  # wall and CPU seconds: never repeatable


def _stage(root: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}  # the clone's own code, not this checkout's
    result = subprocess.run([sys.executable, "-m", "catalog_classifier", *args], cwd=root, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def two_clones(tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> list[Path]:
    clones = []
    for name in ("clone_a", "clone_b"):
        root = make_tiny_project(tmp_path_factory.mktemp(name) / "project", real_data, per_class=4)
        _stage(root, "split")
        _stage(root, "train", "--model", MODEL)
        clones.append(root)
    return clones


def test_two_clones_train_to_identical_weights_history_and_metrics(two_clones: list[Path]) -> None:
    a, b = two_clones
    weights_a = torch.load(a / "artifacts/models" / MODEL / "model.pt", weights_only=True)
    weights_b = torch.load(b / "artifacts/models" / MODEL / "model.pt", weights_only=True)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)

    # The history CSV is byte-identical except elapsed_s (wall seconds since the fit started).
    history_a = pd.read_csv(a / "artifacts/history" / f"{MODEL}.csv", dtype=str)
    history_b = pd.read_csv(b / "artifacts/history" / f"{MODEL}.csv", dtype=str)
    assert len(history_a) == 2  # tiny params: 2 epochs
    pd.testing.assert_frame_equal(history_a.drop(columns="elapsed_s"), history_b.drop(columns="elapsed_s"))

    metrics_a = read_json(a / "artifacts/models" / MODEL / "train_metrics.json")
    metrics_b = read_json(b / "artifacts/models" / MODEL / "train_metrics.json")
    assert {k: v for k, v in metrics_a.items() if k not in TIMING_KEYS} == {
        k: v for k, v in metrics_b.items() if k not in TIMING_KEYS}


def test_train_metrics_and_mlflow_tags_record_the_runtime_facts_that_change_rounding(
        two_clones: list[Path]) -> None:
    from mlflow import MlflowClient

    from catalog_classifier.config.layout import Project
    from catalog_classifier.modeling.torch_setup import cpu_flags, runtime_facts
    from catalog_classifier.registry.tracking import resolve_tracking_uri

    root = two_clones[0]
    metrics = read_json(root / "artifacts/models" / MODEL / "train_metrics.json")
    assert metrics["threads"] == 1  # tiny params pin one thread
    assert metrics["torch_version"] == torch.__version__
    assert metrics["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert metrics["cpu_isa_flags"] == ",".join(
        flag for flag in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if flag in cpu_flags())
    assert metrics["onednn_max_cpu_isa"] == os.environ.get("ONEDNN_MAX_CPU_ISA", "unset")
    assert metrics["cpu_model"] and metrics["cpu_model"] == runtime_facts()["cpu_model"]

    project = Project.load(root / "params.yaml")
    run_id = read_json(root / "artifacts/models" / MODEL / "run.json")["run_id"]
    tags = MlflowClient(resolve_tracking_uri(project.params.mlflow, root)).get_run(run_id).data.tags
    for key in ("threads", "bf16", "channels_last", "torch_version", "cpu_capability", "cpu_isa_flags",
                "onednn_max_cpu_isa", "cpu_model"):
        assert tags[key] == str(metrics[key]), key
