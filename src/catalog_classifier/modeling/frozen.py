"""Frozen-backbone training: compute every image's backbone features once, then train only the head.

With the backbone frozen, every epoch would otherwise push each image through the whole network again to
get the same features (the model's BatchNorm statistics are fixed in eval mode, so the features are
identical epoch after epoch). Caching them turns a fit into one inference pass plus a few milliseconds per
head epoch.

The head is trained by the project's own loop (:func:`catalog_classifier.modeling.fit_loop.fit`: same optimiser, same
early stopping on validation loss, same best-weights restore) without any change to it: the cached features
travel in an :class:`~catalog_classifier.data.imageset.ImageSet` (float (N, D) instead of uint8 pixels), and since
``train.to_float`` divides every batch by 255 (the uint8 convention), the head is wrapped in
:class:`UnscaledHead`, which multiplies it back. The head's runtime has ``channels_last`` off (features are
2-D) and fp32 (a linear layer costs nothing; bf16 would only lose precision).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from catalog_classifier.config.params import FROZEN_AUGMENT_MESSAGE
from catalog_classifier.data.imageset import ImageSet, iterate_batches, to_float
from catalog_classifier.modeling.fit_loop import EpochCallback, FitResult, FitSettings, fit, macro_f1, predict_logits
from catalog_classifier.modeling.models import Classifier, freeze_backbone
from catalog_classifier.modeling.torch_setup import Runtime

log = logging.getLogger(__name__)

PIXEL_SCALE = 255.0  # train.to_float divides every batch by this


class UnscaledHead(nn.Module):
    """The model's own classification head, fed cached features through the uint8 pixel path of train.py."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, scaled_features: torch.Tensor) -> torch.Tensor:
        return self.head(scaled_features * PIXEL_SCALE)


def backbone_features(model: Classifier, images: torch.Tensor) -> torch.Tensor:
    """Pooled pre-logits features of float RGB images in [0, 1]: what the classification head sees."""
    backbone = model.backbone
    normalised = (images - model.mean) / model.std
    return backbone.forward_head(backbone.forward_features(normalised), pre_logits=True)


@torch.inference_mode()
def extract_features(model: Classifier, images: ImageSet, batch_size: int, runtime: Runtime) -> ImageSet:
    """Backbone features (float32, (N, D)) of every image, in order, with the same labels and names."""
    model.eval()
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    outputs = []
    for pixels, _ in iterate_batches(images, batch_size, shuffle=False):
        with runtime.autocast():
            outputs.append(backbone_features(model, to_float(pixels, runtime.channels_last)).float())
    return ImageSet(pixels=torch.cat(outputs), labels=images.labels, names=images.names)


def head_runtime(runtime: Runtime) -> Runtime:
    return Runtime(threads=runtime.threads, channels_last=False, bf16=False)


@dataclass
class FrozenFitResult:
    fit: FitResult
    feature_seconds: float  # one backbone pass over train + val
    feature_cpu_seconds: float
    head_fit_seconds: float  # train.fit of the head on cached features

    @property
    def fit_seconds(self) -> float:
        """Comparable to a full fine-tuning fit_time_s: everything after decoding, up to the trained model."""
        return self.feature_seconds + self.head_fit_seconds

    @property
    def fit_cpu_seconds(self) -> float:
        return self.feature_cpu_seconds + self.fit.fit_cpu_seconds


def fit_frozen(
    model: Classifier,
    train_images: ImageSet,
    val_images: ImageSet,
    settings: FitSettings,
    runtime: Runtime,
    generator: torch.Generator,
    num_classes: int,
    on_epoch: EpochCallback | None = None,
) -> tuple[FrozenFitResult, ImageSet, ImageSet]:
    """Train only ``model``'s head on cached backbone features; the head is updated in place.

    Returns the result and the cached train/val features (callers reuse them, e.g. to score the head).
    Augmentation is refused: it transforms images, and the head only ever sees one cached vector per image.
    """
    if settings.augment:
        raise ValueError(FROZEN_AUGMENT_MESSAGE)
    started, cpu_started = time.perf_counter(), time.process_time()
    train_features = extract_features(model, train_images, settings.batch_size, runtime)
    val_features = extract_features(model, val_images, settings.batch_size, runtime)
    feature_seconds, feature_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    log.info("features of %d + %d images in %.1fs (dim %d)", len(train_features), len(val_features),
             feature_seconds, train_features.pixels.shape[1])
    head = UnscaledHead(model.backbone.get_classifier())
    result = fit(head, train_features, val_features, settings,
                 head_runtime(runtime), generator, num_classes, on_epoch=on_epoch)
    model.eval()
    frozen = FrozenFitResult(fit=result, feature_seconds=feature_seconds, feature_cpu_seconds=feature_cpu_seconds,
                             head_fit_seconds=result.fit_seconds)
    return frozen, train_features, val_features


def score_head(model: Classifier, features: ImageSet, runtime: Runtime, batch_size: int,
               num_classes: int) -> float:
    """Macro-F1 of the (trained) head on cached features."""
    head = UnscaledHead(model.backbone.get_classifier())
    logits = predict_logits(head, features, batch_size, head_runtime(runtime))
    return macro_f1(features.labels.numpy(), logits.argmax(1).numpy(), num_classes)


def fit_model(
    model: Classifier,
    train_images: ImageSet,
    val_images: ImageSet,
    settings: FitSettings,
    runtime: Runtime,
    generator: torch.Generator,
    num_classes: int,
    *,
    frozen_backbone: bool,
    on_epoch: EpochCallback | None = None,
    on_features: Callable[[ImageSet, ImageSet], None] | None = None,
) -> FitResult:
    """Full fine-tuning, or (``frozen_backbone``) the head alone on cached features.

    ``on_features`` (frozen only) receives the cached train and val features once the head is fitted.
    Either way the result's ``fit_seconds`` / ``fit_cpu_seconds`` run from the first decoded batch to the trained
    model (for the frozen mode: feature extraction included), so the two modes compare on one column.
    """
    if not frozen_backbone:
        return fit(model, train_images, val_images, settings, runtime, generator, num_classes, on_epoch=on_epoch)
    freeze_backbone(model)
    frozen, train_features, val_features = fit_frozen(model, train_images, val_images, settings, runtime, generator,
                                                      num_classes, on_epoch=on_epoch)
    if on_features is not None:  # e.g. cross-validation of the head, on the features already computed
        on_features(train_features, val_features)
    return replace(frozen.fit, fit_seconds=frozen.fit_seconds, fit_cpu_seconds=frozen.fit_cpu_seconds)
