"""The typed params loader: the real file loads; bad keys and values are rejected with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO, real_params

from catalog_classifier.config.params import ParamsError, load_params, parse_params


def test_real_params_load_with_exact_fractions() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.models == ["resnet50", "mobilevitv2_100", "tf_efficientnet_lite0"]
    assert params.train.pretrained.freeze_backbone is True  # the recipe of ImageNet models (docs/transfer-learning.md)
    assert params.split.fractions.train == pytest.approx(2 / 3)
    assert params.split.fractions.val == pytest.approx(1 / 6)
    assert params.train.max_epochs == 50 and params.train.patience == 5
    assert params.data.classes[3] == "Home Decor & Festive Needs"


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p["train"].update(epochs=3), "train.epochs: unknown key"),
        (lambda p: p.update(extra_section={}), "extra_section: unknown key"),
        (lambda p: p["train"].update(max_epochs=-1), "train.max_epochs: Input should be greater than 0"),
        (lambda p: p.update(models=["resnet50", "no_such_net"]), "models: Value error, unknown timm model name(s): "
                                                                  "no_such_net"),
        (lambda p: p["split"]["fractions"].update(test="1/3"), "split.fractions: Value error, train + val + test "
                                                               "must sum to 1, got 1.166667"),
        (lambda p: p["split"]["fractions"].update(val="a/b"), "split.fractions.val"),
    ],
)
def test_bad_params_are_rejected_naming_the_key(tmp_path: Path, mutate, expected: str) -> None:
    raw = real_params()
    mutate(raw)
    with pytest.raises(ParamsError) as caught:
        load_params(_write(tmp_path, raw))
    assert expected in str(caught.value)


def test_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    path = _write(tmp_path, real_params())
    assert load_params(path, {"train.max_epochs": "2"}).train.max_epochs == 2
    with pytest.raises(ParamsError, match="train.patience"):
        load_params(path, {"train.patience": "0"})
    with pytest.raises(ParamsError, match="'nosuch' is not a section"):
        load_params(path, {"nosuch.key": "1"})


def test_parse_params_reports_every_bad_key() -> None:
    raw = real_params()
    raw["train"]["lr"] = 0
    raw["evaluate"]["batch_size"] = 0
    message = str(pytest.raises(ParamsError, parse_params, raw).value)
    assert "train.lr" in message and "evaluate.batch_size" in message
