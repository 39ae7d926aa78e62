"""Compare stage: the models side by side, and the candidate for promotion, chosen on validation macro-F1.

It also writes the pipeline's one DVC metrics file (``compare.out_summary``), so ``dvc exp show`` answers "which
settings gave what" in a few columns; every stage's detailed JSON stays a plain (uncached, committed) output.
"""

from __future__ import annotations

from typing import Any

from catalog_classifier.config.layout import Project
from catalog_classifier.ops.io import read_json, write_json, write_text
from catalog_classifier.registry.selection import (
    CV_METRIC,
    SELECTION_RULE,
    select_candidate,
    selected_on,
    selection_score,
    weights_label,
)

# Per model in the DVC metrics file (summary_metrics), with the digits shown: the score that selects (cross-validated
# mean, else validation macro-F1), validation and test macro-F1 (test reports), fit time in seconds.
SUMMARY_METRICS = {"selection_f1_macro": 4, "val_f1_macro": 4, "test_f1_macro": 4, "fit_time_s": 1}

COMPARISON_COLUMNS = [
    ("selects on", "selection", "{}"),
    ("CV macro-F1 mean ± sd", "cv_text", "{}"),
    ("val macro-F1 [95% CI]", "val_text", "{}"),
    ("test macro-F1 [95% CI] (reported)", "test_text", "{}"),
    ("test accuracy", "test_accuracy", "{:.4f}"),
    ("fit time (s)", "fit_time_s", "{:.0f}"),
    ("fit CPU time (s)", "fit_cpu_time_s", "{:.0f}"),
    ("epochs run (best)", "epochs", "{}"),
    ("parameters (M)", "params_m", "{:.2f}"),
    ("inference img/s", "inference_images_per_s", "{:.1f}"),
    ("weights", "weights", "{}"),
]


def run_compare(project: Project) -> dict[str, Any]:
    """Side-by-side table of every model in params, as JSON and Markdown."""
    rows = []
    for model_name in project.params.models:
        trained = read_json(project.train_metrics(model_name))
        evaluated = read_json(project.eval_metrics(model_name))
        cv_mean, cv_sd = trained.get("cv_f1_macro_mean"), trained.get("cv_f1_macro_sd")
        row = {
            "model": model_name,
            "test_f1_macro": round(evaluated["test"]["f1_macro"], 4),
            "val_f1_macro": round(evaluated["val"]["f1_macro"], 6),
            CV_METRIC: cv_mean,
            "cv_f1_macro_sd": cv_sd,
            "val_f1_macro_interval": _pair(evaluated["val"].get("f1_macro_interval")),
            "test_f1_macro_interval": _pair(evaluated["test"].get("f1_macro_interval")),
            "test_accuracy": round(evaluated["test"]["accuracy"], 4),
            "fit_time_s": round(trained["fit_time_s"], 1),
            "fit_cpu_time_s": round(trained["fit_cpu_time_s"], 1),
            "epochs_run": trained["epochs_run"],
            "best_epoch": trained["best_epoch"],
            "epochs": f"{trained['epochs_run']} ({trained['best_epoch']})",
            "n_params": trained["n_params"],
            "params_m": round(trained["n_params"] / 1e6, 2),
            "inference_images_per_s": evaluated["inference_images_per_s"],
            "weights_used": trained["weights_used"],
            "weights": weights_label(trained),
        }
        row.update(selection_f1_macro=round(selection_score(row), 6), selection=_selection_text(row),
                   cv_text="—" if cv_mean is None else f"{cv_mean:.4f} ± {cv_sd or 0:.4f}",
                   val_text=_with_interval(row["val_f1_macro"], row["val_f1_macro_interval"]),
                   test_text=_with_interval(row["test_f1_macro"], row["test_f1_macro_interval"]))
        rows.append(row)
    selected = select_candidate(rows)
    summary = {"models": rows, "selected": selected, "selected_by": f"{CV_METRIC}, else val_f1_macro",
               "selection_rule": SELECTION_RULE}
    write_json(project.path(project.params.compare.out_json), summary)
    write_json(project.summary_metrics(), summary_metrics(rows, selected))
    write_text(project.path(project.params.compare.out_md), comparison_markdown(rows, selected))
    print(comparison_markdown(rows, selected))
    return summary


def _pair(interval: dict[str, Any] | None) -> list[float] | None:
    return None if not interval else [round(interval["low"], 4), round(interval["high"], 4)]


def _with_interval(value: float, interval: list[float] | None) -> str:
    return f"{value:.4f}" if interval is None else f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"


def _selection_text(row: dict[str, Any]) -> str:
    return "CV (train+val)" if selected_on(row) == "cv" else "val split"


def summary_metrics(rows: list[dict[str, Any]], selected: str) -> dict[str, Any]:
    """What ``dvc exp show`` shows per experiment: the selected model, then per model the figures that answer
    "which settings gave what" (one column each), never a per-class figure."""
    return {"selected": selected,
            **{row["model"]: {key: round(row[key], digits) for key, digits in SUMMARY_METRICS.items()}
               for row in rows}}


def comparison_markdown(rows: list[dict[str, Any]], best_model: str) -> str:
    header = "| model | " + " | ".join(title for title, _, _ in COMPARISON_COLUMNS) + " |"
    lines = [header, "|---|" + "---:|" * len(COMPARISON_COLUMNS)]
    for row in rows:
        cells = [fmt.format(row[key]) for _, key, fmt in COMPARISON_COLUMNS]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    lines += ["", f"Selected for promotion: **{best_model}** ({SELECTION_RULE}).", ""]
    return "\n".join(lines)
