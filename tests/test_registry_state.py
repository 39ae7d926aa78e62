"""Registry state that cannot go wrong (#25 item 8): a rollback interrupted between its writes, and the thread count
a challenger runs with once the gate has loaded the champion. Real sqlite registries, real (tiny) networks."""

from __future__ import annotations

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
