"""The registry's record of the last successful retraining: what the pipeline's stages were run on.

A scheduled retraining compares the pipeline as its fresh clone has it with this record, not with ``dvc.lock``
and the outputs that clone may or may not hold (a read-only DVC remote never receives them). The record lives in
the same registry the ``promote`` stage writes to (the team's MLflow server when ``MLFLOW_TRACKING_URI`` points
at it, else the local ``mlruns/``), as tags on the registered model, so every clone and every worker that
promotes into that registry reads the same record. Each version's own tags (``git_commit``, ``data_version``)
still say what that version was trained on; this record also covers runs that registered nothing (a
report-only change) and holds each stage's fingerprint (:mod:`catalog_classifier.ops.stage_inputs`).

A registry tag holds at most 5,000 characters in MLflow's database (``registered_model_tags.value``), so the JSON
record is split over ``retraining_record.0``, ``.1``, ... and ``retraining_record`` holds the number of parts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog_classifier.config.params import MlflowParams
from catalog_classifier.ops.stage_inputs import (
    RecordedStages,
    RetrainPlan,
    all_inputs,
    fingerprints,
    outputs_present,
    own_hashes,
    plan_retraining,
    read_pipeline,
)
from catalog_classifier.registry.tracking import (
    check_server,
    data_version,
    git_commit,
    resolve_tracking_uri,
    setup_mlflow,
)
from catalog_classifier.registry.versions import champion_version, ensure_registered_model, now

if TYPE_CHECKING:
    from mlflow import MlflowClient

RECORD_TAG = "retraining_record"
SQLITE = "sqlite:///"
PART_CHARS = 4500


@dataclass(frozen=True)
class RetrainingRecord:
    """What the last successful retraining ran on, and when and by what it was recorded."""

    stages: dict[str, str]  # stage -> fingerprint
    own: dict[str, str]  # stage -> hash of its own part (command and own inputs)
    inputs: dict[str, str]  # every stage input (file hash, param value, data version) -> value
    git_commit: str
    data_version: str
    recorded_at: str
    recorded_by: str
    champion: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RetrainingRecord:
        return cls(**json.loads(text))

    def describe(self) -> str:
        """The record in one phrase, for log lines: commit, data version, when and by what."""
        champion = f", champion v{self.champion}" if self.champion else ", no champion"
        return (f"commit {self.git_commit[:12]}, data version {self.data_version[:12]}, recorded "
                f"{self.recorded_at} by {self.recorded_by}{champion}")


def split_parts(text: str, size: int = PART_CHARS) -> list[str]:
    return [text[start:start + size] for start in range(0, len(text), size)] or [""]


def read_record(client: MlflowClient, name: str) -> RetrainingRecord | None:
    """The registered model's record, or None when the model or its record does not exist (yet)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(name).tags or {}
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise
    if RECORD_TAG not in tags:
        return None
    parts = [tags.get(f"{RECORD_TAG}.{index}") for index in range(int(tags[RECORD_TAG]))]
    if any(part is None for part in parts):
        return None  # a record half written by an interrupted run: as good as none
    try:
        return RetrainingRecord.from_json("".join(part for part in parts if part is not None))
    except (ValueError, TypeError):
        return None


def write_record(client: MlflowClient, name: str, record: RetrainingRecord) -> None:
    """Store ``record`` on the registered model (created if absent), replacing the previous one.

    Parts first, the count last, stale parts removed after it. A reader that catches a write half done gets parts
    that do not parse and takes it for no record (so its run retrains): safe, and runs of one deployment do not
    overlap (see the backlog rule in flows/retrain.py).
    """
    ensure_registered_model(client, name, "Product-photo classifier; alias champion serves, challenger is the "
                                          "latest candidate. Versions carry the gate's decision in tags.")
    old = client.get_registered_model(name).tags or {}
    parts = split_parts(record.to_json())
    for index, part in enumerate(parts):
        client.set_registered_model_tag(name, f"{RECORD_TAG}.{index}", part)
    client.set_registered_model_tag(name, RECORD_TAG, str(len(parts)))
    stale = int(old.get(RECORD_TAG, 0) or 0)
    for index in range(len(parts), stale):
        client.delete_registered_model_tag(name, f"{RECORD_TAG}.{index}")


def use_registry(mlflow_params: MlflowParams, root: Path) -> None:
    """Point MLflow at the registry ``promote`` writes to, as :func:`setup_mlflow` does, creating nothing."""
    import mlflow

    uri = resolve_tracking_uri(mlflow_params, root)
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or uri)


def registry_location() -> str:
    """The registry MLflow is set up to use, credentials masked: what "the team's registry" is in a log line."""
    import mlflow

    from catalog_classifier.infra.postgres import redact_url

    return redact_url(mlflow.get_registry_uri())


def plan_against_registry(root: Path, mlflow_params: MlflowParams, model_name: str) -> tuple[
        RetrainPlan, RetrainingRecord | None]:
    """The pipeline as ``root`` has it, compared with the registry's record of the last retraining (read only)."""
    import mlflow

    use_registry(mlflow_params, root)
    registry = mlflow.get_registry_uri()
    # A local store that does not exist yet holds no record; opening it would create it.
    blank = registry.startswith(SQLITE) and not Path(registry[len(SQLITE):]).is_file()
    record = None if blank else read_record(mlflow.MlflowClient(), model_name)
    stages = read_pipeline(root)
    where = f"registry {registry_location()}, model {model_name}"
    if record is None:
        baseline = f"no retraining recorded in {where}"
        return plan_retraining(stages, None, baseline, outputs_present(root, stages)), None
    baseline = f"the last retraining recorded in {where} ({record.describe()})"
    recorded = RecordedStages(record.stages, record.own, record.inputs)
    return plan_retraining(stages, recorded, baseline, outputs_present(root, stages)), record


def record_retraining(root: Path, mlflow_params: MlflowParams, model_name: str, recorded_by: str,
                      extra: dict[str, Any] | None = None) -> RetrainingRecord:
    """After a successful pipeline run in ``root``: store what its stages ran on as the registry's record."""
    setup_mlflow(mlflow_params, root)
    import mlflow

    client = mlflow.MlflowClient()
    stages = read_pipeline(root)
    record = RetrainingRecord(stages=fingerprints(stages), own=own_hashes(stages), inputs=all_inputs(stages),
                              git_commit=git_commit(root), data_version=data_version(root),
                              recorded_at=now(), recorded_by=recorded_by,
                              champion=champion_version(client, model_name), extra=extra or {})
    write_record(client, model_name, record)
    return record
