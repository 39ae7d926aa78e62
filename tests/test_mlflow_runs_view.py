"""What an MLflow user sees of a training run: the split manifests as datasets (with their DVC address), the
experiment marked as model training and opening on its runs, and MLflow's system metrics beside the fit.

One tiny project, its data under DVC with a local default remote (as this repository's ``data.dvc`` and
``.dvc/config``), goes through the real ``dvc repro`` of split, train and evaluate for one model; the checks read
the real store through MlflowClient, DVC's own API, and a real ``mlflow server`` in headless Chromium.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import make_tiny_project, run
from server_helpers import free_port, stop_process_group, wait_until_answers
from test_report_browser import CHROMIUM, SERVER_STARTUP_S, UI_TIMEOUT_MS, _unavailable, chromium

from catalog_classifier.config.layout import Project
from catalog_classifier.registry.datasets import dataset_digest, default_remote, remote_object_url, split_dataset
from catalog_classifier.registry.tracking import (
    EXPERIMENT_KIND_TAG,
    TRAINING_EXPERIMENT_KIND,
    data_version,
    training_runs_url,
)

pytestmark = pytest.mark.slow

MODEL = "resnet10t"
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class TrackedRun:
    root: Path
    remote: Path
    store: str
    run_id: str


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> TrackedRun:
    root = make_tiny_project(tmp_path_factory.mktemp("runs-view") / "project", real_data, per_class=4)
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["models"] = [MODEL]
    # Samples twice a second: the tiny run lasts seconds, and MLflow logs only complete sampling windows.
    params["mlflow"]["system_metrics_interval_s"] = 0.5
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    run(["dvc", "remote", "add", "-d", "storage", "../remote"], root)  # stored relative to .dvc/, like the project's
    run(["dvc", "add", "-q", "data"], root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "data under DVC, one model"], root)
    run(["dvc", "repro", f"evaluate@{MODEL}"], root)
    run(["dvc", "push", "-q"], root)
    run_id = json.loads((root / "artifacts" / "models" / MODEL / "run.json").read_text())["run_id"]
    return TrackedRun(root, root.parent / "remote", f"sqlite:///{root}/mlruns/mlflow.db", run_id)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_the_run_lists_each_split_manifest_as_a_dataset_at_its_dvc_address(tracked: TrackedRun) -> None:
    import dvc.api

    inputs = mlflow.MlflowClient(tracking_uri=tracked.store).get_run(tracked.run_id).inputs.dataset_inputs
    by_name = {entry.dataset.name: entry for entry in inputs}
    assert sorted(by_name) == ["flipkart-test", "flipkart-train", "flipkart-val"]
    data_md5 = data_version(tracked.root)
    assert data_md5.endswith(".dir") and data_md5 == yaml.safe_load((tracked.root / "data.dvc").read_text())[
        "outs"][0]["md5"]
    for split, context in SPLIT_NAMES.items():
        entry = by_name[f"flipkart-{split}"]
        manifest = tracked.root / "artifacts" / "splits" / f"{split}.csv"
        md5 = _md5(manifest)
        tags = {tag.key: tag.value for tag in entry.tags}
        assert tags == {"mlflow.data.context": context, "dvc.path": f"artifacts/splits/{split}.csv", "dvc.md5": md5,
                        "dvc.data_md5": data_md5, "dvc.remote": "storage"}
        assert entry.dataset.digest == f"{data_md5[:12]}-{md5[:12]}"
        # The source is where DVC itself says the file lives in the remote, and after `dvc push` it is there.
        url = dvc.api.get_url(f"artifacts/splits/{split}.csv", repo=str(tracked.root))
        assert entry.dataset.source_type == "local"
        assert json.loads(entry.dataset.source) == {"uri": url}
        assert url.startswith(str(tracked.remote.resolve())) and _md5(Path(url)) == md5
        rows = len(manifest.read_text(encoding="utf-8").splitlines()) - 1
        assert json.loads(entry.dataset.profile)["num_rows"] == rows
        header = manifest.read_text(encoding="utf-8").splitlines()[0].split(",")
        assert [column["name"] for column in json.loads(entry.dataset.schema)["mlflow_colspec"]] == header


def test_without_a_remote_the_source_is_the_manifest_in_the_project(tracked: TrackedRun, tmp_path: Path) -> None:
    project = Project.load(tracked.root / "params.yaml")
    remote = default_remote(tracked.root)
    assert remote is not None and remote.name == "storage" and Path(remote.url) == tracked.remote.resolve()
    dataset, tags = split_dataset(project, "val", None)
    manifest = project.manifest("val")
    assert json.loads(dataset.source.to_json()) == {"uri": manifest.as_uri()}
    assert tags["dvc.remote"] == "none"
    assert dataset.digest == dataset_digest(data_version(tracked.root), _md5(manifest))
    assert default_remote(tmp_path) is None  # not a DVC project
    assert remote_object_url(remote, "3df6bb11c473f7d2db153c0ab77dc102").endswith(
        "/files/md5/3d/f6bb11c473f7d2db153c0ab77dc102")
    assert dataset_digest("untracked", "3df6bb11c473f7d2db153c0ab77dc102") == "untracked-3df6bb11c473"


def test_the_experiment_is_marked_as_model_training(tracked: TrackedRun) -> None:
    experiment = mlflow.MlflowClient(tracking_uri=tracked.store).get_experiment_by_name("catalog-classifier")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == TRAINING_EXPERIMENT_KIND == "custom_model_development"


def test_setup_marks_the_tuning_experiment_and_one_made_before_the_tag(tmp_path: Path) -> None:
    from conftest import REPO

    from catalog_classifier.registry.tracking import setup_mlflow

    params = Project.load(REPO / "params.yaml").params
    store = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=store)
    older = client.create_experiment(params.mlflow.experiment)  # as a store from before this tag has it
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(older).tags
    for name in (params.mlflow.experiment, params.tune.experiment):
        settings = params.mlflow.model_copy(update={"tracking_uri": store, "experiment": name,
                                                    "artifact_root": tmp_path / "artifacts"})
        experiment_id = setup_mlflow(settings, tmp_path)
        assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == TRAINING_EXPERIMENT_KIND
    assert client.get_experiment_by_name(params.mlflow.experiment).experiment_id == older


def test_the_training_run_carries_system_metrics(tracked: TrackedRun) -> None:
    client = mlflow.MlflowClient(tracking_uri=tracked.store)
    metrics = client.get_run(tracked.run_id).data.metrics
    cpu = client.get_metric_history(tracked.run_id, "system/cpu_utilization_percentage")
    memory = client.get_metric_history(tracked.run_id, "system/system_memory_usage_megabytes")
    assert cpu and memory and "system/system_memory_usage_percentage" in metrics
    assert all(0 <= point.value <= 100 for point in cpu)
    import psutil

    total_mb = psutil.virtual_memory().total / 1e6
    assert all(0 < point.value < total_mb for point in memory)
    assert [point.step for point in memory] == list(range(len(memory)))


def test_the_experiment_opens_on_its_runs_with_the_datasets_shown(tracked: TrackedRun, tmp_path: Path) -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is not installed")
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} not found")
    experiment = mlflow.MlflowClient(tracking_uri=tracked.store).get_experiment_by_name("catalog-classifier")
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", tracked.store,
               "--default-artifact-root", str(tracked.root / "mlruns" / "artifacts")]
    with chromium() as browser, log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_answers(f"http://127.0.0.1:{port}/health", server, log, SERVER_STARTUP_S)
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            # The experiment's own page, not its /runs tab: the UI chooses the view it lands on.
            page.goto(training_runs_url(f"http://127.0.0.1:{port}", experiment.experiment_id))
            page.get_by_role("link", name=MODEL, exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)
            assert f"/experiments/{experiment.experiment_id}/runs" in page.url
            assert page.get_by_text("1 matching run").is_visible()
            # The grid renders the pinned run-name column apart from the rest: the run's other cells are their own row.
            cells = page.get_by_role("row").filter(has_text="flipkart-train (")
            cells.first.wait_for(timeout=UI_TIMEOUT_MS)
            shown = cells.first.inner_text()
            page.screenshot(path=str(tmp_path / "runs.png"))
        finally:
            stop_process_group(server)
    inputs = mlflow.MlflowClient(tracking_uri=tracked.store).get_run(tracked.run_id).inputs.dataset_inputs
    for entry in inputs:  # name (digest) and context of each, the first in view and the others behind "+2"
        context = next(tag.value for tag in entry.tags if tag.key == "mlflow.data.context")
        assert f"{entry.dataset.name} ({entry.dataset.digest})\n{context.capitalize()}" in shown, shown
