"""Tuning: a tiny Optuna study that prunes, is SIGKILLed mid-trial, resumes without duplicates, and lands in MLflow.

The images are synthetic solid colours (plus noise) rather than real photographs: a model trained for one epoch
separates them while a frozen backbone at lr 1e-5 cannot, so "a weak trial is pruned" holds by construction
instead of by luck on seven validation photos.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pytest
import yaml
from conftest import REPO, commit_project, run, tiny_params
from PIL import Image

FAMILY = "tiny"
N_TRIALS = 4
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}
WEAK_POINT = {"lr": 1e-5, "weight_decay": 1e-4, "batch_size": 16, "label_smoothing": 0.0, "augment": False,
              "freeze_backbone": True}
# Runs the real CLI, but SIGKILLs its own process after epoch 1 of the third trial: a hard kill mid-trial,
# at a point that does not depend on timing. Trials 0 and 1 (baseline, weak point) have finished by then.
KILL_SCRIPT = """
import os, signal, sys
import catalog_classifier.tuning.objective as tune

real_fit, calls = tune.fit_model, []

def fit(*args, on_epoch, **kwargs):
    calls.append(1)

    def hook(epoch, row):
        if len(calls) == 3 and epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        on_epoch(epoch, row)

    return real_fit(*args, on_epoch=hook, **kwargs)

tune.fit_model = fit
from catalog_classifier.cli import main
sys.exit(main(["tune", "--family", "tiny"]))
"""

STUB_DVC_YAML = """
stages:
  train:
    foreach: ${models}
    do:
      cmd: python record.py ${item}
      params:
        - train
      outs:
        - seen_${item}.yaml
"""
STUB_RECORD = """
import sys, yaml
params = yaml.safe_load(open("params.yaml"))
yaml.safe_dump({"models": params["models"], "train": params["train"]}, open(f"seen_{sys.argv[1]}.yaml", "w"))
"""


def tune_params() -> dict[str, Any]:
    params = tiny_params(num_threads=1)  # one thread: tiny tensors gain nothing from two, and a loaded box loses
    params["data"].update(catalogue="data/catalogue.csv", classes=list(COLOURS))
    params["models"] = ["resnet10t"]
    params["tune"].update(
        n_trials=N_TRIALS, max_epochs=2, heartbeat_s=1, families={FAMILY: ["resnet10t"]},
        pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        space={"lr": {"low": 1e-5, "high": 1e-2, "log": True}, "weight_decay": {"low": 1e-4, "high": 0.1, "log": True},
               "batch_size": [8, 16], "label_smoothing": {"low": 0.0, "high": 0.1}, "augment": [True, False],
               "freeze_backbone": [True, False]},
        baseline=True, enqueue=[WEAK_POINT],
    )
    return params


def make_colour_project(root: Path, per_class: int = 12) -> Path:
    """A git + DVC project (real dvc.yaml and code) whose catalogue is noisy solid-colour images, 3 classes."""
    (root / "data" / "Images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for label, rgb in COLOURS.items():
        for index in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.integers(-40, 41, size=(40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "data" / "Images" / f"{label}_{index:02d}.png")
            rows.append(f"{label}_{index:02d}.png,{label}")
    (root / "data" / "catalogue.csv").write_text("image,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return commit_project(root, tune_params(), ["/mlruns", "/data", "/artifacts"], "colour project")


def subprocess_env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def load_study(root: Path) -> optuna.Study:
    return optuna.load_study(study_name=f"catalog-tune-{FAMILY}",
                             storage=f"sqlite:///{root}/artifacts/tune/optuna.db")


def summary_workers(root: Path) -> list[dict[str, Any]]:
    summary = json.loads((root / "artifacts/tune/tiny/summary.json").read_text())
    return [summary["workers"][index] for index in sorted(summary["workers"])]


def tuning_runs(root: Path) -> list[mlflow.entities.Run]:
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlruns/mlflow.db")
    return mlflow.search_runs(experiment_names=["catalog-classifier-tuning"], output_format="list")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Split, tune until SIGKILLed in trial 2, record that state, then resume with the plain CLI."""
    from catalog_classifier.config.layout import Project
    from catalog_classifier.stages.split import run_split

    root = make_colour_project(tmp_path_factory.mktemp("tune") / "project")
    run_split(Project.load(root / "params.yaml"))
    # Tuning must never read the test split: without the file, any attempt would fail the run.
    (root / "artifacts" / "splits" / "test.csv").unlink()

    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT], cwd=root, env=subprocess_env(),
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    study = load_study(root)
    at_kill = {
        "states": [trial.state.name for trial in study.trials],
        "runs": {run_.data.tags.get("optuna.trial_number", "parent"): run_.info.status
                 for run_ in tuning_runs(root)},
        "parent": study.user_attrs["mlflow_parent_run_id"],
    }
    time.sleep(2.5)  # past the heartbeat grace period (2 x tune.heartbeat_s): the killed trial is now stale
    resumed = run(["catalog-classifier", "tune", "--family", FAMILY], root, env=subprocess_env())
    return {"root": root, "at_kill": at_kill, "log": resumed.stderr}


@pytest.mark.slow
def test_kill_left_a_running_trial_after_a_complete_and_a_pruned_one(tuned: dict[str, Any]) -> None:
    at_kill = tuned["at_kill"]
    assert at_kill["states"] == ["COMPLETE", "PRUNED", "RUNNING"]
    assert at_kill["runs"] == {"parent": "RUNNING", "0": "FINISHED", "1": "FINISHED", "2": "RUNNING"}


@pytest.mark.slow
def test_resume_finishes_the_remaining_trials_without_duplicates(tuned: dict[str, Any]) -> None:
    study = load_study(tuned["root"])
    states = [trial.state.name for trial in study.trials]
    # Trials 0 and 1 kept, the killed trial 2 failed (not counted), queued again as trial 3 (tune.stale_retries),
    # and 4 makes up the four.
    assert states[:3] == ["COMPLETE", "PRUNED", "FAIL"]
    assert len(states) == N_TRIALS + 1 and set(states[3:]) <= {"COMPLETE", "PRUNED"}
    retry = study.trials[3]
    assert retry.system_attrs["failed_trial"] == 2 and retry.params == study.trials[2].params
    assert study.trials[0].params == {"model": "resnet10t", "lr": 0.003, "weight_decay": 0.05, "batch_size": 8,
                                      "label_smoothing": 0.0, "augment": False, "freeze_backbone": False}
    # the weak point is frozen: augment is not a parameter of a frozen trial (it trains without)
    assert study.trials[1].params == {"model": "resnet10t", **{k: v for k, v in WEAK_POINT.items() if k != "augment"}}
    # A resumed sampler must not replay the first process's draws (the retry repeats trial 2 on purpose).
    drawn = [tuple(sorted(trial.params.items())) for trial in study.trials
             if trial.params and "failed_trial" not in trial.system_attrs]
    assert len(set(drawn)) == len(drawn)
    # one worker per run of the command, each with its own sampler seed
    assert [worker["sampler_seed"] for worker in summary_workers(tuned["root"])] == [42, 43]
    summary = json.loads((tuned["root"] / "artifacts/tune/tiny/summary.json").read_text())
    assert summary["trials_run_now"] == 2
    assert [trial.user_attrs["worker"] for trial in study.trials] == [0, 0, 0, 1, 1]
    assert sum(summary["states"].values()) == N_TRIALS + 1 and summary["states"]["FAIL"] == 1


@pytest.mark.slow
def test_weak_trial_was_pruned_against_the_median(tuned: dict[str, Any]) -> None:
    study = load_study(tuned["root"])
    baseline, weak = study.trials[0], study.trials[1]
    assert weak.state == optuna.trial.TrialState.PRUNED and weak.user_attrs["pruned_epoch"] == 1
    assert list(weak.intermediate_values) == [1]
    assert weak.intermediate_values[1] < baseline.intermediate_values[1]
    assert list(baseline.intermediate_values) == [1, 2]
    # The objective is the val macro-F1 of the epoch the pipeline would keep (best validation loss).
    assert baseline.value == baseline.intermediate_values[baseline.user_attrs["best_epoch"]]


@pytest.mark.slow
def test_mlflow_one_parent_and_a_nested_run_per_trial(tuned: dict[str, Any]) -> None:
    runs = tuning_runs(tuned["root"])
    parents = [run_ for run_ in runs if "mlflow.parentRunId" not in run_.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_id == tuned["at_kill"]["parent"]  # the resumed study reused its parent run
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.study_name"] == "catalog-tune-tiny"
    assert parent.data.tags["optuna.storage"].endswith("artifacts/tune/optuna.db")
    client = mlflow.MlflowClient()
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"optimization_history.png", "param_importances.png", "parallel_coordinate.png", "best_params.yaml",
            "trials.csv", "summary.json"} <= artifacts
    study = load_study(tuned["root"])
    nested = {int(run_.data.tags["optuna.trial_number"]): run_ for run_ in runs if run_ is not parent}
    assert sorted(nested) == [trial.number for trial in study.trials]
    for trial in study.trials:
        child = nested[trial.number]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert child.data.tags["optuna.state"] == trial.state.name
        assert child.info.status == {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "KILLED"}[trial.state.name]
        assert float(child.data.params["lr"]) == trial.params["lr"]
        steps = [point.step for point in client.get_metric_history(child.info.run_id, "val/f1_macro")]
        assert steps == sorted(trial.intermediate_values) or (trial.state.name == "FAIL" and steps == [1])
        if trial.state.name == "COMPLETE":
            assert child.data.metrics["objective/val_f1_macro"] == pytest.approx(trial.value)
    assert parent.data.metrics["best/val_f1_macro"] == pytest.approx(study.best_value)
    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        assert (tuned["root"] / f"artifacts/tune/tiny/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_best_params_yaml_applies_with_dvc_exp_run(tuned: dict[str, Any], capsys: pytest.CaptureFixture,
                                                  tmp_path: Path) -> None:
    from catalog_classifier.cli import build_parser
    from catalog_classifier.config.params import load_params
    from catalog_classifier.tuning.study import override_flags

    root = tuned["root"]
    study = load_study(root)
    best = study.best_trial
    text = (root / "artifacts/tune/tiny/best_params.yaml").read_text()
    overlay = yaml.safe_load(text)
    # a frozen trial never samples augment (it trained without); this space has no backbone_lr_ratio range (1)
    sampled = {"augment": False, "backbone_lr_ratio": 1.0, **best.params}
    expected = {key: sampled[key] for key in ("lr", "weight_decay", "batch_size", "label_smoothing", "augment",
                                              "freeze_backbone", "backbone_lr_ratio")}
    assert overlay == {"models": [best.params["model"]], "train": expected}
    args = build_parser().parse_args(["tune-overrides", "--family", FAMILY, "--params", str(root / "params.yaml")])
    assert args.handler(args) == 0
    flags = capsys.readouterr().out.split()
    assert flags == override_flags(overlay)
    assert f"dvc exp run {' '.join(flags[:2])} " in text.replace("'", "")
    # DVC applies the flags: a real `dvc exp run` in a repository with these params and a stage templated over
    # `models` like dvc.yaml's (the real stages would train; this one records the params it was run with).
    applied = tmp_path / "applied"
    applied.mkdir()
    shutil.copy(root / "params.yaml", applied / "params.yaml")
    (applied / "dvc.yaml").write_text(STUB_DVC_YAML, encoding="utf-8")
    (applied / "record.py").write_text(STUB_RECORD, encoding="utf-8")
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "stub"],
                    ["dvc", "exp", "run", *flags]):
        run(command, applied, env=subprocess_env())
    ran_with = yaml.safe_load((applied / f"seen_{best.params['model']}.yaml").read_text())
    assert ran_with == {"models": [best.params["model"]], "train": {**tune_params()["train"], **expected}}
    assert load_params(applied / "params.yaml").train.lr == best.params["lr"]  # still valid params


# --- fast checks of the pieces (no training) ------------------------------------------------------------------

def test_optuna_storage_may_not_be_mlflows_database(tmp_path: Path) -> None:
    from catalog_classifier.config.params import ParamsError
    from catalog_classifier.tuning.storage import refuse_mlflow_database, resolve_storage

    url = resolve_storage("mlruns/mlflow.db", tmp_path, {})
    with pytest.raises(ParamsError, match="tune.storage"):
        refuse_mlflow_database(url, f"sqlite:///{tmp_path}/mlruns/../mlruns/mlflow.db")
    refuse_mlflow_database(resolve_storage("tune/optuna.db", tmp_path, {}), f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    with pytest.raises(ParamsError, match="MLflow's tracking database"):
        refuse_mlflow_database("postgresql://optuna:a@db.example:5432/mlflow",
                               "postgresql+psycopg://mlflow:b@db.example/mlflow")
    refuse_mlflow_database("postgresql://optuna:a@db.example:5432/optuna", "postgresql://mlflow:b@db.example/mlflow")


def test_start_points_must_lie_in_the_space() -> None:
    from catalog_classifier.config.params import ParamsError, parse_params
    from catalog_classifier.tuning.study import initial_points

    params = parse_params(tune_params())
    points = initial_points(params.tune, params.train, ["resnet10t"])
    assert points == {"baseline": {"lr": 0.003, "weight_decay": 0.05, "batch_size": 8, "label_smoothing": 0.0,
                                   "augment": False, "freeze_backbone": False}, "enqueue[0]": WEAK_POINT}
    raw = tune_params()
    raw["train"]["batch_size"] = 32
    params = parse_params(raw)
    with pytest.raises(ParamsError, match=r"tune.baseline \(train.\*\): batch_size=32 is not one of \[8, 16\]"):
        initial_points(params.tune, params.train, ["resnet10t"])


def test_a_study_resumes_only_under_the_same_setup(tmp_path: Path) -> None:
    from catalog_classifier.config.params import ParamsError
    from catalog_classifier.tuning.shared import open_study
    from catalog_classifier.tuning.storage import StorageLock

    url = f"sqlite:///{tmp_path}/optuna.db"
    kwargs = {"seed": 1, "pruner": optuna.pruners.NopPruner(), "heartbeat_s": 5, "stale_retries": 1,
              "lock": StorageLock(url, timeout_s=10)}
    study, worker = open_study(url, "s", setup={"max_epochs": 2}, points={"baseline": {"lr": 0.1}}, **kwargs)
    assert [trial.state.name for trial in study.trials] == ["WAITING"]
    assert study.trials[0].user_attrs == {"start_point": "baseline"} and worker.index == 0 and worker.sampler_seed == 1
    again, worker = open_study(url, "s", setup={"max_epochs": 2}, points={"baseline": {"lr": 0.1}}, **kwargs)
    assert len(again.trials) == 1  # start points are queued once, when the study is created
    assert worker.index == 1 and worker.sampler_seed == 2  # every worker of a study draws its own samples
    with pytest.raises(ParamsError, match="different max_epochs"):
        open_study(url, "s", setup={"max_epochs": 3}, points={}, **kwargs)


def test_override_flags_are_read_alike_by_dvc_and_yaml() -> None:
    from catalog_classifier.tuning.study import override_flags

    flags = override_flags({"models": ["mobilevitv2_075"], "train": {"lr": 1e-05, "weight_decay": 0.0123,
                                                                      "batch_size": 16, "augment": True}})
    assert flags == ["-S", "models=[mobilevitv2_075]", "-S", "train.lr=1.0e-05", "-S", "train.weight_decay=0.0123",
                     "-S", "train.batch_size=16", "-S", "train.augment=true"]
    assert yaml.safe_load("1.0e-05") == 1e-05


def test_frozen_trials_never_sample_augmentation() -> None:
    """augment x freeze_backbone: a frozen trial trains on cached (N, D) features, where augmenting scrambles them.

    Even a space that offers only augment=true never hands a frozen trial augment=true, every sampled
    configuration passes train.* validation, and a frozen best trial still yields a complete train overlay.
    """
    from catalog_classifier.config.params import parse_params
    from catalog_classifier.tuning.study import SPACE_KEYS, best_overrides, suggest, trial_train_params

    raw = tune_params()
    raw["tune"]["space"]["augment"] = [True]
    params = parse_params(raw)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []

    def objective(trial: optuna.Trial) -> float:
        sampled = suggest(trial, params.tune.space, ["resnet10t"])
        trial_train_params(params.train, sampled, 1)  # raises on an invalid combination
        seen.append((sampled["freeze_backbone"], sampled["augment"]))
        return float(sampled["freeze_backbone"])

    study.optimize(objective, n_trials=12)
    assert {frozen for frozen, _ in seen} == {True, False}
    assert all(augment is (not frozen) for frozen, augment in seen), seen
    overlay = best_overrides(study)["train"]
    assert set(overlay) == set(SPACE_KEYS) and overlay["freeze_backbone"] is True and overlay["augment"] is False


def test_an_enqueued_frozen_point_with_augmentation_is_refused() -> None:
    from catalog_classifier.config.params import ParamsError, parse_params
    from catalog_classifier.tuning.study import initial_points

    raw = tune_params()
    raw["tune"]["enqueue"] = [{"augment": True, "freeze_backbone": True}]
    params = parse_params(raw)
    with pytest.raises(ParamsError, match=r"tune.enqueue\[0\]: train.augment applies to images only"):
        initial_points(params.tune, params.train, ["resnet10t"])


def test_backbone_lr_ratio_is_sampled_only_where_the_backbone_learns_and_pretrained_overlays_the_recipe() -> None:
    from catalog_classifier.config.params import parse_params
    from catalog_classifier.tuning.study import best_overrides, suggest, trial_train_params

    raw = tune_params()
    raw["tune"]["space"]["backbone_lr_ratio"] = {"low": 0.01, "high": 0.5, "log": True}
    params = parse_params(raw)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    seen = []

    def objective(trial: optuna.Trial) -> float:
        sampled = suggest(trial, params.tune.space, ["resnet10t"])
        train = trial_train_params(params.train, sampled, 1)
        seen.append((sampled["freeze_backbone"], train.backbone_lr_ratio, train.max_epochs))
        trial.set_user_attr("weights_used", "imagenet")
        return float(not sampled["freeze_backbone"])

    study.optimize(objective, n_trials=12)
    frozen = [ratio for is_frozen, ratio, _ in seen if is_frozen]
    tuned = [ratio for is_frozen, ratio, _ in seen if not is_frozen]
    assert frozen and set(frozen) == {1.0}  # a frozen backbone has no lr
    assert tuned and all(0.01 <= ratio <= 0.5 for ratio in tuned)
    # frozen trials keep the pipeline's epoch budget (cheap head epochs); fine-tuning ones the trial budget
    assert {epochs for is_frozen, _, epochs in seen if is_frozen} == {params.train.max_epochs}
    assert {epochs for is_frozen, _, epochs in seen if not is_frozen} == {1}
    overlay = best_overrides(study)
    assert set(overlay["train"]) == {"pretrained"}  # an ImageNet model trains with train.pretrained on top
    assert overlay["train"]["pretrained"]["freeze_backbone"] is False
    assert overlay["train"]["pretrained"]["backbone_lr_ratio"] == study.best_trial.params["backbone_lr_ratio"]
