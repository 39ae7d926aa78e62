"""Model factory: per-model preprocessing, local ImageNet-weights files, the offline fallback and its record."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from catalog_classifier.modeling.models import create_classifier, freeze_backbone, load_classifier, save_classifier
from catalog_classifier.modeling.pretrained import WeightsError


def test_preprocessing_comes_from_each_models_own_config() -> None:
    resnet, _ = create_classifier("resnet50", 7)
    mobilevit, _ = create_classifier("mobilevitv2_100", 7)
    assert resnet.data_config.input_size == (224, 224)
    assert resnet.data_config.mean == pytest.approx((0.485, 0.456, 0.406))
    assert mobilevit.data_config.input_size == (256, 256)
    assert mobilevit.data_config.interpolation == "bicubic"
    assert mobilevit.data_config.mean == (0.0, 0.0, 0.0) and mobilevit.data_config.std == (1.0, 1.0, 1.0)


def test_imagenet_weights_load_from_a_local_file(tmp_path: Path) -> None:
    # Stand-in for a downloaded ImageNet checkpoint: a 1000-class model's weights, written by the test.
    source = timm.create_model("resnet10t", pretrained=False, num_classes=1000)
    weights = {name: tensor.contiguous() for name, tensor in source.state_dict().items()}
    path = tmp_path / "resnet10t_imagenet.safetensors"
    save_file(weights, str(path))
    model, info = create_classifier("resnet10t", 7, weights="imagenet", weights_file=path)
    assert (info.used, info.source, info.kind) == ("imagenet", f"file:{path}", "file")
    assert info.tensors_loaded == len(weights) - 2  # every tensor but the 1000-class head's weight and bias
    loaded = model.backbone.state_dict()
    torch.testing.assert_close(loaded["conv1.0.weight"], weights["conv1.0.weight"])
    torch.testing.assert_close(loaded["layer4.0.conv1.weight"], weights["layer4.0.conv1.weight"])
    assert loaded["fc.weight"].shape == (7, 512)  # head re-initialised for 7 classes


def test_missing_local_weights_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train.weights_files.resnet10t"):
        create_classifier("resnet10t", 7, weights="imagenet", weights_file=tmp_path / "nope.safetensors")


def test_unavailable_hub_falls_back_only_when_allowed(caplog: pytest.LogCaptureFixture) -> None:
    model, info = create_classifier("resnet10t", 7, weights="imagenet", allow_fallback=True)
    assert info.requested == "imagenet" and info.used == "random"
    assert info.source.startswith("fallback:")
    assert "TRAINING FROM RANDOM INITIALISATION" in caplog.text
    with pytest.raises(WeightsError, match="allow_random_fallback is false"):
        create_classifier("resnet10t", 7, weights="imagenet", allow_fallback=False)


def test_freeze_backbone_leaves_only_the_head_trainable() -> None:
    model, _ = create_classifier("resnet10t", 7)
    freeze_backbone(model)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable == {"backbone.fc.weight", "backbone.fc.bias"}


def test_saved_classifier_reloads_identically(tmp_path: Path) -> None:
    model, _ = create_classifier("mobilevitv2_050", 3, image_size=64)
    config = save_classifier(model.eval(), "mobilevitv2_050", ["a", "b", "c"], tmp_path / "model.pt")
    assert config["input_size"] == [64, 64] or config["input_size"] == (64, 64)
    reloaded, reloaded_config = load_classifier(tmp_path / "model.pt")
    batch = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(batch), model(batch), rtol=0, atol=0)
    assert reloaded_config["classes"] == ["a", "b", "c"]
