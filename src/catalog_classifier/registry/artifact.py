"""The registered artifact is data, never code: what a version holds, how it is checked, and the one safe loader.

A registered version is one folder of the promoting run's artifacts (``classifier/<digest>/``): the weights as
safetensors (a JSON header and raw tensor bytes), the model's JSON config, its inference settings, its calibration
and the training manifest; optionally an ONNX graph (protobuf data, no Python). The architecture is rebuilt by this
package's own code (timm, from the config's ``model_name``): nothing in the registry is imported, unpickled or run.

At registration the sha256 of every file is recorded in the version's tag ``artifact_sha256`` (JSON). Loading
(:func:`fetch_verified`, :func:`load_champion`) lists the version's folder first and refuses it, before any file
is downloaded, when it holds a name outside :data:`ALLOWED_FILES` (a pickle, a ``.py``, an ``MLmodel`` pointing at
code...) or lacks one the tag lists; then each downloaded file must match its recorded hash. Versions registered
before this format (a "models from code" pyfunc: a ``served_model.py`` executed on load) carry no hashes and are
refused by serve and predict; promote may still compare against such a champion through
:func:`fetch_legacy_weights`, which reads its state dict with ``torch.load(weights_only=True)`` and runs none of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog_classifier.data.images import file_sha256
from catalog_classifier.modeling.prediction import (
    AUTOLABEL_FILE,
    CONFIG_FILE,
    ONNX_FILE,
    SAFE_WEIGHTS_FILE,
    SETTINGS_FILE,
    WEIGHTS_FILE,
    ImageClassifier,
)
from catalog_classifier.registry.versions import RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

ARTIFACT_PATH = "classifier"  # the folder of the promoting run's artifacts a version points at
TRAIN_MANIFEST = "train_manifest.csv"
# Every name a registered folder may hold: data formats only. Anything else refuses the whole version.
ALLOWED_FILES = frozenset({SAFE_WEIGHTS_FILE, CONFIG_FILE, SETTINGS_FILE, AUTOLABEL_FILE, TRAIN_MANIFEST, ONNX_FILE})
REQUIRED_FILES = frozenset({SAFE_WEIGHTS_FILE, CONFIG_FILE})
SHA256_TAG = "artifact_sha256"
WEIGHTS_SHA256_TAG = "weights_sha256"
FORMAT_TAG = "artifact_format"
FORMAT = "safetensors+json/1"
# Where a version logged before this format keeps its (state-dict) weights, beside served_model.py.
LEGACY_FOLDER = "artifacts/classifier"
LEGACY_FILES = (WEIGHTS_FILE, CONFIG_FILE, SETTINGS_FILE, AUTOLABEL_FILE, TRAIN_MANIFEST)


class UnsafeArtifactError(RegistryError):
    """A registered version cannot be loaded safely (code or pickle in it, a hash mismatch, no recorded hashes)."""


@dataclass(frozen=True)
class VerifiedArtifact:
    """A version's folder, downloaded and checked file by file against the hashes recorded at registration."""

    directory: Path
    name: str
    version: str
    sha256: dict[str, str]

    @property
    def training_manifest(self) -> Path:
        """The images this model was trained on (the gate excludes them from its test set)."""
        return self.directory / TRAIN_MANIFEST


def folder_hashes(directory: Path) -> dict[str, str]:
    """sha256 of each file of a classifier folder about to be registered; refuses a folder that is not data only."""
    names = {path.name for path in directory.iterdir()}
    check_names(names, f"{directory}")
    if any(not (directory / name).is_file() for name in names):
        raise UnsafeArtifactError(f"{directory}: a registered folder holds plain files only")
    return {name: file_sha256(directory / name) for name in sorted(names)}


def check_names(names: set[str], where: str, expected: set[str] | None = None) -> None:
    """The folder's names are all data files of this format (and exactly those recorded, when given)."""
    foreign = sorted(names - ALLOWED_FILES)
    if foreign:
        raise UnsafeArtifactError(f"{where} holds {', '.join(foreign)}: a registered version may hold only "
                                  f"{', '.join(sorted(ALLOWED_FILES))} (no pickle, no code); refused, nothing loaded")
    missing = sorted(REQUIRED_FILES - names)
    if missing:
        raise UnsafeArtifactError(f"{where} lacks {', '.join(missing)}; refused")
    if expected is not None and names != expected:
        raise UnsafeArtifactError(f"{where} holds {sorted(names)} but {sorted(expected)} were registered; refused")


def registration_tags(hashes: dict[str, str]) -> dict[str, str]:
    """Version tags recorded when the version is created: the format and every file's sha256."""
    return {FORMAT_TAG: FORMAT, SHA256_TAG: json.dumps(hashes, sort_keys=True),
            WEIGHTS_SHA256_TAG: hashes[SAFE_WEIGHTS_FILE]}


def log_classifier_folder(directory: Path) -> tuple[str, dict[str, str]]:
    """Log the folder under the active run; returns its artifact URI (the version's source) and its hashes.

    The folder is content-addressed (``classifier/<digest of the hashes>``): promoting the same run again with
    another calibration or settings writes a new folder and never changes the files an earlier version points at."""
    import mlflow

    hashes = folder_hashes(directory)
    digest = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]
    path = f"{ARTIFACT_PATH}/{digest}"
    mlflow.log_artifacts(str(directory), artifact_path=path)
    return mlflow.get_artifact_uri(path), hashes


def resolve_version(client: MlflowClient, model_uri: str) -> ModelVersion:
    """The registry version of ``models:/<name>/<version>`` or ``models:/<name>@<alias>``; no other URI is
    accepted, since the hashes that vouch for an artifact live on a registered version."""
    if not model_uri.startswith("models:/"):
        raise UnsafeArtifactError(f"{model_uri}: only registered versions (models:/<name>/<version> or "
                                  "models:/<name>@<alias>) are loaded, since only they carry recorded hashes")
    rest = model_uri.removeprefix("models:/").strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, _, version = rest.rpartition("/")
    if not name or not version.isdigit():
        raise UnsafeArtifactError(f"{model_uri}: expected models:/<name>/<version number> or models:/<name>@<alias>")
    return client.get_model_version(name, version)


def recorded_hashes(version: ModelVersion) -> dict[str, str]:
    """The hashes recorded at registration; a version without them predates this format and is refused."""
    text = (version.tags or {}).get(SHA256_TAG)
    if text is None:
        raise UnsafeArtifactError(
            f"{version.name} v{version.version} was registered before registry artifacts became data only (it is a "
            "'models from code' pyfunc whose served_model.py would run on load, and has no recorded sha256): refused. "
            "Register its model again with `catalog-classifier promote --model <name>`")
    try:
        hashes = json.loads(text)
    except ValueError:
        hashes = None
    if not isinstance(hashes, dict) or not all(isinstance(value, str) for value in hashes.values()):
        raise UnsafeArtifactError(f"{version.name} v{version.version}: tag {SHA256_TAG} is not a JSON object of "
                                  "hashes; refused")
    return hashes


def fetch_verified(model_uri: str, destination: Path, client: MlflowClient | None = None) -> VerifiedArtifact:
    """Download a registered version's folder into ``destination`` after checking its names, then check every
    file's sha256 against the version's tag: the folder returned is exactly what was registered."""
    import mlflow

    client = client or mlflow.MlflowClient()
    version = resolve_version(client, model_uri)
    where = f"{version.name} v{version.version}"
    hashes = recorded_hashes(version)
    check_names(set(hashes), f"{where} (tag {SHA256_TAG})")
    listed = mlflow.artifacts.list_artifacts(artifact_uri=version.source)
    if any(item.is_dir for item in listed):
        raise UnsafeArtifactError(f"{where}: its folder holds sub-folders ({[i.path for i in listed if i.is_dir]}); "
                                  "refused")
    check_names({Path(item.path).name for item in listed}, f"{where} ({version.source})", expected=set(hashes))
    destination.mkdir(parents=True, exist_ok=True)
    for name, expected in sorted(hashes.items()):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{version.source.rstrip('/')}/{name}",
                                                         dst_path=str(destination)))
        actual = file_sha256(local)
        if actual != expected:
            local.unlink()
            raise UnsafeArtifactError(f"{where}: {name} has sha256 {actual[:16]}…, but {expected[:16]}… was "
                                      "recorded at registration: the file was changed; refused")
    log.info("%s: %d files match the sha256 recorded at registration", where, len(hashes))
    return VerifiedArtifact(destination, version.name, str(version.version), hashes)


def load_champion(model_uri: str, client: MlflowClient | None = None) -> tuple[ImageClassifier, dict[str, Any]]:
    """The classifier of a registered version and its JSON config, verified and loaded without pickle or code.

    ``model_uri``: ``models:/<name>@champion`` (or any alias) or ``models:/<name>/<version>``. The returned
    :class:`ImageClassifier` predicts on files or encoded bytes (``classifier.model`` is the torch module);
    the config is the version's ``model_config.json`` (model_name, classes, input size, interpolation, mean, std).
    Raises :class:`UnsafeArtifactError` for a version that is not data only or whose files changed."""
    with tempfile.TemporaryDirectory(prefix="catalog-champion-") as folder:
        verified = fetch_verified(model_uri, Path(folder), client)
        classifier = ImageClassifier.from_dir(verified.directory)
    return classifier, classifier.config


def fetch_legacy_weights(version: ModelVersion, destination: Path) -> Path:
    """The data files of a version registered before this format (state dict, configs, manifest), without its
    MLmodel or ``served_model.py``: for promote to compare against an old champion. Nothing is executed; the
    state dict is later read with ``torch.load(weights_only=True)``. No hash was recorded: unverified."""
    import mlflow

    source = version.source.rstrip("/")
    if source.startswith("models:/m-"):  # an MLflow 3 logged model: read from where its files are
        source = mlflow.MlflowClient().get_logged_model(source.removeprefix("models:/")).artifact_location
    destination.mkdir(parents=True, exist_ok=True)
    listed = {Path(item.path).name for item in
              mlflow.artifacts.list_artifacts(artifact_uri=f"{source.rstrip('/')}/{LEGACY_FOLDER}")}
    if WEIGHTS_FILE not in listed or CONFIG_FILE not in listed:
        raise UnsafeArtifactError(f"{version.name} v{version.version}: no {LEGACY_FOLDER}/{WEIGHTS_FILE} to read "
                                  "as data; refused")
    for name in LEGACY_FILES:
        if name in listed:
            mlflow.artifacts.download_artifacts(artifact_uri=f"{source.rstrip('/')}/{LEGACY_FOLDER}/{name}",
                                                dst_path=str(destination))
    return destination
