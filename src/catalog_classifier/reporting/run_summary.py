"""What a pipeline run produced, read back from the stages' own outputs, as one Markdown report.

The orchestrator publishes this (a Prefect artifact) but computes nothing itself: run ids come from each
train stage's ``run.json``, macro-F1 from the evaluate stage's ``metrics.json``, fit time from
``train_metrics.json``, and the promotion decision from the JSON the ``promote`` stage recorded in
``dvc.lock`` (so the report needs no knowledge of where that stage writes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from catalog_classifier.config.layout import Project
from catalog_classifier.ops.io import read_json

PROMOTE_STAGE = "promote"
NOT_RUN = "not run"


def _read(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.is_file() else None


def model_rows(project: Project) -> list[dict[str, Any]]:
    """One row per model in params: MLflow run id, test/val macro-F1, fit time (None where not produced)."""
    rows = []
    for model in project.params.models:
        run = _read(project.run_record(model)) or {}
        trained = _read(project.train_metrics(model)) or {}
        evaluated = _read(project.eval_metrics(model)) or {}
        rows.append({
            "model": model,
            "run_id": run.get("run_id"),
            "test_f1_macro": (evaluated.get("test") or {}).get("f1_macro"),
            "val_f1_macro": (evaluated.get("val") or {}).get("f1_macro"),
            "fit_time_s": trained.get("fit_time_s"),
        })
    return rows


def promotion_record(root: Path) -> dict[str, Any] | None:
    """The JSON the ``promote`` stage wrote, located through ``dvc.lock``; None when it has not run."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    with lock.open(encoding="utf-8") as handle:
        stage = ((yaml.safe_load(handle) or {}).get("stages") or {}).get(PROMOTE_STAGE) or {}
    for out in stage.get("outs") or []:
        path = root / out.get("path", "")
        if path.suffix == ".json" and path.is_file():
            return read_json(path)
    return None


def model_decision(promotion: dict[str, Any] | None, model: str) -> str:
    """What promotion decided about ``model``: only the compared best model is a candidate."""
    if promotion is None:
        return NOT_RUN
    candidate = promotion.get("source_model", promotion.get("model"))
    if candidate is not None and candidate != model:
        return "not the candidate"
    decision = str(promotion.get("decision", "promoted" if promotion.get("promote") else "rejected"))
    version = promotion.get("version")
    return f"{decision} (v{version})" if version else decision


def _cell(value: Any, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def summary_markdown(rows: list[dict[str, Any]], promotion: dict[str, Any] | None,
                     stages: list[tuple[str, str]], title: str = "Pipeline run") -> str:
    """Markdown: the models table, the promotion decision, and what DVC did with each stage."""
    lines = [f"# {title}", "", "| model | MLflow run id | test macro-F1 | val macro-F1 | fit time (s) | promotion |",
             "|---|---|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {_cell(row['run_id'], '`{}`')} | {_cell(row['test_f1_macro'], '{:.4f}')} "
                     f"| {_cell(row['val_f1_macro'], '{:.4f}')} | {_cell(row['fit_time_s'], '{:.1f}')} "
                     f"| {model_decision(promotion, row['model'])} |")
    lines += ["", "## Promotion", ""]
    if promotion is None:
        lines.append(f"Promotion: {NOT_RUN} (no `{PROMOTE_STAGE}` stage output recorded in dvc.lock).")
    else:
        decision = promotion.get("decision", "promoted" if promotion.get("promote") else "rejected")
        lines.append(f"Decision: **{decision}**" + (f" — {promotion['reason']}" if promotion.get("reason") else ""))
        if "champion_before" in promotion or "champion_after" in promotion:
            lines.append(f"Champion before: {promotion.get('champion_before') or 'none'}; "
                         f"after: {promotion.get('champion_after') or 'none'}.")
    lines += ["", "## Stages", "", "| stage | DVC |", "|---|---|"]
    lines += [f"| {stage} | {action} |" for stage, action in stages]
    return "\n".join(lines) + "\n"
