"""Compare stage: the models side by side, and the candidate for promotion, chosen on validation macro-F1.

It also writes the pipeline's one DVC metrics file (``compare.out_summary``), so ``dvc exp show`` answers "which
settings gave what" in a few columns; every stage's detailed JSON stays a plain (uncached, committed) output.
"""

from __future__ import annotations

from typing import Any

from catalog_classifier.config.layout import Project
from catalog_classifier.ops.io import read_json, write_json, write_text
from catalog_classifier.registry.selection import SELECTION_METRIC, SELECTION_RULE, select_candidate, weights_label

# Per model in the DVC metrics file (summary_metrics), with the digits shown: validation macro-F1 (selects), test
# macro-F1 (reports), fit time in seconds.
SUMMARY_METRICS = {"val_f1_macro": 4, "test_f1_macro": 4, "fit_time_s": 1}

COMPARISON_COLUMNS = [
    ("val macro-F1 (selects)", "val_f1_macro", "{:.4f}"),
    ("test macro-F1 (reported)", "test_f1_macro", "{:.4f}"),
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
        rows.append({
            "model": model_name,
            "test_f1_macro": round(evaluated["test"]["f1_macro"], 4),
            "val_f1_macro": round(evaluated["val"]["f1_macro"], 6),
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
        })
    selected = select_candidate(rows)
    summary = {"models": rows, "selected": selected, "selected_by": SELECTION_METRIC,
               "selection_rule": SELECTION_RULE}
    write_json(project.path(project.params.compare.out_json), summary)
    write_json(project.summary_metrics(), summary_metrics(rows, selected))
    write_text(project.path(project.params.compare.out_md), comparison_markdown(rows, selected))
    print(comparison_markdown(rows, selected))
    return summary


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
