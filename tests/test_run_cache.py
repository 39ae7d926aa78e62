"""``promote`` and ``report`` act outside the workspace (registry, MLflow runs): DVC must run them, never restore them.

DVC's run-cache restores a stage's outputs when it has seen the same command, deps and params before. For these
two stages that would restore ``promotion.json`` / the page without a registry decision or an MLflow upload, so
the files would describe a registry that no longer looks like that. The retraining's "nothing changed" check
(``dvc status``) must still see them as up to date when nothing changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import run

pytestmark = pytest.mark.slow

RESTORED = "is cached - skipping run"


def set_param(root: Path, group: str, key: str, value: object) -> None:
    params_file = root / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params[group][key] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def registry_versions(root: Path, name: str) -> list[str]:
    database = f"sqlite:///{root}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=database, registry_uri=database)
    return sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=int)


@pytest.fixture
def project(tiny_pipeline: Path, tmp_path: Path) -> Path:
    """A copy of the session's reproduced tiny project (its run-cache included): this test changes params."""
    root = tmp_path / "project"
    shutil.copytree(tiny_pipeline, root, symlinks=True)
    return root


def test_promote_runs_again_when_params_return_to_a_run_cached_state(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    name = params["registry"]["model_name"]
    timeout = params["registry"]["lock_timeout_s"]
    first = json.loads((project / "artifacts/promotion.json").read_text())
    assert registry_versions(project, name) == [str(first["version"])]

    # A param promote depends on (and that changes no figure) moves away and back: the second state is the one the
    # session's pipeline ran, so DVC's run-cache has promote's and report's outputs for it.
    set_param(project, "registry", "lock_timeout_s", timeout + 1)
    away = run(["dvc", "repro"], project).stdout
    assert "Running stage 'promote'" in away, away
    set_param(project, "registry", "lock_timeout_s", timeout)
    back = run(["dvc", "repro"], project).stdout

    assert RESTORED not in back, back
    assert "Running stage 'promote'" in back and "Running stage 'report'" in back, back
    # Each promote run asked the registry: the classifier's files are the ones v1 holds, so nothing new is
    # registered and the file says so. A file restored from the run-cache would still hold the first decision.
    assert registry_versions(project, name) == [str(first["version"])]
    latest = json.loads((project / "artifacts/promotion.json").read_text())
    assert first["decision"] in {"promoted", "rejected"}
    assert latest["decision"] == "unchanged" and latest["registered_decision"] == first["decision"], latest
    assert f"already registered as v{first['version']}" in latest["reason"], latest["reason"]


def test_report_runs_again_when_params_return_to_a_run_cached_state(project: Path) -> None:
    quality = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))["report"]["jpeg_quality"]
    set_param(project, "report", "jpeg_quality", quality - 1)
    away = run(["dvc", "repro", "report"], project).stdout
    assert "Running stage 'promote'" not in away, away
    set_param(project, "report", "jpeg_quality", quality)
    back = run(["dvc", "repro", "report"], project).stdout
    assert RESTORED not in back, back
    assert "Running stage 'report'" in back, back


def test_unchanged_project_is_up_to_date_for_dvc_and_the_retraining(tiny_pipeline: Path) -> None:
    from catalog_classifier.ops import dvc_ops
    from flows.retrain import detect_changes

    assert dvc_ops.changed_stages(tiny_pipeline) == {}
    assert "up to date" in run(["dvc", "status", "promote", "report"], tiny_pipeline).stdout
    assert detect_changes.fn(str(tiny_pipeline)) == []  # the retraining's skip: "nothing changed"
