"""Shared fixtures: the real params shrunk to tiny configurations, and tiny projects built from real images."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
REAL_CATALOGUE = REPO / "data" / "flipkart_com-ecommerce_sample_1050.csv"
TINY_MODELS = ["resnet10t", "mobilevitv2_050"]


@pytest.fixture(autouse=True, scope="session")
def _offline_hub() -> None:
    # Tests never reach a model hub; offline mode makes a hub attempt fail at once instead of retrying.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def _forget_mlflow_uris() -> None:
    from mlflow.tracking import _tracking_service
    from mlflow.tracking._model_registry import utils as registry_utils

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)
    # Both URIs are also kept in-process (module globals): MLflow has no public "unset" for the registry one.
    _tracking_service.utils._tracking_uri = None
    registry_utils._registry_uri = None


@pytest.fixture(autouse=True)
def _isolate_mlflow_uris() -> Iterator[None]:
    """mlflow.set_tracking_uri / set_registry_uri (called by setup_mlflow) keep the store in-process and export it
    as environment variables; without this a test's store leaks into later tests in the same worker and into the
    stage subprocesses they start (one project per process is the CLI's case, not the test session's)."""
    _forget_mlflow_uris()
    environment = dict(os.environ)
    yield
    _forget_mlflow_uris()
    # A CLI entry point run in-process may set process-wide variables for itself (serve and predict forbid
    # MLflow's pickle loaders); they must not reach the next test in this worker.
    for name in set(os.environ) - set(environment):
        os.environ.pop(name)
    os.environ.update(environment)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The pinned dataset (``make test`` pulls it with DVC); its absence is a setup error, not a skip."""
    if not REAL_CATALOGUE.is_file():
        pytest.fail("data/ is missing: run `make data` (dvc pull) before the tests")
    return REPO / "data"


def real_params() -> dict[str, Any]:
    with (REPO / "params.yaml").open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def tiny_params(**train_overrides: Any) -> dict[str, Any]:
    """The real params.yaml, shrunk: two small timm models, 32 px, 2 epochs, no downloads."""
    params = real_params()
    params["models"] = list(TINY_MODELS)
    params["train"].update({
        "weights": "none", "image_size": 32, "max_epochs": 2, "patience": 1, "batch_size": 8, "lr": 0.003,
        # One thread by default: on a loaded 2-core machine two OpenMP threads on tiny tensors run ~10x slower.
        "num_threads": 1,
        **train_overrides,
    })
    params["evaluate"]["batch_size"] = 16
    # Tiny models auto-label next to nothing at the target precision: the coverage rule would reject every one of
    # them, so the tiny pipeline's promotions test the other rules (tests of the coverage rule set it themselves).
    params["registry"]["min_coverage"] = 0
    params["evaluate"]["latency_warmup"] = 1
    params["evaluate"]["latency_repeats"] = 3
    return params


def write_tiny_catalogue(data_dir: Path, real: Path, per_class: int) -> pd.DataFrame:
    """A Flipkart-format catalogue of ``per_class`` real images per class (present files only)."""
    from catalog_classifier.data.catalogue import read_catalogue

    classes = real_params()["data"]["classes"]
    raw = pd.read_csv(REAL_CATALOGUE, dtype=str, keep_default_na=False)
    labelled = read_catalogue(REAL_CATALOGUE, classes)
    present = labelled["image"].map(lambda name: (real / "Images" / name).is_file())
    chosen = labelled[present].groupby("label", sort=False).head(per_class)
    (data_dir / "Images").mkdir(parents=True)
    for name in chosen["image"]:
        shutil.copy(real / "Images" / name, data_dir / "Images" / name)
    raw.loc[chosen.index].to_csv(data_dir / REAL_CATALOGUE.name, index=False)
    return chosen


def make_tiny_project(root: Path, real: Path, per_class: int = 6, **train_overrides: Any) -> Path:
    """A self-contained copy of the project (code, dvc.yaml, tiny params, tiny data) under git and DVC."""
    root.mkdir(parents=True, exist_ok=True)
    write_tiny_catalogue(root / "data", real, per_class)
    return commit_project(root, tiny_params(**train_overrides), ["/mlruns", "/data"], "tiny project")


def commit_project(root: Path, params: dict[str, Any], ignored: list[str], message: str) -> Path:
    """The project's code and dvc.yaml with ``params`` under ``root`` (data already there), as a fresh git + DVC
    repository with everything committed, so that ``dvc repro`` runs the real stages on it."""
    for name in ("dvc.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "weights", root / "weights")  # train.weights_dir: a dependency of every train stage
    with (root / "params.yaml").open("w", encoding="utf-8") as handle:
        yaml.safe_dump(params, handle, sort_keys=False)
    (root / ".gitignore").write_text("".join(f"{path}\n" for path in ignored), encoding="utf-8")
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], root)
    return root


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> Path:
    """A tiny project through the whole real ``dvc repro`` (split ... promote), once per session.

    Shared by every test that only reads it or writes outside its DVC outputs (registry entries under their own
    registered-model names, files in their own tmp dirs), so the suite pays for one tiny training, not one per file.
    """
    root = make_tiny_project(tmp_path_factory.mktemp("pipeline") / "project", real_data)
    run(["dvc", "repro"], root)
    return root


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


# Longest files first: with one pytest-xdist worker per core and --dist loadfile (--no-loadscope-reorder, which
# would otherwise start with the files holding the most tests), the long DVC/server files start at once and the
# many short unit tests fill in at the end, instead of one long file finishing alone on one core.
LONGEST_FIRST = (
    "test_stack.py", "test_flows.py", "test_batch_label_flow.py", "test_faults.py", "test_registry.py",
    "test_serve_engine.py", "test_serve.py", "test_explain_dvc.py", "test_registry_state.py", "test_batch_predict.py",
    "test_registry_artifact.py",
    "test_registry_lock.py", "test_tune_shared.py", "test_tune.py", "test_pipeline_dvc.py",
    "test_report_browser.py", "test_mlflow_runs_view.py", "test_registry_faults.py", "test_bench.py",
    "test_explain.py", "test_frozen_stage.py", "test_report.py", "test_run_cache.py", "test_reproducibility.py",
    "test_stage_deps.py", "test_retrain_plan.py", "test_pretrained.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file is kept


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL cluster for this test worker (Debian's binaries, 127.0.0.1, a free port), removed after.

    Tests create their own databases on it (``postgres.create_database(name)`` returns the URL)."""
    from server_helpers import free_port

    from catalog_classifier.infra.postgres import PostgresCluster

    # Not under pytest's tmp_path: that tree is private to root, and as root the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="catalog-pg-"))
    cluster = PostgresCluster(root, free_port())
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)

