"""The split manifests as MLflow dataset inputs of a run, addressed the way DVC stores them.

A run's Dataset column then says which data it used: ``<dataset_name>-train`` / ``-val`` / ``-test``, with a
digest made of the DVC data version (``data.dvc``'s md5) and the manifest's own md5, and a source where DVC keeps
that manifest: ``<remote url>/files/md5/<ab>/<cdef...>`` in the default remote (what ``dvc.api.get_url`` answers
for the file once it is committed), or the file in the project when there is no remote.
Only metadata is logged (schema, row count), never the rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from catalog_classifier.config.layout import Project
from catalog_classifier.data.manifests import read_manifest
from catalog_classifier.registry.tracking import data_version

if TYPE_CHECKING:
    from mlflow.data.dataset import Dataset
    from mlflow.data.dataset_source import DatasetSource

log = logging.getLogger(__name__)

# The run's role for each split, as MLflow's ``mlflow.data.context`` input tag.
CONTEXTS = {"train": "train", "val": "validation", "test": "test"}
DIGEST_PART = 12  # hex digits of each md5 in the digest (MLflow keeps at most 36 characters)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DvcRemote:
    name: str
    url: str  # absolute for a local remote (DVC resolves paths relative to the config file)


def file_md5(path: Path) -> str:
    """md5 of the file's bytes: DVC 3's object id for it (``hash: md5``)."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def default_remote(project_root: Path) -> DvcRemote | None:
    """The default DVC remote (``core.remote``) as DVC itself reads it (system, global, repo and local config)."""
    dvc_dir = project_root / ".dvc"
    if not dvc_dir.is_dir():
        return None
    from dvc.config import Config, ConfigError

    try:
        config = Config(dvc_dir=str(dvc_dir))
    except ConfigError as err:
        log.warning("DVC config unreadable (%s): datasets are logged without a remote", err)
        return None
    name = config["core"].get("remote")
    remote = config["remote"].get(name) if name else None
    return DvcRemote(name, str(remote["url"])) if remote and remote.get("url") else None


def remote_object_url(remote: DvcRemote, md5: str) -> str:
    """Where DVC 3 keeps a file with this md5 in the remote."""
    return f"{remote.url.rstrip('/')}/files/md5/{md5[:2]}/{md5[2:]}"


def dataset_digest(data_md5: str, manifest_md5: str) -> str:
    """``<data version>-<manifest md5>``, each shortened: a changed image set or a changed split shows."""
    return f"{data_md5.removesuffix('.dir')[:DIGEST_PART]}-{manifest_md5[:DIGEST_PART]}"


def _source(url: str, fallback: Path) -> DatasetSource:
    """MLflow's own source type for the URL: ``local`` for a path, else s3://, gs://, http(s)://...; a remote MLflow
    has no type for (ssh, azure, ...) gives the project's file, the remote still named in the input tags."""
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json, resolve_dataset_source
    from mlflow.exceptions import MlflowException

    if "://" in url and not url.startswith("file:"):
        try:
            return resolve_dataset_source(url)
        except MlflowException:
            url = fallback.as_uri()
    # Chosen by type, not resolved: MLflow registers two "local" sources and warns that a path matches both.
    return get_dataset_source_from_json(json.dumps({"uri": url}), "local")


def split_dataset(project: Project, split: str, remote: DvcRemote | None) -> tuple[Dataset, dict[str, str]]:
    """One split's manifest as an MLflow dataset, and the input tags that spell out its DVC address."""
    import mlflow

    manifest = project.manifest(split)
    md5 = file_md5(manifest)
    data_md5 = data_version(project.root)
    inside = manifest.is_relative_to(project.root)
    relative = manifest.relative_to(project.root).as_posix() if inside else str(manifest)
    url = remote_object_url(remote, md5) if remote else manifest.as_uri()
    dataset = mlflow.data.from_pandas(
        read_manifest(project, split), source=_source(url, manifest), targets="label",
        name=f"{project.params.mlflow.dataset_name}-{split}", digest=dataset_digest(data_md5, md5),
    )
    tags = {"dvc.path": relative, "dvc.md5": md5, "dvc.data_md5": data_md5,
            "dvc.remote": remote.name if remote else "none"}
    return dataset, tags


def log_split_inputs(project: Project, splits: tuple[str, ...]) -> None:
    """Log these splits' manifests as dataset inputs of the active run (context train / validation / test)."""
    import mlflow

    remote = default_remote(project.root)
    datasets, contexts, tags = [], [], []
    for split in splits:
        dataset, input_tags = split_dataset(project, split, remote)
        datasets.append(dataset)
        contexts.append(CONTEXTS[split])
        tags.append(input_tags)
    mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=tags)
