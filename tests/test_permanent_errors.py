"""Permanent failures exit 2 with one line (and are never retried by the flow); transient ones exit 75."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_params

from catalog_classifier.cli import main
from catalog_classifier.modeling.models import ModelError, create_classifier, load_classifier, save_classifier

MODEL = "resnet10t"


@pytest.fixture()
def restore_sigterm() -> Iterator[None]:
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def _trained_project(root: Path) -> tuple[Path, Path]:
    """A tiny project holding one saved resnet10t (random weights): what evaluate and explain load."""
    params = tiny_params()
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    torch.manual_seed(0)
    model, _ = create_classifier(MODEL, len(params["data"]["classes"]), image_size=32)
    weights = root / params["train"]["out_dir"] / MODEL / "model.pt"
    save_classifier(model, MODEL, params["data"]["classes"], weights)
    return params_file, weights


def _edit_config(weights: Path, **changes: object) -> None:
    config_path = weights.with_name("model_config.json")
    config = json.loads(config_path.read_text())
    config.update(changes)
    config_path.write_text(json.dumps(config))


def test_unknown_model_name_is_a_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 restore_sigterm: None) -> None:
    params_file, weights = _trained_project(tmp_path)
    _edit_config(weights, model_name="resnet_nope")  # e.g. saved under a timm version that had it
    assert main(["evaluate", "--model", MODEL, "--params", str(params_file)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"catalog-classifier evaluate: error: {weights.with_name('model_config.json')}: 'resnet_nope' "
                     "is not a timm model name (not in timm.list_models())"]
    with pytest.raises(ModelError, match="'resnet_nope' is not a timm model name"):
        create_classifier("resnet_nope", 3)


def test_weights_of_another_shape_are_a_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        restore_sigterm: None) -> None:
    params_file, weights = _trained_project(tmp_path)
    _edit_config(weights, classes=["a", "b"])  # the saved head has one row per class of params: 8, not 2
    assert main(["evaluate", "--model", MODEL, "--params", str(params_file)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"catalog-classifier evaluate: error: {weights}: the weights do not fit {MODEL} with 2 classes "
        "(size mismatch for backbone.fc.weight"), lines
    with pytest.raises(ModelError, match="do not fit"):
        load_classifier(weights)
