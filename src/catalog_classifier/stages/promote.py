"""Promote stage: the model compare selected (or one named) goes through the registry's promotion rule.

The rule and the registry writes live in :mod:`catalog_classifier.registry.promotion`; this stage reads which model
and which run, calls it, writes ``promotion.json`` and prints the decision.
"""

from __future__ import annotations

from typing import Any

from catalog_classifier.config.layout import Project
from catalog_classifier.ops.io import read_json, write_json
from catalog_classifier.registry.promotion import describe, promote, require_configured, roll_back
from catalog_classifier.registry.selection import selected_model


def run_promote(project: Project, dry_run: bool = False, model_name: str | None = None) -> dict[str, Any]:
    """Register the selected model (or ``model_name``) as challenger, apply the gate, move ``champion`` if it passes."""
    # The stage (no model named) registers the selected model once per run and files: DVC reruns it whenever any
    # model's outputs change. A model named on the command line is an explicit request: always judged again.
    reuse_registered = model_name is None
    model_name = model_name or selected_model(read_json(project.comparison()), project.comparison())
    require_configured(project, model_name)
    run_id = read_json(project.run_record(model_name))["run_id"]
    report = promote(project, model_name, run_id, dry_run=dry_run, reuse_registered=reuse_registered)
    if not dry_run:
        write_json(project.promotion_report(), report)
    print(describe(report))
    return report


def run_rollback(project: Project) -> tuple[str, str]:
    """Give ``champion`` back to the previous champion, under the same lock as promote."""
    name = project.params.registry.model_name
    demoted, restored = roll_back(project)
    print(f"rollback: {name} champion moved from v{demoted} back to v{restored} "
          f"(v{demoted} tagged rolled_back_at; history kept in the registered model's tags)")
    return demoted, restored
