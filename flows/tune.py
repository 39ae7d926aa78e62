"""Prefect flow ``tune``: bring the split up to date through DVC, then one Optuna study per model family.

Run it with ``python flows/tune.py [--family F] [--n-trials N] [--timeout S] [--workers W]``. Without
``PREFECT_API_URL`` a temporary Prefect server starts first; on a busy machine give it time with
``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120`` (the default, 20 s, can run out).
Each family is one task; a retried task resumes its study from Optuna's database, so finished trials are never
paid for twice. ``--workers W`` runs W local worker processes per study (``catalog-classifier tune --workers``);
workers on other machines join the same study by running the command there against the same ``tune.storage``.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task


@task(name="split")
def ensure_split(project_root: str) -> None:
    """Tuning needs train/val manifests; DVC reruns the split only when its inputs changed (and records it)."""
    subprocess.run([sys.executable, "-m", "dvc", "repro", "split"], cwd=project_root, check=True)


@task(name="tune-family", task_run_name="tune-{family}", retries=1, retry_delay_seconds=30)
def tune_family(params_file: str, family: str, n_trials: int | None, timeout_s: float | None,
                workers: int = 1) -> dict[str, Any]:
    """One family's study, run or continued until it holds ``n_trials`` finished trials (from every worker)."""
    from catalog_classifier.config.layout import Project
    from catalog_classifier.stages.tune import run_tune, run_tune_workers

    project = Project.load(params_file)
    if workers == 1:
        summary = run_tune(project, family, n_trials=n_trials, timeout_s=timeout_s)
    else:
        summary, codes = run_tune_workers(project, family, workers, n_trials, timeout_s, ["--params", params_file])
        if any(codes):  # the study keeps what they finished: a retry of this task resumes it
            raise RuntimeError(f"{family}: workers exited with {codes}")
    best = summary["best"]
    get_run_logger().info("%s: trials %s; best %s", family, summary["states"],
                          "none" if best is None else f"val macro-F1 {best['val_f1_macro']:.4f}: {best['dvc_exp_run']}")
    return summary


@flow(name="tune", flow_run_name="tune-{params_file}")
def tune(params_file: str = "params.yaml", families: list[str] | None = None, n_trials: int | None = None,
         timeout_s: float | None = None, workers: int = 1) -> dict[str, dict[str, Any]]:
    """Every family of ``tune.families`` (or those given), one after the other: they share the CPU."""
    from catalog_classifier.config.layout import Project

    project = Project.load(params_file)
    ensure_split(str(project.root))
    return {family: tune_family(str(Path(params_file).resolve()), family, n_trials, timeout_s, workers)
            for family in families or list(project.params.tune.families)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--family", action="append")
    parser.add_argument("--n-trials", type=int)
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--workers", type=int, default=1, help="local worker processes per study")
    args = parser.parse_args()
    # Prefect formats its own loggers only; the package's epoch lines get a plain handler of their own.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    package_log = logging.getLogger("catalog_classifier")
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    package_log.propagate = False
    tune(params_file=args.params, families=args.family, n_trials=args.n_trials, timeout_s=args.timeout,
         workers=args.workers)
