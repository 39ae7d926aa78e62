"""Hyper-parameter search with Optuna: the search space, the objective, resumable studies and their results.

A trial is the pipeline's own training (:func:`catalog_classifier.modeling.training.fit`) with a few ``train``
values sampled from ``tune.space``; it reports validation macro-F1 after every epoch so a pruner can stop weak
trials early.
Only the train and validation manifests are ever handed to this module: the test split stays unseen until the
final evaluation, or its score would be tuned on and stop being an honest estimate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import optuna
import pandas as pd
import yaml
from optuna.trial import FrozenTrial, TrialState

from catalog_classifier.config.params import (
    FROZEN_AUGMENT_MESSAGE,
    ParamsError,
    PrunerParams,
    TrainParams,
    TuneParams,
    TuneSpace,
)
from catalog_classifier.data.imageset import DataConfig, ImageSet, decode_manifest
from catalog_classifier.modeling.frozen import fit_model
from catalog_classifier.modeling.models import create_classifier
from catalog_classifier.modeling.training import FitResult, settings_from
from catalog_classifier.ops.runtime import Runtime, seed_everything
from catalog_classifier.tuning.storage import StorageLock, engine_kwargs, prepare_storage, unavailable

log = logging.getLogger(__name__)

MODEL_KEY = "model"  # the sampled timm model name: for MobileViTv2 the width (050/075/100)
SPACE_KEYS = ("lr", "weight_decay", "batch_size", "label_smoothing", "augment", "freeze_backbone",
              "backbone_lr_ratio")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts toward n_trials
SETUP_ATTR = "setup"  # study user attribute: what a resumed run must match
RUN_ATTR = "mlflow_run_id"  # trial user attribute: the trial's nested MLflow run
START_ATTR = "start_point"  # trial user attribute: the configured start point it runs (baseline, enqueue[i])
WORKER_ATTR = "worker"  # trial user attribute: index of the worker that ran it
WORKER_PREFIX = "worker."  # study user attributes worker.000, worker.001...: every worker ever registered
# train.* keys that change what a trial measures (runtime and output paths do not).
SETUP_TRAIN_KEYS = ("seed", "weights", "weights_files", "allow_random_fallback", "image_size", "patience",
                    "optimizer")


def study_name(prefix: str, family: str) -> str:
    return f"{prefix}-{family}"


def family_models(tune_params: TuneParams, family: str) -> list[str]:
    if family not in tune_params.families:
        raise ParamsError(f"tune.families: unknown family {family!r}; known: {', '.join(tune_params.families)}")
    return list(tune_params.families[family])


# --- search space ---------------------------------------------------------------------------------------------

def suggest(trial: optuna.Trial, space: TuneSpace, models: list[str]) -> dict[str, Any]:
    """Sample one configuration; names match ``train.*`` keys so the best trial maps straight onto params.

    The space is conditional: ``augment`` is sampled only for fine-tuning trials. A frozen-backbone trial trains
    its head on cached features, where augmentation has no image to act on (train.* refuses the combination).
    """
    frozen = trial.suggest_categorical("freeze_backbone", space.freeze_backbone)
    return {
        MODEL_KEY: trial.suggest_categorical(MODEL_KEY, models),
        "lr": trial.suggest_float("lr", space.lr.low, space.lr.high, log=space.lr.log),
        "weight_decay": trial.suggest_float(
            "weight_decay", space.weight_decay.low, space.weight_decay.high, log=space.weight_decay.log
        ),
        "batch_size": trial.suggest_categorical("batch_size", space.batch_size),
        "label_smoothing": trial.suggest_float(
            "label_smoothing", space.label_smoothing.low, space.label_smoothing.high, log=space.label_smoothing.log
        ),
        "augment": False if frozen else trial.suggest_categorical("augment", space.augment),
        "freeze_backbone": frozen,
        "backbone_lr_ratio": _backbone_lr_ratio(trial, space, frozen),
    }


def _backbone_lr_ratio(trial: optuna.Trial, space: TuneSpace, frozen: bool) -> float:
    """Sampled only where the backbone learns and the space has a range; else 1 (one lr for everything)."""
    ratio = space.backbone_lr_ratio
    if frozen or ratio is None:
        return 1.0
    return trial.suggest_float("backbone_lr_ratio", ratio.low, ratio.high, log=ratio.log)


def trial_train_params(train_params: TrainParams, sampled: dict[str, Any], max_epochs: int) -> TrainParams:
    """The pipeline's train params with the sampled values and the per-trial epoch budget, validated again."""
    update = {key: sampled[key] for key in SPACE_KEYS}
    # A frozen trial's epochs are a head on cached features (milliseconds each): it keeps the pipeline's budget,
    # or it would be judged half-trained against fine-tuning trials.
    epochs = train_params.max_epochs if sampled["freeze_backbone"] else max_epochs
    return TrainParams.model_validate({**train_params.model_dump(), **update, "max_epochs": epochs})


def _outside(space: TuneSpace, models: list[str], key: str, value: Any) -> str | None:
    if key == MODEL_KEY:
        return None if value in models else f"not one of {models}"
    bounds = getattr(space, key)
    if bounds is None:  # a key the space does not sample: only its neutral value
        return None if value == 1.0 else "not sampled (tune.space has no range for it)"
    if isinstance(bounds, list):
        return None if value in bounds else f"not one of {bounds}"
    return None if bounds.low <= value <= bounds.high else f"outside [{bounds.low}, {bounds.high}]"


def initial_points(tune_params: TuneParams, train_params: TrainParams,
                   models: list[str]) -> dict[str, dict[str, Any]]:
    """Configurations a new study tries first, by name: ``baseline`` (the current train.* values, the bar to beat),
    then ``enqueue[i]`` (tune.enqueue). The name is recorded on the trial, so each is queued once per study."""
    points: dict[str, dict[str, Any]] = {}
    if tune_params.baseline:
        sampled_keys = [key for key in SPACE_KEYS if getattr(tune_params.space, key) is not None]
        points["baseline"] = {key: getattr(train_params, key) for key in sampled_keys}
    for index, point in enumerate(tune_params.enqueue):
        points[f"enqueue[{index}]"] = point.model_dump(exclude_none=True)
    for name, point in points.items():
        source = "tune.baseline (train.*)" if name == "baseline" else f"tune.{name}"
        for key, value in point.items():
            problem = _outside(tune_params.space, models, key, value)
            if problem:
                raise ParamsError(f"{source}: {key}={value!r} is {problem} (tune.space); widen the space or drop it")
        if point.get("augment") and point.get("freeze_backbone"):
            raise ParamsError(f"{source}: {FROZEN_AUGMENT_MESSAGE}")
    return points


def create_pruner(pruner: PrunerParams, max_epochs: int) -> optuna.pruners.BasePruner:
    if pruner.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.n_startup_trials,
                                           n_warmup_steps=pruner.n_warmup_steps)
    if pruner.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=pruner.min_resource, max_resource=max_epochs,
                                              reduction_factor=pruner.reduction_factor)
    return optuna.pruners.NopPruner()


def manifest_digest(manifest: pd.DataFrame) -> str:
    """Which images with which labels: a resumed study must see the same split."""
    rows = manifest[["image", "label_id", "sha256"]].astype(str).agg("\t".join, axis=1)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def study_setup(tune_params: TuneParams, train_params: TrainParams, models: list[str],
                manifests: dict[str, str]) -> dict[str, Any]:
    """Everything that makes trials comparable; a study may only be resumed under the same setup."""
    train = train_params.model_dump(mode="json")
    setup = {
        "models": models,
        "space": tune_params.space.model_dump(mode="json"),
        "max_epochs": tune_params.max_epochs,
        "train": {key: train[key] for key in SETUP_TRAIN_KEYS},
        "manifests": manifests,
    }
    return json.loads(json.dumps(setup))  # the JSON round trip Optuna's storage applies, so comparisons hold


# --- studies --------------------------------------------------------------------------------------------------

@contextmanager
def _quiet_experimental() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


@dataclass(frozen=True)
class Worker:
    """One process working on a study. Its index is unique within the study, across machines and resumes (it is
    handed out under the storage lock), so ``seed + index`` gives every worker its own sampler draws."""

    index: int
    sampler_seed: int
    host: str
    pid: int


def open_study(url: str, name: str, *, seed: int, pruner: optuna.pruners.BasePruner, heartbeat_s: int,
               stale_retries: int, lock: StorageLock, setup: dict[str, Any], points: dict[str, dict[str, Any]],
               on_open: Callable[[optuna.Study], None] | None = None,
               register: bool = True) -> tuple[optuna.Study, Worker | None]:
    """Create the study or load it, to continue where earlier or concurrent workers are; register this worker.

    Everything that must happen once per study runs under the storage lock, so workers started at the same moment
    (on one machine or several) agree: Optuna's tables and the study are created once, the start points are queued
    once (each carries its name in ``START_ATTR``, and a name already queued is never queued again), ``on_open``
    (the MLflow parent run) sees the study in a settled state, and each worker gets its own index.
    Trials whose worker died stop sending heartbeats: they are marked FAIL (here, or by any worker before it claims
    a trial) and queued again with the same parameters up to ``stale_retries`` times.
    """
    with lock:
        study = _create_or_load(url, name, pruner, heartbeat_s, stale_retries)
        recorded = study.user_attrs.get(SETUP_ATTR)
        if recorded is not None and recorded != setup:
            changed = sorted(key for key in set(recorded) | set(setup) if recorded.get(key) != setup.get(key))
            raise ParamsError(
                f"tune.study_prefix: study {name!r} was run with a different {', '.join(changed)}; its trials are "
                "not comparable: set a new tune.study_prefix (or delete the study) to start afresh"
            )
        if recorded is None:
            queued = {trial.user_attrs.get(START_ATTR) for trial in study.get_trials(deepcopy=False)}
            for point_name, point in points.items():
                if point_name not in queued:  # a set-up cut short by a kill is completed, not repeated
                    study.enqueue_trial(point, user_attrs={START_ATTR: point_name})
            study.set_user_attr(SETUP_ATTR, setup)
        with _quiet_experimental():
            optuna.storages.fail_stale_trials(study)
        if on_open is not None:
            on_open(study)
        worker = _register_worker(study, seed) if register else None
    if worker is not None:
        # TPE's constant liar (on by default in Optuna 5) keeps concurrent workers away from each other's
        # running trials; distinct seeds keep their random start-up draws apart.
        study.sampler = optuna.samplers.TPESampler(seed=worker.sampler_seed)
    return study, worker


def _create_or_load(url: str, name: str, pruner: optuna.pruners.BasePruner, heartbeat_s: int,
                    stale_retries: int) -> optuna.Study:
    from sqlalchemy.exc import OperationalError

    prepare_storage(url)
    with _quiet_experimental():
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=stale_retries) if stale_retries else None
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url),
                                                 heartbeat_interval=heartbeat_s,
                                                 heartbeat_stale_trial_callback=retry)
            return optuna.create_study(storage=storage, study_name=name, direction="maximize", pruner=pruner,
                                       load_if_exists=True)
        except OperationalError as err:
            raise unavailable(url, err) from None


def _register_worker(study: optuna.Study, seed: int) -> Worker:
    index = sum(key.startswith(WORKER_PREFIX) for key in study.user_attrs)
    worker = Worker(index=index, sampler_seed=seed + index, host=socket.gethostname(), pid=os.getpid())
    study.set_user_attr(f"{WORKER_PREFIX}{index:03d}", {
        "host": worker.host, "pid": worker.pid, "sampler_seed": worker.sampler_seed,
        "started": datetime.now(UTC).isoformat(timespec="seconds")})
    log.info("worker %d of study %s (%s, pid %d): sampler seed %d", index, study.study_name, worker.host, worker.pid,
             worker.sampler_seed)
    return worker


def workers(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """Every worker registered on the study: index → host, pid, sampler seed, start time."""
    return {key[len(WORKER_PREFIX):]: value for key, value in sorted(study.user_attrs.items())
            if key.startswith(WORKER_PREFIX)}


def count_states(study: optuna.Study) -> dict[str, int]:
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


def remaining_trials(study: optuna.Study, n_trials: int) -> int:
    """Trials still to run so the study holds ``n_trials`` finished ones (failed trials do not count)."""
    return max(0, n_trials - len(study.get_trials(deepcopy=False, states=FINISHED)))


def running_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def started_trials(study: optuna.Study) -> int:
    """Trials that ever left the queue (running or ended)."""
    return sum(trial.state != TrialState.WAITING for trial in study.get_trials(deepcopy=False))


def stale_run_ids(study: optuna.Study) -> list[str]:
    """MLflow runs of failed trials (for instance killed mid-epoch): the caller closes those left RUNNING."""
    return [trial.user_attrs[RUN_ATTR] for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if RUN_ATTR in trial.user_attrs]


# --- objective ------------------------------------------------------------------------------------------------

class TrialTracker(Protocol):
    """Receives a trial's life (the stage records it in MLflow); kept out of the objective so it stays testable."""

    def start(self, trial: optuna.Trial, sampled: dict[str, Any]) -> None: ...

    def annotate(self, tags: dict[str, str]) -> None: ...

    def epoch(self, epoch: int, row: dict[str, float]) -> None: ...

    def finish(self, state: str, value: float | None, error: BaseException | None) -> None: ...


class NullTracker:
    def start(self, trial: optuna.Trial, sampled: dict[str, Any]) -> None:
        pass

    def annotate(self, tags: dict[str, str]) -> None:
        pass

    def epoch(self, epoch: int, row: dict[str, float]) -> None:
        pass

    def finish(self, state: str, value: float | None, error: BaseException | None) -> None:
        pass


class ImageCache:
    """Train/val images decoded once per preprocessing (size, interpolation) and shared by every later trial."""

    def __init__(self, train_manifest: pd.DataFrame, val_manifest: pd.DataFrame, images_dir: Path) -> None:
        self._manifests = (train_manifest, val_manifest)
        self._images_dir = images_dir
        self._sets: dict[tuple[tuple[int, int], str], tuple[ImageSet, ImageSet]] = {}

    def get(self, data_config: DataConfig) -> tuple[ImageSet, ImageSet]:
        key = (tuple(data_config.input_size), data_config.interpolation)
        if key not in self._sets:
            log.info("decoding train/val images at %s (%s)", key[0], key[1])
            self._sets[key] = tuple(decode_manifest(m, self._images_dir, data_config) for m in self._manifests)
        return self._sets[key]

    def __len__(self) -> int:
        return len(self._sets)


@dataclass
class Objective:
    """One Optuna trial = one call of the pipeline's ``fit`` with sampled train values; returns val macro-F1."""

    train_params: TrainParams
    tune_params: TuneParams
    models: list[str]
    num_classes: int
    images: ImageCache
    runtime: Runtime
    tracker: TrialTracker = field(default_factory=NullTracker)
    weights_root: Path = Path(".")  # train.weights_files paths are relative to the project root
    worker: int | None = None  # recorded on each trial (WORKER_ATTR): which worker ran it

    def weights_file(self, model_name: str) -> Path | None:
        relative = self.train_params.weights_files.get(model_name)
        return None if relative is None else self.weights_root / relative

    def __call__(self, trial: optuna.Trial) -> float:
        if self.worker is not None:
            trial.set_user_attr(WORKER_ATTR, self.worker)
        sampled = suggest(trial, self.tune_params.space, self.models)
        params = trial_train_params(self.train_params, sampled, self.tune_params.max_epochs)
        self.tracker.start(trial, sampled)
        state, value, error = TrialState.FAIL.name, None, None
        try:
            value = self._train(trial, sampled[MODEL_KEY], params)
            state = TrialState.COMPLETE.name
            return value
        except optuna.TrialPruned:
            state = TrialState.PRUNED.name
            raise
        except BaseException as err:
            error = err
            raise
        finally:
            self.tracker.finish(state, value, error)

    def _train(self, trial: optuna.Trial, model_name: str, params: TrainParams) -> float:
        # Same seed for every trial (as the pipeline): differences come from the sampled values, not the draw.
        generator = seed_everything(params.seed)
        model, weights = create_classifier(
            model_name, self.num_classes, weights=params.weights,
            weights_file=self.weights_file(model_name), allow_fallback=params.allow_random_fallback,
            image_size=params.image_size,
        )
        train_images, val_images = self.images.get(model.data_config)
        trial.set_user_attr("augment_applied", params.augment)
        trial.set_user_attr("weights_used", weights.used)
        self.tracker.annotate({"weights_used": weights.used, "weights_source": weights.source,
                               "augment_applied": str(params.augment),
                               "input_size": "x".join(map(str, model.data_config.input_size))})

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            self.tracker.epoch(epoch, row)
            trial.report(row["val_f1_macro"], epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_epoch", epoch)
                raise optuna.TrialPruned(f"epoch {epoch}: val macro-F1 {row['val_f1_macro']:.4f} below the bar")

        # Frozen-backbone trials train the head on cached features, exactly as the train stage would.
        result: FitResult = fit_model(model, train_images, val_images, settings_from(params), self.runtime,
                                      generator, self.num_classes, frozen_backbone=params.freeze_backbone,
                                      on_epoch=on_epoch)
        for key, value in (("best_epoch", result.best_epoch), ("epochs_run", result.epochs_run),
                           ("fit_seconds", round(result.fit_seconds, 3))):
            trial.set_user_attr(key, value)
        # The F1 of the weights the pipeline would keep (best validation loss), not the luckiest epoch's.
        return float(result.best["val_f1_macro"])


def run_study(study: optuna.Study, objective: Objective, n_trials: int, timeout_s: float | None,
              lock: StorageLock, poll_s: float) -> int:
    """Run trials until the study holds ``n_trials`` finished ones, counted over every worker of the study.

    Returns how many this worker started. The cap is global and exact: a worker claims a slot under the storage
    lock and Optuna creates the trial (RUNNING) before the lock is let go, so two workers that both see n - 1
    finished trials cannot both start one. A worker whose slot would only be needed if another worker's running
    trial fails waits (polling every ``poll_s``) instead of leaving: that worker may have been killed, and its
    trial, once its heartbeat is stale, is marked FAIL and queued again for whoever is still here. A worker starts
    at most as many trials as were missing when it began, so a training error that fails every trial ends it.
    """
    attempts = remaining_trials(study, n_trials)
    if attempts == 0:
        log.info("study %s already holds %d finished trials", study.study_name, n_trials)
        return 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    started, waiting = 0, False
    while started < attempts and (deadline is None or time.monotonic() < deadline):
        lock.acquire()
        try:
            with _quiet_experimental():
                optuna.storages.fail_stale_trials(study)
            missing, running = remaining_trials(study, n_trials), running_trials(study)
            if missing == 0:
                break
            if running >= missing:
                if not waiting:
                    log.info("study %s: %d running trial(s) would complete it; waiting for them", study.study_name,
                             running)
                waiting = True
                lock.release()
                time.sleep(poll_s)
                continue
            waiting = False
            study.optimize(_released_first(lock, objective), n_trials=1, catch=(RuntimeError,),
                           gc_after_trial=True)
            started += 1
        finally:
            lock.release()
    return started


def _released_first(lock: StorageLock, objective: Objective) -> Callable[[optuna.Trial], float]:
    """The objective, letting go of the storage lock as soon as Optuna has created the trial it runs."""

    def run(trial: optuna.Trial) -> float:
        lock.release()
        return objective(trial)

    return run


# --- results --------------------------------------------------------------------------------------------------

def best_overrides(study: optuna.Study) -> dict[str, Any]:
    """The best complete trial as a params.yaml overlay: the model to train and its ``train`` values.

    ``train`` is shared by every model of the pipeline, so the overlay also narrows ``models`` to the tuned one:
    applying a family's values to the other family would train it with settings nobody tuned for it.
    """
    best = study.best_trial
    # A frozen trial never samples augment nor the lr ratio (see suggest): it trained without, at one lr.
    values = {"augment": False, "backbone_lr_ratio": 1.0, **best.params}
    train = {key: values[key] for key in SPACE_KEYS}
    # A pretrained model trains with train.pretrained on top of train.*: the tuned values must land there.
    if best.user_attrs.get("weights_used") == "imagenet":
        return {"models": [values[MODEL_KEY]], "train": {"pretrained": train}}
    return {"models": [values[MODEL_KEY]], "train": train}


def _hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(item) for item in value) + "]"
    if isinstance(value, float):
        # Hydra (dvc) reads 1e-05 as a float, YAML 1.1 (params.yaml, --set) only 1.0e-05: write the form both read.
        text = repr(value)
        return text.replace("e", ".0e") if "e" in text and "." not in text else text
    return str(value)


def override_flags(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"train": {"lr": 0.001}}`` → ``["-S", "train.lr=0.001"]``: arguments for ``dvc exp run``."""
    flags: list[str] = []
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flags.extend(override_flags(value, f"{name}."))
        else:
            flags.extend(["-S", f"{name}={_hydra_value(value)}"])
    return flags


def dvc_command(overrides: dict[str, Any]) -> str:
    return shlex.join(["dvc", "exp", "run", *override_flags(overrides)])


def best_params_text(study: optuna.Study, family: str) -> str:
    """YAML of the best params, headed by the exact ``dvc exp run`` command that applies them."""
    best = study.best_trial
    overrides = best_overrides(study)
    header = [
        f"# Best trial of Optuna study {study.study_name} (family {family}): trial {best.number},",
        f"# validation macro-F1 {best.value:.4f}. A params.yaml overlay; apply it as a DVC experiment with:",
        f"#   {dvc_command(overrides)}",
        f"# or: catalog-classifier tune-overrides --family {family} | xargs dvc exp run",
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(overrides, sort_keys=False)


def read_overrides(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no tuned params at {path}: run `catalog-classifier tune` for this family first")
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    return study.trials_dataframe(attrs=("number", "state", "value", "params", "duration", "user_attrs"))


def summarize(study: optuna.Study, family: str, n_trials: int) -> dict[str, Any]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = None
    if complete:
        trial: FrozenTrial = study.best_trial
        best = {"trial": trial.number, "val_f1_macro": trial.value, "params": trial.params,
                "dvc_exp_run": dvc_command(best_overrides(study))}
    return {"study": study.study_name, "family": family, "n_trials": n_trials,
            "states": {name: count for name, count in count_states(study).items() if count}, "best": best}


def save_figures(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Optimisation history, parameter importances and parallel coordinates as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    from catalog_classifier.ops.io import atomic_path

    written = []
    for name, plot in (("optimization_history", plots.plot_optimization_history),
                       ("param_importances", plots.plot_param_importances),
                       ("parallel_coordinate", plots.plot_parallel_coordinate)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental API; "too few trials" notes are logged by Optuna
            axes = plot(study)
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(9, 5.5)
        figure.tight_layout()
        path = out_dir / f"{name}.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=110)
        plt.close(figure)
        written.append(path)
    return written
