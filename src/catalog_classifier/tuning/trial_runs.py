"""Tuning seen in MLflow: one parent run per study, shared by every worker and resumed with the study, a nested run
per trial, and the runs of trials a killed worker left behind closed as KILLED. Optuna's storage is the record;
these runs are the view.

The parent run is created once, under the storage lock (see :func:`catalog_classifier.tuning.shared.open_study`),
and its id kept in a study user attribute, so workers on other machines nest their trials under the same run.
No worker owns it: each one logs to it by id, and whoever leaves the study with no trial running closes it.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna

from catalog_classifier.config.layout import Project
from catalog_classifier.registry.tracking import data_version, flatten, git_tags
from catalog_classifier.tuning.shared import RUN_ATTR, running_trials, stale_run_ids

log = logging.getLogger(__name__)

STATE_TAG = "optuna.state"
PARENT_ATTR = "mlflow_parent_run_id"


class MlflowTrialTracker:
    """Each trial as a run nested under the study's parent run: sampled params, per-epoch metrics, final state."""

    def __init__(self, experiment_id: str, parent_run_id: str, study: str, family: str,
                 fixed_params: dict[str, Any], worker: int | None = None) -> None:
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.study = study
        self.family = family
        self.fixed_params = fixed_params
        self.worker = worker

    def start(self, trial: optuna.Trial, sampled: dict[str, Any]) -> None:
        import mlflow

        run = mlflow.start_run(
            experiment_id=self.experiment_id, run_name=f"{self.study}-trial-{trial.number:03d}", nested=True,
            parent_run_id=self.parent_run_id,
            tags={"optuna.study_name": self.study, "optuna.trial_number": str(trial.number),
                  "family": self.family, "model": sampled["model"], "stage": "tune", STATE_TAG: "RUNNING",
                  "optuna.worker": str(self.worker)},
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


def _existing_run(run_id: str | None) -> Any:
    """The run (None when missing or deleted): a parent deleted in the UI is replaced, not resumed."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return None
    return run if run.info.lifecycle_stage == "active" else None


def ensure_parent_run(project: Project, study: optuna.Study, experiment_id: str, family: str, models: list[str],
                      storage: str) -> str:
    """The study's one parent run: created with the study, reopened (same run id) by every later worker.

    Called under the storage lock, so two workers opening a new study at the same moment create one run.
    ``storage`` is the storage URL as shown to people (password masked).
    """
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient()
    run_id = study.user_attrs.get(PARENT_ATTR)
    existing = _existing_run(run_id)
    if existing is not None:
        if existing.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        log.info("MLflow parent run %s of study %s", run_id, study.study_name)
        return run_id
    tune_params = project.params.tune
    run = client.create_run(experiment_id, run_name=study.study_name, tags={
        "optuna.study_name": study.study_name, "optuna.storage": storage, "family": family, "stage": "tune",
        **git_tags(project.root), "data_version": data_version(project.root)})
    params = {**flatten("space", tune_params.space.model_dump(mode="json")), "candidates": ",".join(models),
              "max_epochs": tune_params.max_epochs, "pruner": tune_params.pruner.type, "seed": tune_params.seed,
              "image_size": project.params.train.image_size, "weights": project.params.train.weights}
    client.log_batch(run.info.run_id, params=[Param(key, str(value)) for key, value in params.items()])
    study.set_user_attr(PARENT_ATTR, run.info.run_id)
    log.info("created MLflow parent run %s for study %s", run.info.run_id, study.study_name)
    return run.info.run_id


def close_parent_run(study: optuna.Study, run_id: str, status: str) -> bool:
    """End the parent run with ``status`` unless another worker still runs a trial (the last one out closes it)."""
    from mlflow import MlflowClient

    if running_trials(study):
        return False
    MlflowClient().set_terminated(run_id, status)
    return True
