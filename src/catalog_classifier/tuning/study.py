"""Hyper-parameter search with Optuna: the search space, what makes a study's trials comparable, and its results.

A trial (:mod:`catalog_classifier.tuning.objective`) is the pipeline's own training with a few ``train`` values
sampled here from ``tune.space``. No torch in this module: a launcher of workers sets a study up without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import warnings
from pathlib import Path
from typing import Any

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
from catalog_classifier.tuning.shared import count_states

log = logging.getLogger(__name__)

MODEL_KEY = "model"  # the sampled timm model name: for MobileViTv2 the width (050/075/100)
SPACE_KEYS = ("lr", "weight_decay", "batch_size", "label_smoothing", "augment", "freeze_backbone",
              "backbone_lr_ratio")
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
