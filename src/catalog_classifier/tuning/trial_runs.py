"""Tuning seen in MLflow: one parent run per study (resumed with the study), a nested run per trial, and the runs
of trials a killed process left behind closed as KILLED. Optuna's storage is the record; these runs are the view.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna

from catalog_classifier.config.layout import Project
from catalog_classifier.registry.tracking import data_version, flatten, git_tags
from catalog_classifier.tuning.study import RUN_ATTR, stale_run_ids

log = logging.getLogger(__name__)

STATE_TAG = "optuna.state"
PARENT_ATTR = "mlflow_parent_run_id"


class MlflowTrialTracker:
    """Each trial as a run nested under the study's parent run: sampled params, per-epoch metrics, final state."""

    def __init__(self, experiment_id: str, parent_run_id: str, study: str, family: str,
                 fixed_params: dict[str, Any]) -> None:
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.study = study
        self.family = family
        self.fixed_params = fixed_params

    def start(self, trial: optuna.Trial, sampled: dict[str, Any]) -> None:
        import mlflow

        run = mlflow.start_run(
            experiment_id=self.experiment_id, run_name=f"{self.study}-trial-{trial.number:03d}", nested=True,
            parent_run_id=self.parent_run_id,
            tags={"optuna.study_name": self.study, "optuna.trial_number": str(trial.number),
                  "family": self.family, "model": sampled["model"], "stage": "tune", STATE_TAG: "RUNNING"},
        )
        trial.set_user_attr(RUN_ATTR, run.info.run_id)
        mlflow.log_params({**sampled, **self.fixed_params})

    def annotate(self, tags: dict[str, str]) -> None:
        import mlflow

        mlflow.set_tags(tags)

    def epoch(self, epoch: int, row: dict[str, float]) -> None:
        import mlflow

        mlflow.log_metrics({"train/loss": row["train_loss"], "train/f1_macro": row["train_f1_macro"],
                            "val/loss": row["val_loss"], "val/f1_macro": row["val_f1_macro"]}, step=epoch)

    def finish(self, state: str, value: float | None, error: BaseException | None) -> None:
        import mlflow

        mlflow.set_tag(STATE_TAG, state)
        if value is not None:
            mlflow.log_metric("objective/val_f1_macro", value)
        if error is not None:
            mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:500])
        if state in ("COMPLETE", "PRUNED"):
            status = "FINISHED"
        else:
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        mlflow.end_run(status)


def close_stale_runs(study: optuna.Study) -> int:
    """Nested runs of trials a killed process left behind: FAIL in Optuna, so KILLED in MLflow too."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client, closed = MlflowClient(), 0
    for run_id in stale_run_ids(study):
        try:
            if client.get_run(run_id).info.status != "RUNNING":
                continue
        except MlflowException:
            continue
        client.set_tag(run_id, STATE_TAG, "FAIL")
        client.set_terminated(run_id, "KILLED")
        closed += 1
    return closed


def _existing_run(run_id: str | None) -> bool:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not run_id:
        return False
    try:
        return MlflowClient().get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


@contextmanager
def parent_run(project: Project, study: optuna.Study, experiment_id: str, family: str,
               models: list[str]) -> Iterator[str]:
    """The study's one parent run: created with the study, resumed (same run id) when the study is resumed."""
    import mlflow

    run_id = study.user_attrs.get(PARENT_ATTR)
    if _existing_run(run_id):
        mlflow.start_run(run_id=run_id)
        log.info("resuming MLflow parent run %s of study %s", run_id, study.study_name)
    else:
        tune_params = project.params.tune
        run = mlflow.start_run(experiment_id=experiment_id, run_name=study.study_name, tags={
            "optuna.study_name": study.study_name, "optuna.storage": str(project.tune_storage()),
            "family": family, "stage": "tune", **git_tags(project.root),
            "data_version": data_version(project.root)})
        run_id = run.info.run_id
        study.set_user_attr(PARENT_ATTR, run_id)
        mlflow.log_params({**flatten("space", tune_params.space.model_dump(mode="json")),
                           "candidates": ",".join(models), "max_epochs": tune_params.max_epochs,
                           "pruner": tune_params.pruner.type, "seed": tune_params.seed,
                           "image_size": project.params.train.image_size, "weights": project.params.train.weights})
    try:
        yield run_id
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")
