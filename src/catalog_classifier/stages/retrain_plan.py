"""The scheduled retraining's decision and record, for the flows: load params, call the library, phrase the result.

Thin: the fingerprints are :mod:`catalog_classifier.ops.stage_inputs`, the record and the comparison
:mod:`catalog_classifier.registry.retraining`. Not a DVC stage: the flows (``flows/retrain.py``,
``flows/pipeline.py``) call it around the stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catalog_classifier.config.params import PARAMS_FILE, load_params
from catalog_classifier.ops.stage_inputs import RetrainPlan
from catalog_classifier.registry.retraining import plan_against_registry, record_retraining, registry_location


def plan(root: Path) -> RetrainPlan:
    """Each stage of ``root`` against the record of the registry ``promote`` writes to (read only)."""
    params = load_params(root / PARAMS_FILE)
    return plan_against_registry(root, params.mlflow, params.registry.model_name)[0]


def plan_dict(found: RetrainPlan) -> dict[str, Any]:
    """The plan as the flow passes and returns it (plain values)."""
    lines = found.lines()
    return {"baseline": found.baseline, "nothing_to_do": found.nothing_to_do, "deferred": found.deferred,
            "missing": [stage for stage, outs in found.missing_outputs.items() if outs], "to_run": found.to_run,
            "forced": found.changed, "lines": lines,
            "changes": [line for line in lines if line.split(":")[0] in found.changed]}


def dry_run_text(root: Path) -> str:
    """What a retraining run in ``root`` would do now, stage by stage, and against which record."""
    found = plan(root)
    verdict = ("would skip: nothing changed" if found.nothing_to_do
               else f"would skip: {found.deferred}" if found.deferred
               else f"would retrain: {len(found.changed)} stage(s) changed, {len(found.to_run)} handed to DVC")
    return "\n".join([f"compared with {found.baseline}", verdict, *[f"  {line}" for line in found.lines()]])


def record(root: Path, recorded_by: str) -> str:
    """After a successful pipeline run in ``root``: store what its stages ran on; the line to log."""
    params = load_params(root / PARAMS_FILE)
    written = record_retraining(root, params.mlflow, params.registry.model_name, recorded_by)
    return f"recorded in registry {registry_location()}: {written.describe()}"
