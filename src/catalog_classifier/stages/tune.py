"""Tune stage: one Optuna study per model family, one MLflow parent run per study and a nested run per trial.

Optuna's sqlite file (``tune.storage``) is the record a killed study resumes from; MLflow is where people look:
the parent run carries the study's figures, best params and trial table, each nested run a trial's sampled
values, per-epoch metrics and final state. The study and its resume rules are in :mod:`catalog_classifier.tuning`;
this stage writes the study's files and logs them to the parent run.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna

from catalog_classifier.config.layout import Project
from catalog_classifier.ops.io import write_csv, write_json, write_text
from catalog_classifier.tuning.runner import tune_family
from catalog_classifier.tuning.study import best_params_text, save_figures, trials_frame

log = logging.getLogger(__name__)


def run_tune(project: Project, family: str, n_trials: int | None = None,
             timeout_s: float | None = None) -> dict[str, Any]:
    """Run (or continue) the family's study up to ``n_trials`` finished trials; write and log its results."""

    def publish(study: optuna.Study, summary: dict[str, Any]) -> None:
        _write_outputs(project, family, study, summary)
        _log_parent(project, family, summary)

    return tune_family(project, family, n_trials, timeout_s, publish)


def _write_outputs(project: Project, family: str, study: optuna.Study, summary: dict[str, Any]) -> None:
    out_dir = project.tune_dir(family)
    if summary["best"] is not None:
        write_text(project.best_params(family), best_params_text(study, family))
    else:
        log.warning("study %s has no complete trial yet: no best params written", study.study_name)
    write_csv(out_dir / "trials.csv", trials_frame(study))
    save_figures(study, out_dir)
    write_json(project.tune_summary(family), summary)


def _log_parent(project: Project, family: str, summary: dict[str, Any]) -> None:
    import mlflow

    states = summary["states"]
    mlflow.log_metrics({f"trials/{state.lower()}": states.get(state, 0) for state in ("COMPLETE", "PRUNED", "FAIL")})
    if summary["best"] is not None:
        mlflow.log_metric("best/val_f1_macro", summary["best"]["val_f1_macro"])
        mlflow.set_tags({"best_trial": str(summary["best"]["trial"]), "dvc_exp_run": summary["best"]["dvc_exp_run"]})
    out_dir = project.tune_dir(family)
    for path in sorted(out_dir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            mlflow.log_artifact(str(path))
