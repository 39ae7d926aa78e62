"""Registry state that cannot go wrong (#25 item 8): a rollback interrupted between its writes, and the thread count
a challenger runs with once the gate has loaded the champion. Real sqlite registries, real (tiny) networks."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient

from catalog_classifier.registry.versions import CHAMPION, HISTORY_TAG, record_decision, rollback

NAME = "state"


class Crash(RuntimeError):
    """The process dying between two registry writes."""


class CrashingClient(MlflowClient):
    """A real MlflowClient on a real store that dies just before its ``crash_at``-th registry write."""

    def __init__(self, uri: str, crash_at: int) -> None:
        super().__init__(tracking_uri=uri, registry_uri=uri)
        self.crash_at, self.writes = crash_at, 0

    def _write(self) -> None:
        self.writes += 1
        if self.writes == self.crash_at:
            raise Crash(f"killed before registry write {self.crash_at}")

    def set_registered_model_alias(self, *args: Any, **kwargs: Any) -> None:
        self._write()
        super().set_registered_model_alias(*args, **kwargs)

    def set_registered_model_tag(self, *args: Any, **kwargs: Any) -> None:
        self._write()
        super().set_registered_model_tag(*args, **kwargs)

    def set_model_version_tag(self, *args: Any, **kwargs: Any) -> None:
        self._write()
        super().set_model_version_tag(*args, **kwargs)


@pytest.fixture(scope="module")
def three_champions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry where v1, v2, v3 were promoted in turn (champion v3, history [1, 2, 3]); copied per test."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    (folder / "model").mkdir()
    for _ in range(3):
        version = client.create_model_version(NAME, source=str(folder / "model")).version
        record_decision(client, NAME, str(version), True, {"decision": "promoted"})
    return folder / "mlflow.db"


def _state(uri: str) -> tuple[str, list[str]]:
    model = MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model(NAME)
    return str(model.aliases[CHAMPION]), json.loads(model.tags[HISTORY_TAG])


# A rollback of v3 writes 2 registered-model tags, the alias and 3 version tags: a crash before any one of them.
@pytest.mark.parametrize("crash_at", range(1, 7))
def test_a_rollback_killed_between_its_writes_never_lets_the_next_one_restore_the_demoted_version(
        three_champions: Path, tmp_path: Path, crash_at: int) -> None:
    shutil.copyfile(three_champions, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert _state(uri) == ("3", ["1", "2", "3"])
    with pytest.raises(Crash):
        rollback(CrashingClient(uri, crash_at), NAME)
    # The rollback run again (the operator's retry) ends on v2 or, when the first one had completed its alias
    # move, one step further back: never on v3, the version that was being rolled back.
    rollback(MlflowClient(tracking_uri=uri, registry_uri=uri), NAME)
    champion, history = _state(uri)
    assert champion != "3" and "3" not in history
    assert (champion, history) in [("2", ["1", "2"]), ("1", ["1"])]


# --- the thread count a challenger runs with -------------------------------------------------------------------


class ThreadRecorder(torch.nn.Module):
    """A real (tiny) network that records the torch thread count each forward pass ran with."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)
        self.threads: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.threads.append(torch.get_num_threads())
        return self.layer(images.mean((2, 3)))


def _classifier(threads: int) -> Any:
    from catalog_classifier.modeling.prediction import ImageClassifier, InferenceSettings

    config = {"classes": ["a", "b"], "input_size": [4, 4], "interpolation": "bilinear", "model_name": "recorder"}
    settings = InferenceSettings(batch_size=4, channels_last=False, bf16=False, num_threads=threads)
    return ImageClassifier(ThreadRecorder(), config, settings)


def test_loading_the_champion_leaves_the_challengers_thread_count_alone(tmp_path: Path) -> None:
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(image)
    before = torch.get_num_threads()
    try:
        challenger = _classifier(2)
        loaded = torch.get_num_threads()
        # What the gate does next: load the champion, whose stored settings say 1 thread (ImageClassifier.from_dir,
        # through load_served_model, builds it with this constructor), then score the challenger.
        champion = _classifier(1)
        challenger.probabilities_for_files([image])
        assert challenger.model.threads == [2]
        assert torch.get_num_threads() == loaded  # loading a model changes nobody's thread count
        champion.probabilities_for_files([image])
        challenger.probabilities_for_files([image])
        assert challenger.model.threads == [2, 2] and champion.model.threads == [1]
        assert torch.get_num_threads() == loaded  # and running one gives the caller's count back
    finally:
        torch.set_num_threads(before)


# --- promotions that leave nothing behind (the tiny pipeline's real runs and registry) ---------------------------

EXPERIMENT = "catalog-classifier"


def _selected(project: Path) -> tuple[str, str]:
    model = json.loads((project / "artifacts/comparison.json").read_text())["selected"]
    return model, json.loads((project / f"artifacts/models/{model}/run.json").read_text())["run_id"]


def _logged_models(project: Path, run_id: str) -> list[str]:
    from registry_helpers import client

    registry = client(project)
    experiment = registry.get_experiment_by_name(EXPERIMENT).experiment_id
    found = registry.search_logged_models(experiment_ids=[experiment], filter_string=f"source_run_id = '{run_id}'",
                                          max_results=1000)
    return sorted(model.model_id for model in found)


def _classifier_folders(project: Path, run_id: str) -> dict[str, list[tuple[str, int | None]]]:
    """The run's ``classifier/<digest>`` folders and the files (name, size) each holds."""
    from registry_helpers import client

    registry = client(project)
    return {folder.path: sorted((Path(f.path).name, f.file_size) for f in registry.list_artifacts(run_id, folder.path))
            for folder in registry.list_artifacts(run_id, "classifier") if folder.is_dir}


@pytest.mark.slow
def test_a_promote_timing_out_on_the_lock_logs_no_model_and_its_retries_add_none(tiny_pipeline: Path,
                                                                                  tmp_path: Path) -> None:
    from filelock import FileLock
    from registry_helpers import cli, cli_args, client

    from catalog_classifier.registry.artifact import SHA256_TAG

    project = tiny_pipeline
    model, run_id = _selected(project)
    name = "lock-timeout"
    before = _classifier_folders(project, run_id)
    args = ["promote", "--model", model, *cli_args(project, name, registry__lock_timeout_s=1,
                                                   registry__out_json=tmp_path / "promotion.json")]
    # Another promoter holds the registry lock (the file lock beside the sqlite store) throughout.
    with FileLock(str(project / "mlruns" / "mlflow.db.registry.lock")):
        assert cli(args) == 75  # transient: the orchestrator retries later...
        assert _classifier_folders(project, run_id) == before
        assert cli(args) == 75  # ...and its retry times out again
        assert _classifier_folders(project, run_id) == before
        assert client(project).search_model_versions(f"name='{name}'") == []
    assert cli(args) == 0  # the lock is free: one version, serving one content-addressed folder of the run
    [version] = client(project).search_model_versions(f"name='{name}'")
    after = _classifier_folders(project, run_id)
    folder = version.source.rstrip("/").rsplit("/", 1)[-1]
    assert version.run_id == run_id and f"classifier/{folder}" in after
    assert sorted(name for name, _ in after[f"classifier/{folder}"]) == sorted(json.loads(version.tags[SHA256_TAG]))
    # Same files as a folder the pipeline's own promote logged: the same digest, so no second copy.
    assert set(after) - set(before) <= {f"classifier/{folder}"}


@pytest.mark.slow
def test_the_promote_stage_run_again_after_another_model_retrained_registers_nothing_new(tiny_pipeline: Path,
                                                                                         tmp_path: Path) -> None:
    import yaml
    from registry_helpers import cli, cli_args, client, promote

    project = tiny_pipeline
    # DVC runs the promote stage again whenever any model's training or evaluation output changes.
    stage = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["promote"]
    assert stage["cmd"] == "catalog-classifier promote"
    assert {"${train.out_dir}", "${evaluate.out_dir}"} <= set(stage["deps"])
    model, run_id = _selected(project)
    name = "stage-rerun"
    args = ["promote", *cli_args(project, name, registry__class_f1_floor=0,
                                 registry__out_json=tmp_path / "promotion.json")]
    assert cli(args) == 0  # the stage: the model compare selected
    first = json.loads((tmp_path / "promotion.json").read_text())
    assert (first["version"], first["source_model"], first["promote"]) == ("1", model, True)
    logged = _logged_models(project, run_id)

    assert cli(args) == 0  # the stage again, the selected model's run and files unchanged
    second = json.loads((tmp_path / "promotion.json").read_text())
    registry = client(project)
    assert [str(v.version) for v in registry.search_model_versions(f"name='{name}'")] == ["1"]
    assert _logged_models(project, run_id) == logged
    assert (second["version"], second["decision"], second["promote"]) == ("1", "unchanged", False)
    assert second["champion_before"] == second["champion_after"] == "1"
    assert second["reason"].startswith(f"{model} run {run_id[:12]} is already registered as v1 with the same files")
    assert second["figures"]["challenger_f1_macro"] == first["figures"]["challenger_f1_macro"]
    assert second["classifier_sha256"] == first["classifier_sha256"]

    # Naming the model is an explicit request: it is judged and registered again (equal is not better).
    third = promote(project, name, tmp_path / "named.json", "--model", model)
    assert (third["version"], third["decision"]) == ("2", "rejected")


@pytest.mark.slow
def test_a_registered_version_carries_its_onnx_graph_with_the_predictions_of_its_weights(tiny_pipeline: Path,
                                                                                          tmp_path: Path) -> None:
    """A deployer takes ``model.onnx`` from the version alone: hash-checked like the weights, same top-1."""
    import yaml
    from registry_helpers import client, split_images

    from catalog_classifier.modeling.onnx_runtime import OnnxImageClassifier, parity
    from catalog_classifier.modeling.prediction import ImageClassifier
    from catalog_classifier.registry.artifact import fetch_verified

    project = tiny_pipeline
    name = yaml.safe_load((project / "params.yaml").read_text())["registry"]["model_name"]
    version = json.loads((project / "artifacts/promotion.json").read_text())["version"]
    verified = fetch_verified(f"models:/{name}/{version}", tmp_path / "version", client(project))
    assert "model.onnx" in verified.sha256  # recorded at registration, checked at download
    served = ImageClassifier.from_dir(verified.directory)
    fp32 = dataclasses.replace(served.settings, bf16=False, channels_last=False)
    classifier = ImageClassifier(served.model, served.config, fp32, served.calibration)
    onnx = OnnxImageClassifier(classifier, verified.directory / "model.onnx", 4)
    agreement = parity(classifier, onnx, split_images(project))
    assert agreement["top1_agreement"] == 1.0 and agreement["max_abs_logit_diff"] < 1e-3, agreement
