"""The training loop: it learns, stops early on validation loss and restores the best weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from catalog_classifier.data.imageset import ImageSet, augment_batch, iterate_batches
from catalog_classifier.modeling.fit_loop import FitSettings, fit, macro_f1, validate
from catalog_classifier.modeling.metrics import classification_metrics
from catalog_classifier.modeling.torch_setup import Runtime, cpu_has_native_bf16, seed_everything

FP32 = Runtime(threads=1, channels_last=False, bf16=False)


def colour_set(n_per_class: int, seed: int) -> ImageSet:
    """Three classes told apart by which colour channel is bright: learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 60, (3 * n_per_class, 3, 8, 8), generator=generator, dtype=torch.uint8)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    for index, label in enumerate(labels):
        pixels[index, label] += 150
    return ImageSet(pixels=pixels, labels=labels, names=[f"{i}.png" for i in range(len(labels))])


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images)


def settings(**changes) -> FitSettings:
    base = dict(max_epochs=30, patience=3, batch_size=8, optimizer="adamw", lr=0.2, weight_decay=0.0)
    return FitSettings(**{**base, **changes})


def test_fit_learns_a_separable_problem() -> None:
    generator = seed_everything(0)
    model = TinyNet()
    result = fit(model, colour_set(10, 1), colour_set(5, 2), settings(), FP32, generator, 3)
    assert result.best["val_f1_macro"] == 1.0
    assert result.fit_seconds > 0 and result.fit_cpu_seconds > 0
    assert [row["epoch"] for row in result.history] == list(range(1, result.epochs_run + 1))


def test_early_stopping_restores_the_best_weights() -> None:
    generator = seed_everything(0)
    model = TinyNet()
    seen: list[int] = []
    # Validation labels are shuffled, so validation loss soon stops improving and patience runs out.
    val = colour_set(5, 2)
    val = ImageSet(val.pixels, val.labels[torch.randperm(len(val), generator=torch.Generator().manual_seed(3))],
                   val.names)
    result = fit(model, colour_set(10, 1), val, settings(patience=2), FP32, generator, 3,
                 on_epoch=lambda epoch, row: seen.append(epoch))
    assert result.stopped_early and result.epochs_run == result.best_epoch + 2
    assert seen == list(range(1, result.epochs_run + 1))
    final = validate(model, val, nn.CrossEntropyLoss(), 8, FP32, 3)
    assert final["loss"] == pytest.approx(result.best["val_loss"], rel=1e-5)
    assert min(row["val_loss"] for row in result.history) == result.best["val_loss"]


def test_macro_f1_by_hand() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 2, 0])
    # class 0: P=1/2 R=1/2 F1=.5; class 1: P=2/3 R=1 F1=.8; class 2: P=1 R=1/2 F1=2/3
    assert macro_f1(labels, predictions, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    metrics = classification_metrics(labels, predictions, ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})


def test_a_class_never_seen_counts_as_zero_in_macro_f1() -> None:
    labels = np.array([0, 0, 1])
    assert macro_f1(labels, labels, 3) == pytest.approx(2 / 3)


def test_batches_cover_every_image_once_in_seeded_order() -> None:
    images = colour_set(7, 0)
    order_a = torch.cat([y for _, y in iterate_batches(images, 4, shuffle=True,
                                                        generator=torch.Generator().manual_seed(5))])
    order_b = torch.cat([y for _, y in iterate_batches(images, 4, shuffle=True,
                                                        generator=torch.Generator().manual_seed(5))])
    assert torch.equal(order_a, order_b)
    assert sorted(order_a.tolist()) == sorted(images.labels.tolist())


def test_bf16_detection_reads_cpu_flags(tmp_path: Path) -> None:
    with_bf16 = tmp_path / "cpuinfo_bf16"
    with_bf16.write_text("flags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n", encoding="utf-8")
    without = tmp_path / "cpuinfo_plain"
    without.write_text("flags\t\t: fpu sse avx2 avx512f\n", encoding="utf-8")
    assert cpu_has_native_bf16(with_bf16) and not cpu_has_native_bf16(without)
    assert not cpu_has_native_bf16(tmp_path / "absent")


def test_augment_batch_refuses_anything_but_image_batches() -> None:
    """Flips and rolls of (B, D) feature vectors would reorder features and shift rows across the batch."""
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"augment_batch expects images \(N, C, H, W\), got shape \(4, 16\)"):
        augment_batch(torch.zeros(4, 16), generator)
    images = colour_set(2, 0).pixels
    assert augment_batch(images, generator).shape == images.shape


# --------------------------------------------------------------------------- recipe: lr groups and schedule


def test_warmup_then_cosine_lr_factors_by_hand() -> None:
    from catalog_classifier.modeling.fit_loop import FitSettings, lr_factor

    settings = FitSettings(max_epochs=5, patience=1, batch_size=4, optimizer="adamw", lr=1.0, weight_decay=0.0,
                           warmup_epochs=1, schedule="cosine")
    # warm-up: 1/2; then cosine over the 4 remaining epochs: cos(0)=1, cos(pi/4), cos(pi/2), cos(3pi/4)
    expected = [0.5, 1.0, 0.5 * (1 + 2 ** -0.5), 0.5, 0.5 * (1 - 2 ** -0.5)]
    assert [lr_factor(index, settings) for index in range(5)] == pytest.approx(expected)
    constant = FitSettings(max_epochs=5, patience=1, batch_size=4, optimizer="adamw", lr=1.0, weight_decay=0.0)
    assert [lr_factor(index, constant) for index in range(5)] == [1.0] * 5


def test_backbone_learns_at_a_fraction_of_the_head_lr() -> None:
    from catalog_classifier.modeling.fit_loop import FitSettings, create_optimizer
    from catalog_classifier.modeling.models import create_classifier

    model, _ = create_classifier("resnet10t", 3, image_size=32)
    settings = FitSettings(max_epochs=1, patience=1, batch_size=4, optimizer="adamw", lr=0.01, weight_decay=0.0,
                           backbone_lr_ratio=0.1)
    groups = create_optimizer(model, settings).param_groups
    head = {id(param) for param in model.backbone.get_classifier().parameters()}
    assert [group["lr"] for group in groups] == pytest.approx([0.01, 0.001])
    assert {id(param) for param in groups[0]["params"]} == head
    assert len(groups[1]["params"]) == sum(1 for param in model.parameters()) - len(head)


def test_pretrained_recipe_applies_only_to_imagenet_weights(tmp_path) -> None:
    import yaml
    from conftest import tiny_params

    from catalog_classifier.config.params import load_params

    params = tiny_params()
    params["train"]["pretrained"] = {"freeze_backbone": True, "lr": 0.02, "max_epochs": 7}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    train = load_params(tmp_path / "params.yaml").train
    pretrained = train.recipe_for("imagenet")
    assert (pretrained.freeze_backbone, pretrained.lr, pretrained.max_epochs) == (True, 0.02, 7)
    assert pretrained.batch_size == train.batch_size  # unset in the recipe: train.*'s value
    assert train.recipe_for("random") is train
