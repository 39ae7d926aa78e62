"""Bad parameters are rejected when params.yaml is loaded, before any work, with the offending key named."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from badinput_support import run_cli, write_params
from conftest import tiny_params

from catalog_classifier.cli import main
from catalog_classifier.config.layout import Project
from catalog_classifier.config.params import ParamsError, load_params


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(params: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[leaf] = value
    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(params: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = params
        for part in parents:
            node = node[part]
        del node[leaf]
    return mutate


# name -> (change to the tiny params, the exact line the error must contain: "<key>: <problem>")
CASES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "unknown_top_level_key": (_set("trian", {"max_epochs": 3}), "  trian: unknown key"),
    "unknown_train_key": (_set("train.epochs", 3), "  train.epochs: unknown key"),
    "unknown_fraction_key": (_set("split.fractions.holdout", 0.1), "  split.fractions.holdout: unknown key"),
    "negative_epochs": (_set("train.max_epochs", -3), "  train.max_epochs: Input should be greater than 0"),
    "zero_epochs": (_set("train.max_epochs", 0), "  train.max_epochs: Input should be greater than 0"),
    "fractional_epochs": (_set("train.max_epochs", 2.5), "  train.max_epochs: Input should be a valid integer"),
    "negative_lr": (_set("train.lr", -0.01), "  train.lr: Input should be greater than 0"),
    "unknown_model": (_set("models", ["resnet10t", "resnet_nope"]),
                      "  models: Value error, unknown timm model name(s): resnet_nope"),
    "duplicate_model": (_set("models", ["resnet10t", "resnet10t"]),
                        "  models: Value error, model names must be unique"),
    "no_models": (_set("models", []), "  models: List should have at least 1 item"),
    "unknown_optimizer": (_set("train.optimizer", "adam"), "  train.optimizer: Input should be 'adamw' or 'sgd'"),
    "unknown_weights": (_set("train.weights", "imagenet21k"), "  train.weights: Input should be 'imagenet' or 'none'"),
    "fractions_over_one": (_set("split.fractions", {"train": 0.7, "val": 0.2, "test": 0.15}),
                           "  split.fractions: Value error, train + val + test must sum to 1, got 1.050000"),
    "fractions_under_one": (_set("split.fractions", {"train": "1/2", "val": "1/6", "test": "1/6"}),
                            "  split.fractions: Value error, train + val + test must sum to 1, got 0.833333"),
    "negative_fraction": (_set("split.fractions", {"train": 1.2, "val": 0.0, "test": -0.2}),
                          "  split.fractions: Value error, train must be between 0 and 1, got 1.2"),
    "fraction_not_a_number": (_set("split.fractions.val", "1/0"),
                              "  split.fractions.val: Value error, '1/0' is not a number or a fraction a/b"),
    "missing_key": (_drop("train.lr"), "  train.lr: Field required"),
    "missing_section": (_drop("evaluate"), "  evaluate: Field required"),
    "duplicate_classes": (_set("data.classes", ["Watches", "Watches"]),
                          "  data.classes: Value error, class names must be unique"),
    "section_not_a_mapping": (_set("train", 5), "  train: Input should be a valid dictionary"),
    # Weights files are dependencies of the train stages (dvc.yaml: train.weights_dir), so they must live there.
    "weights_file_outside_weights_dir": (_set("train.weights_files", {"resnet10t": "/abs/r.pth"}),
                                         "  train: Value error, weights_files.resnet10t: /abs/r.pth must be a "
                                         "relative path under train.weights_dir (weights/)"),
    "weights_file_escaping_weights_dir": (_set("train.weights_files", {"resnet10t": "weights/../r.pth"}),
                                          "  train: Value error, weights_files.resnet10t: weights/../r.pth must be"),
    "weights_file_for_no_model": (_set("train.weights_files", {"resnet18": "weights/r18.pth"}),
                                  "  (top level): Value error, train.weights_files names resnet18, which is not in "
                                  "models (resnet10t, mobilevitv2_050) nor in any tune family"),
    "pretrained_recipe_unknown_key": (_set("train.pretrained.epochs", 3), "  train.pretrained.epochs: unknown key"),
    # The pretrained recipe is validated merged into train.*: frozen (recipe) + augment (train) is refused.
    "pretrained_recipe_freezes_an_augmented_fit": (
        lambda params: params["train"].update(augment=True, pretrained={"freeze_backbone": True}),
        "  train: Value error, train.pretrained (merged into train.*): train.augment applies to images only"),
}


@pytest.fixture()
def params_file(tmp_path: Path) -> Path:
    return write_params(tmp_path / "params.yaml", tiny_params())


@pytest.fixture()
def restore_sigterm() -> Iterator[None]:
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def test_the_tiny_params_are_valid(params_file: Path) -> None:
    params = load_params(params_file)
    assert params.split.fractions.val == pytest.approx(1 / 6)
    assert params.models == ["resnet10t", "mobilevitv2_050"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_params_are_rejected_at_load_time_naming_the_key(tmp_path: Path, case: str) -> None:
    mutate, line = CASES[case]
    params = tiny_params()
    mutate(params)
    path = write_params(tmp_path / "params.yaml", params)
    with pytest.raises(ParamsError) as raised:
        Project.load(path)
    message = str(raised.value)
    assert message.startswith(f"invalid parameters in {path}:")
    assert any(row.startswith(line) for row in message.splitlines()), message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    params = tiny_params()
    params["train"].update(max_epochs=-1, epochs=3)
    params["models"] = ["nope_net"]
    path = write_params(tmp_path / "params.yaml", params)
    with pytest.raises(ParamsError) as raised:
        load_params(path)
    keys = [row.split(":")[0].strip() for row in str(raised.value).splitlines()[1:]]
    assert sorted(keys) == ["models", "train.epochs", "train.max_epochs"]


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        ({"train.max_epochs": "-1"}, "  train.max_epochs: Input should be greater than 0"),
        ({"train.nope": "1"}, "  train.nope: unknown key"),
        ({"split.fractions.train": "0.9"}, "  split.fractions: Value error, train + val + test must sum to 1"),
        ({"models": "[resnet10t, nope_net]"}, "  models: Value error, unknown timm model name(s): nope_net"),
    ],
)
def test_overrides_are_validated_like_the_file(params_file: Path, overrides: dict[str, str], line: str) -> None:
    with pytest.raises(ParamsError) as raised:
        load_params(params_file, overrides)
    assert any(row.startswith(line) for row in str(raised.value).splitlines()), str(raised.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nope.x": "1"}, "override nope.x: 'nope' is not a section of params.yaml"),
        ({"train.lr.x": "1"}, "override train.lr.x: 'lr' is not a section of params.yaml"),
        ({"train.lr": "[0.1"}, "override train.lr: value '[0.1' is not valid YAML"),
    ],
)
def test_bad_override_keys_and_values_are_named(params_file: Path, overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_params(params_file, overrides)


def test_unreadable_params_files_are_params_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: 0.1\n   max_epochs: 2\n", encoding="utf-8")
    with pytest.raises(ParamsError, match=r"broken\.yaml is not valid YAML at line 3, column \d+"):
        load_params(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- train\n- split\n", encoding="utf-8")
    with pytest.raises(ParamsError, match="must contain a mapping of sections"):
        load_params(listing)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("data:\n  classes: [Caf\u00e9, Bar]\n".encode("latin-1"))
    with pytest.raises(ParamsError, match="is not UTF-8"):
        load_params(latin1)
    with pytest.raises(ParamsError, match="parameters file not found"):
        load_params(tmp_path / "absent.yaml")


def test_cli_rejects_bad_params_before_any_work(
    params_file: Path, capsys: pytest.CaptureFixture[str], restore_sigterm: None
) -> None:
    root = params_file.parent
    assert main(["train", "--model", "resnet10t", "--params", str(params_file), "--set", "train.max_epochs=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"catalog-classifier train: error: invalid parameters in {params_file}:")
    assert "  train.max_epochs: Input should be greater than 0" in err.splitlines()
    assert main(["train", "--model", "resnet_nope", "--params", str(params_file)]) == 2
    assert "--model 'resnet_nope' is not one of the models in params.yaml (resnet10t, mobilevitv2_050)" in (
        capsys.readouterr().err)
    assert main(["evaluate", "--model", "resnet50", "--params", str(params_file)]) == 2
    assert "--model 'resnet50' is not one of the models" in capsys.readouterr().err
    assert sorted(path.name for path in root.iterdir()) == ["params.yaml"]  # no mlruns, no artifacts


def test_set_without_equals_is_a_usage_error(params_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["split", "--params", str(params_file), "--set", "train.max_epochs"])
    assert exited.value.code == 2
    assert "expected KEY=VALUE, e.g. train.max_epochs=2; got 'train.max_epochs'" in capsys.readouterr().err


def test_command_line_negative_epochs_exit_2_without_traceback(params_file: Path) -> None:
    root = params_file.parent
    result = run_cli(["train", "--model", "resnet10t", "--set", "train.max_epochs=-1"], cwd=root)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "  train.max_epochs: Input should be greater than 0" in result.stderr.splitlines()
    assert sorted(path.name for path in root.iterdir()) == ["params.yaml"]
