"""The markdown description of a registered version: what a reviewer reads first in the MLflow registry UI.

It is rendered from the version's own tags (the gate's figures, the model's validation and test macro-F1, its
weights, provenance, rollback events) and nothing else, so it never says more or less than the tags, and it is
simply rendered again whenever they change: after the decision is recorded, and on both versions a rollback
touches. A figure a version does not carry (registered before it was recorded) is left out, not invented.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mlflow is imported by the functions that use it
    from mlflow import MlflowClient

# Where the report stage attaches the page on every model's run.
REPORT_ARTIFACT = "report/index.html"


def _figure(tags: Mapping[str, str], key: str, spec: str) -> str | None:
    """A numeric tag formatted with ``spec``; None when it is missing or not a number (``none``)."""
    try:
        return format(float(tags[key]), spec)
    except (KeyError, ValueError):
        return None


def _interval(tags: Mapping[str, str], key: str, spec: str) -> str:
    """`` [low, high]`` from a JSON pair tag; empty when missing or malformed."""
    try:
        low, high = json.loads(tags[key])
        return f" [{format(float(low), spec)}, {format(float(high), spec)}]"
    except (KeyError, ValueError, TypeError):
        return ""


def _with_interval(tags: Mapping[str, str], key: str, spec: str = ".4f") -> str | None:
    value = _figure(tags, key, spec)
    return None if value is None else value + _interval(tags, f"{key}_interval", spec)


def _figures_table(tags: Mapping[str, str]) -> list[str]:
    confidence = _figure(tags, "interval_confidence", ".0%") or "95%"
    cv = _figure(tags, "cv_f1_macro_mean", ".4f")
    rows = [("cross-validated on train+val, mean ± sd (chose this model)",
             None if cv is None else f"{cv} ± {_figure(tags, 'cv_f1_macro_sd', '.4f') or '?'}"),
            ("validation" + ("" if cv else " (chose this model among the pipeline's)"),
             _with_interval(tags, "val_f1_macro")),
            ("test split (evaluate stage)", _with_interval(tags, "test_f1_macro"))]
    gate = _with_interval(tags, "challenger_f1_macro")
    if gate is not None:
        champion = tags.get("compared_with", "none")
        images = (f"{tags.get('n_images', '?')} test images" if champion == "none" else
                  f"{tags.get('n_images', '?')} test images champion v{champion} never trained on")
        rows.append((f"gate: {images}", gate))
    shown = [(label, value) for label, value in rows if value is not None]
    if not shown:
        return []
    return [f"| macro-F1 [{confidence} bootstrap interval] | |", "|---|---:|",
            *(f"| {label} | {value} |" for label, value in shown)]


def _gate_lines(tags: Mapping[str, str]) -> list[str]:
    lines = []
    weakest, weakest_f1 = tags.get("weakest_class"), _figure(tags, "weakest_class_f1", ".3f")
    if weakest and weakest_f1 is not None:
        floor = _figure(tags, "class_f1_floor", "g")
        lines.append(f"- Weakest class: **{weakest}**, F1 {weakest_f1}" + (f" (floor {floor})" if floor else ""))
    coverage = _figure(tags, "challenger_coverage", ".3f") or _figure(tags, "autolabel_coverage", ".3f")
    if coverage is not None:
        details = [f"at threshold {value}" for value in [_figure(tags, "autolabel_threshold", ".4f")] if value]
        precision = _figure(tags, "challenger_autolabel_precision", ".3f")
        target = _figure(tags, "autolabel_target_precision", "g")
        if precision is not None:
            details.append(f"precision {precision}" + (f" (target {target})" if target else ""))
        minimum = _figure(tags, "min_coverage", "g")
        if minimum is not None:
            details.append(f"minimum {minimum}")
        lines.append(f"- Auto-label coverage: **{coverage}**" + (f" ({', '.join(details)})" if details else ""))
    bound = _figure(tags, "calibration_precision_bound", ".4f")
    if bound is not None:
        lines.append(f"- Precision promise: lower bound {bound} at coverage "
                     f"{_figure(tags, 'calibration_coverage', '.3f')} on {tags.get('calibration_source', '?')}")
    champion = _figure(tags, "champion_f1_macro", ".4f")
    if champion is not None:
        lines.append(f"- Against champion v{tags.get('compared_with', '?')}: its macro-F1 {champion}; difference "
                     f"{_figure(tags, 'delta', '+.4f')}, paired interval{_interval(tags, 'delta_interval', '+.4f')} on "
                     f"{tags.get('n_images', '?')} images (lower end needed > {_figure(tags, 'min_delta', 'g')})")
    elif tags.get("compared_with") == "none":
        lines.append("- No champion yet: judged on the class F1 floor and coverage only")
    return lines


def _events(tags: Mapping[str, str]) -> list[str]:
    """Rollback events, oldest first (ISO timestamps sort as text)."""
    events = []
    if "rolled_back_at" in tags:
        events.append((tags["rolled_back_at"], f"rolled back: champion returned to v{tags.get('rolled_back_to', '?')}"))
    if "restored_at" in tags:
        events.append((tags["restored_at"], "champion again (restored by a rollback)"))
    return [f"- {stamp}: {text}" for stamp, text in sorted(events)]


def _report_line(tags: Mapping[str, str], name: str, version: str, experiment_id: str | None) -> str:
    run_id = tags.get("source_run_id")
    model_uri = f"`models:/{name}/{version}`"
    if not run_id:
        return f"Model: {model_uri}."
    uri = f"`runs:/{run_id}/{REPORT_ARTIFACT}`"
    # The UI's hash route to the run page with the artifact open (MLflow 3: runPageWithArtifact).
    page = (f"[{REPORT_ARTIFACT} of run {run_id[:12]}](#/experiments/{experiment_id}/runs/{run_id}/artifactPath/"
            f"{REPORT_ARTIFACT})" if experiment_id else f"{REPORT_ARTIFACT} of run {run_id[:12]}")
    return f"Report: {page} ({uri}, attached by the pipeline's report stage). Model: {model_uri}."


def version_description(name: str, version: str, tags: Mapping[str, str], experiment_id: str | None = None) -> str:
    """Markdown: model and weights, macro-F1 (val, test, gate), weakest class, coverage, decision and why, report."""
    model = tags.get("source_model", "unknown model")
    weights = tags.get("weights")
    blocks = [[f"**{model}** ({weights}), version {version} of {name}." if weights
               else f"**{model}**, version {version} of {name}."]]
    decision = tags.get("decision")
    if decision:
        outcome = "became champion" if decision == "promoted" else "stayed challenger"
        blocks.append([f"**Gate: {decision}** ({outcome}). Why: {tags.get('reason', 'not recorded')}"])
    blocks += [_figures_table(tags), _gate_lines(tags)]
    events = _events(tags)
    if events:
        blocks.append(["Since then:", *events])
    blocks.append([_report_line(tags, name, version, experiment_id)])
    commit = tags.get("git_commit")
    provenance = [f"git {commit[:12]}{'-dirty' if commit.endswith('-dirty') else ''}" if commit else None,
                  f"changed files {tags['git_dirty_files']}" if "git_dirty_files" in tags else None,
                  f"data {tags['data_version'][:12]}" if "data_version" in tags else None,
                  f"decided {tags['decided_at']}" if "decided_at" in tags else None]
    if any(provenance):
        blocks.append(["Provenance: " + "; ".join(item for item in provenance if item) + "."])
    return "\n\n".join("\n".join(block) for block in blocks if block) + "\n"


def refresh_description(client: MlflowClient, name: str, version: str) -> str:
    """Render the version's description from its current tags and store it; returns it."""
    from mlflow.exceptions import MlflowException

    current = client.get_model_version(name, version)
    experiment_id = None
    if current.run_id:
        try:
            experiment_id = client.get_run(current.run_id).info.experiment_id
        except MlflowException:  # the run was deleted: the description still names it
            experiment_id = None
    text = version_description(name, str(version), current.tags or {}, experiment_id)
    client.update_model_version(name, str(version), description=text)
    return text
