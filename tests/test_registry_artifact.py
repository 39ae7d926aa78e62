"""Registry contents are data, not code: a registered version holds safetensors weights and JSON, each file's sha256
recorded at registration; loading refuses a version carrying a pickle or a code file (and its payload never runs),
a version whose weights changed after registration, and a version of the old "models from code" format."""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import runpy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from catalog_classifier.modeling.models import create_classifier, save_classifier
from catalog_classifier.modeling.prediction import ImageClassifier, InferenceSettings, write_classifier_dir
from catalog_classifier.registry.artifact import (
    SHA256_TAG,
    TRAIN_MANIFEST,
    WEIGHTS_SHA256_TAG,
    UnsafeArtifactError,
    fetch_legacy_weights,
    load_champion,
    log_classifier_folder,
    registration_tags,
)

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Baby Care", "Computers", "Watches"]


class _Payload:
    """Unpickling this opens (so creates) a file: what a malicious pickle would do, harmlessly."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.sentinel), "w"))


def _code(sentinel: Path) -> str:
    return f"from pathlib import Path\nPath({str(sentinel)!r}).write_text('ran')\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A sqlite MLflow store, a tiny trained-shape classifier saved as the train stage saves it, and its folder."""
    import mlflow
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("artifact-tests", artifact_location=str(root / "artifacts"))
    model, _ = create_classifier("resnet10t", len(CLASSES), image_size=32)
    weights = root / "model" / "model.pt"
    weights.parent.mkdir()
    save_classifier(model, "resnet10t", CLASSES, weights)
    folder = write_classifier_dir(weights, root / "classifier", InferenceSettings(batch_size=4, bf16=False,
                                                                                  channels_last=False))
    (folder / TRAIN_MANIFEST).write_text("image,label,sha256\na.jpg,Watches,00\n")
    image = root / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(image)
    return {"uri": uri, "experiment": experiment, "client": MlflowClient(tracking_uri=uri, registry_uri=uri),
            "folder": folder, "weights": weights, "image": image, "root": root}


def _register(store: dict[str, Any], name: str, folder: Path, tags: dict[str, str] | None = None) -> tuple[str, str]:
    """Log ``folder`` as the promoting code does and create a version with ``tags`` (default: the real hashes)."""
    import mlflow

    client = store["client"]
    mlflow.set_tracking_uri(store["uri"])
    with mlflow.start_run(experiment_id=store["experiment"]) as run:
        if tags is None:
            source, hashes = log_classifier_folder(folder)
            tags = registration_tags(hashes)
        else:  # an attacker's version: any files, any tags
            mlflow.log_artifacts(str(folder), artifact_path="classifier/forged")
            source = mlflow.get_artifact_uri("classifier/forged")
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        client.create_registered_model(name)
    version = client.create_model_version(name, source, run.info.run_id, tags=tags)
    client.set_registered_model_alias(name, "champion", version.version)
    return source, str(version.version)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_registered_version_is_safetensors_and_json_and_loads_to_the_same_predictions(store: dict) -> None:
    source, version = _register(store, "safe", store["folder"])
    stored = sorted(path.name for path in Path(source.removeprefix("file://")).iterdir())
    assert stored == ["model_config.json", "serving.json", "train_manifest.csv", "weights.safetensors"]
    tags = store["client"].get_model_version("safe", version).tags
    hashes = json.loads(tags[SHA256_TAG])
    assert hashes == {name: _sha(store["folder"] / name) for name in stored}
    assert tags[WEIGHTS_SHA256_TAG] == _sha(store["folder"] / "weights.safetensors")
    # The safetensors file holds exactly the train stage's tensors.
    import torch
    from safetensors.torch import load_file

    state = torch.load(store["weights"], weights_only=True)
    loaded = load_file(str(store["folder"] / "weights.safetensors"))
    assert set(loaded) == set(state) and all(torch.equal(loaded[key], state[key]) for key in state)

    classifier, config = load_champion("models:/safe@champion", store["client"])
    assert config == json.loads((store["folder"] / "model_config.json").read_text())
    expected = ImageClassifier.from_dir(store["folder"]).predict_files([store["image"]])
    got = classifier.predict_files([store["image"]])
    assert got["label"].tolist() == expected["label"].tolist()
    assert got["top3"].tolist() == expected["top3"].tolist()


def test_a_version_carrying_a_pickle_or_code_is_refused_and_its_payload_never_runs(store: dict,
                                                                                   tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    # The payloads are live: unpickled or run, each creates its file.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control))).close()
    assert control.exists()
    control.unlink()
    (tmp_path / "control.py").write_text(_code(control))
    runpy.run_path(str(tmp_path / "control.py"))
    assert control.read_text() == "ran"

    hostile = tmp_path / "hostile"
    hostile.mkdir()
    for name in ("weights.safetensors", "model_config.json", "serving.json"):
        (hostile / name).write_bytes((store["folder"] / name).read_bytes())
    (hostile / "python_model.pkl").write_bytes(pickle.dumps(_Payload(sentinel)))
    (hostile / "served_model.py").write_text(_code(sentinel))
    # Even with the attacker's own hashes in the tag (anyone who can register can tag), the names refuse it.
    forged = {name: _sha(hostile / name) for name in sorted(path.name for path in hostile.iterdir())}
    _register(store, "hostile", hostile, {SHA256_TAG: json.dumps(forged)})
    with pytest.raises(UnsafeArtifactError, match=r"python_model.pkl, served_model.py.*no pickle, no code"):
        load_champion("models:/hostile@champion", store["client"])
    # Tag listing only the data files: the extra files on disk still refuse it.
    honest = {name: value for name, value in forged.items() if not name.endswith((".pkl", ".py"))}
    _register(store, "hostile-quiet", hostile, {SHA256_TAG: json.dumps(honest)})
    with pytest.raises(UnsafeArtifactError, match=r"python_model.pkl, served_model.py"):
        load_champion("models:/hostile-quiet@champion", store["client"])
    assert not sentinel.exists()


def test_predict_refuses_the_hostile_version_with_exit_2(store: dict, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from catalog_classifier.cli import main

    sentinel = tmp_path / "pwned"
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    for name in ("weights.safetensors", "model_config.json"):
        (hostile / name).write_bytes((store["folder"] / name).read_bytes())
    (hostile / "python_model.pkl").write_bytes(pickle.dumps(_Payload(sentinel)))
    hashes = {name: _sha(hostile / name) for name in ("weights.safetensors", "model_config.json",
                                                      "python_model.pkl")}
    _register(store, "hostile-cli", hostile, {SHA256_TAG: json.dumps(hashes)})
    status = main(["predict", "--params", str(REPO / "params.yaml"), "--set", f"mlflow.tracking_uri={store['uri']}",
                   "--model-uri", "models:/hostile-cli@champion", str(store["image"])])
    assert status == 2
    assert "python_model.pkl" in capsys.readouterr().err
    assert not sentinel.exists()


def test_a_weights_file_changed_after_registration_is_refused_by_its_hash(store: dict, tmp_path: Path) -> None:
    folder = tmp_path / "classifier"
    folder.mkdir()
    for path in store["folder"].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    source, _ = _register(store, "tampered", folder)
    stored = Path(source.removeprefix("file://")) / "weights.safetensors"
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    stored.write_bytes(bytes(data))
    with pytest.raises(UnsafeArtifactError, match=r"weights.safetensors has sha256 .* was recorded at registration"):
        load_champion("models:/tampered@champion", store["client"])


def test_an_old_models_from_code_version_is_refused_and_only_its_data_is_read_by_promote(store: dict,
                                                                                        tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    legacy = tmp_path / "legacy"
    (legacy / "artifacts/classifier").mkdir(parents=True)
    (legacy / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n"
                                    "    model_code_path: served_model.py\n")
    (legacy / "served_model.py").write_text(_code(sentinel))
    (legacy / "python_model.pkl").write_bytes(pickle.dumps(_Payload(sentinel)))
    (legacy / "artifacts/classifier/model.pt").write_bytes(store["weights"].read_bytes())
    for name in ("model_config.json", "serving.json"):
        (legacy / "artifacts/classifier" / name).write_bytes((store["folder"] / name).read_bytes())
    _register(store, "legacy", legacy, {"decision": "promoted"})
    with pytest.raises(UnsafeArtifactError, match=r"legacy v1 was registered before .* refused"):
        load_champion("models:/legacy/1", store["client"])
    import mlflow

    mlflow.set_tracking_uri(store["uri"])
    version = store["client"].get_model_version("legacy", "1")
    folder = fetch_legacy_weights(version, tmp_path / "data")
    assert sorted(path.name for path in folder.iterdir()) == ["model.pt", "model_config.json", "serving.json"]
    old = ImageClassifier.from_dir(folder).predict_files([store["image"]])
    new = ImageClassifier.from_dir(store["folder"]).predict_files([store["image"]])
    assert old["top3"].tolist() == new["top3"].tolist()
    assert not sentinel.exists()


def test_only_registered_versions_are_loaded(store: dict) -> None:
    with pytest.raises(UnsafeArtifactError, match="only registered versions"):
        load_champion(f"runs:/0123/{'model'}", store["client"])


def test_the_server_loads_a_local_pyfunc_whose_loader_is_the_package_with_pickle_disabled(
        store: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    import mlflow
    import pandas as pd
    import yaml

    from catalog_classifier.registry.artifact import fetch_verified
    from catalog_classifier.registry.pyfunc_model import NO_PICKLE_ENV, write_local_pyfunc

    _register(store, "served", store["folder"])
    verified = fetch_verified("models:/served@champion", tmp_path / "classifier", store["client"])
    local = write_local_pyfunc(verified.directory, tmp_path / "pyfunc")
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "catalog_classifier.registry.pyfunc_model"
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.py"))
    monkeypatch.setenv(NO_PICKLE_ENV, "false")
    model = mlflow.pyfunc.load_model(str(local))
    image = base64.b64encode(store["image"].read_bytes()).decode("ascii")
    answer = model.predict(pd.DataFrame({"image": [image, "not base64!"]}))
    expected = ImageClassifier.from_dir(store["folder"]).predict_files([store["image"]])
    assert answer["label"].tolist()[0] == expected["label"][0]
    assert answer["top3"].tolist()[0] == expected["top3"][0]
    assert answer.loc[1, "error"] == "not valid base64" and answer.loc[1, "confidence"] is None
