"""Bench: speed of the project's training and inference against a naive loop and the machine's peak.

Not a DVC stage on purpose: timings describe a machine at a moment, they are not reproducible outputs, and a
cached result would be worse than none. ``make bench`` runs it; the report goes to ``bench.out_dir`` and to an
MLflow run named ``bench`` in the project's experiment.
"""

from __future__ import annotations

import logging
from typing import Any

from catalog_classifier.benchmarks.results_page import markdown_tables
from catalog_classifier.benchmarks.suite import run_suite
from catalog_classifier.config.layout import Project
from catalog_classifier.ops.io import write_json, write_text
from catalog_classifier.registry.tracking import data_version, flatten, git_tags, metric_key, setup_mlflow

log = logging.getLogger(__name__)

# --quick: every figure, computed on a few images and steps; for a smoke run, not for reading speed.
QUICK_OVERRIDES: dict[str, Any] = {
    "bench.n_images": 16,
    "bench.batch_size": 8,
    "bench.warmup_steps": 1,
    "bench.measure_steps": 1,
    "bench.inference_batch_sizes": [8],
    "bench.latency_warmup": 1,
    "bench.latency_repeats": 5,
    "bench.matmul_size": 1024,
    "bench.matmul_repeats": 2,
    "bench.compile": False,
    "bench.frozen_max_images": 24,
    "bench.predict_images": 16,
}


def numeric_leaves(prefix: str, tree: Any) -> dict[str, float]:
    """Every number (and boolean, as 0/1) of a nested report, keyed by its path, for mlflow.log_metrics."""
    if isinstance(tree, dict):
        flat: dict[str, float] = {}
        for key, value in tree.items():
            flat.update(numeric_leaves(f"{prefix}/{key}" if prefix else str(key), value))
        return flat
    if isinstance(tree, bool | int | float):
        return {metric_key(prefix): float(tree)}
    return {}


def run_bench(project: Project, quick: bool = False) -> dict[str, Any]:
    """Measure every default model side by side; write JSON + Markdown and log them to MLflow."""
    import mlflow

    params, bench = project.params, project.params.bench
    experiment_id = setup_mlflow(params.mlflow, project.root)  # fail fast before minutes of measuring
    # Before bench.json is rewritten: a committed bench.json is no DVC output, so rewriting it would dirty the tree.
    provenance = {**git_tags(project.root), "data_version": data_version(project.root)}
    report = run_suite(project, quick)
    out_dir = project.path(bench.out_dir) / ("quick" if quick else "")
    table = markdown_tables(report)
    write_json(out_dir / "bench.json", report)
    write_text(out_dir / "bench.md", table)
    tags = {"stage": "bench", "bench_mode": "quick" if quick else "full", **provenance,
            "cpu": report["machine"]["cpu"],
            "threads": str(report["machine"]["threads"]), "bf16": str(report["machine"]["bf16"])}
    with mlflow.start_run(experiment_id=experiment_id, run_name="bench", tags=tags) as run:
        mlflow.log_params({**flatten("bench", bench.model_dump(mode="json")), "quick": quick,
                           "batch_size": report["settings"]["batch_size"],
                           "models": ",".join(report["settings"]["models"])})
        mlflow.log_metrics({**numeric_leaves("peak", report["peak"]),
                            **numeric_leaves("", report["models"])})
        for name in ("bench.json", "bench.md"):
            mlflow.log_artifact(str(out_dir / name), artifact_path="bench")
        report_run_id = run.info.run_id
    log.info("bench: %.0fs; %s (MLflow run %s)", report["wall_s"], out_dir / "bench.json", report_run_id)
    print(table)
    return report
