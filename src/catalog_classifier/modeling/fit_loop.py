"""The training loop: one function, used by the pipeline and by tuning alike.

Cross-entropy, early stopping on validation loss with best weights restored, per-epoch train/val loss and
macro-F1, and a fit time measured identically for every model (wall seconds of the epoch loop).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from catalog_classifier.data.imageset import ImageSet, augment_batch, iterate_batches, to_float
from catalog_classifier.modeling.torch_setup import Runtime
from catalog_classifier.ops.progress import progress

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class FitSettings:
    max_epochs: int
    patience: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    label_smoothing: float = 0.0
    augment: bool = False
    backbone_lr_ratio: float = 1.0  # a pretrained backbone moves slower than the new head
    warmup_epochs: int = 0
    schedule: str = "constant"  # constant | cosine (after warm-up)


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    epochs_run: int = 0
    stopped_early: bool = False
    fit_seconds: float = 0.0
    # CPU seconds of this process during the fit: unlike wall time, barely moved by other load on the machine.
    fit_cpu_seconds: float = 0.0

    @property
    def best(self) -> dict[str, float]:
        return self.history[self.best_epoch - 1]


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    return float(
        f1_score(labels, predictions, labels=list(range(num_classes)), average="macro", zero_division=0)
    )


def parameter_groups(model: nn.Module, settings: FitSettings) -> list[dict[str, Any]]:
    """Trainable parameters, the classification head at ``lr`` and the rest at ``lr * backbone_lr_ratio``.

    A model without a timm backbone (e.g. the frozen mode's bare head) is one group at ``lr``.
    """
    trainable = [param for param in model.parameters() if param.requires_grad]
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "get_classifier") or settings.backbone_lr_ratio == 1.0:
        return [{"params": trainable, "lr": settings.lr}]
    head_ids = {id(param) for param in backbone.get_classifier().parameters()}
    head = [param for param in trainable if id(param) in head_ids]
    body = [param for param in trainable if id(param) not in head_ids]
    groups = [{"params": head, "lr": settings.lr}]
    if body:
        groups.append({"params": body, "lr": settings.lr * settings.backbone_lr_ratio})
    return groups


def create_optimizer(model: nn.Module, settings: FitSettings) -> torch.optim.Optimizer:
    groups = parameter_groups(model, settings)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)


def lr_factor(epoch_index: int, settings: FitSettings) -> float:
    """Multiplier of every group's lr in epoch ``epoch_index`` (0-based): linear warm-up, then constant/cosine."""
    if epoch_index < settings.warmup_epochs:
        return (epoch_index + 1) / (settings.warmup_epochs + 1)
    if settings.schedule == "constant":
        return 1.0
    decay_epochs = max(settings.max_epochs - settings.warmup_epochs, 1)
    progress_done = (epoch_index - settings.warmup_epochs) / decay_epochs
    return 0.5 * (1.0 + math.cos(math.pi * progress_done))


def train_one_epoch(
    model: nn.Module,
    images: ImageSet,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    settings: FitSettings,
    runtime: Runtime,
    generator: torch.Generator,
    num_classes: int,
) -> dict[str, float]:
    model.train()
    total_loss, predictions, labels = 0.0, [], []
    batches = iterate_batches(images, settings.batch_size, shuffle=True, generator=generator)
    total = -(-len(images) // settings.batch_size)
    for pixels, targets in progress(batches, desc="train", total=total):
        if settings.augment:
            pixels = augment_batch(pixels, generator)
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            logits = model(to_float(pixels, runtime.channels_last))
            loss = criterion(logits.float(), targets)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(targets)
        predictions.append(logits.argmax(1).numpy())
        labels.append(targets.numpy())
    return {
        "loss": total_loss / len(images),
        "f1_macro": macro_f1(np.concatenate(labels), np.concatenate(predictions), num_classes),
    }


@torch.inference_mode()
def predict_logits(model: nn.Module, images: ImageSet, batch_size: int, runtime: Runtime) -> torch.Tensor:
    """Logits (float32) for every image, in order."""
    model.eval()
    outputs = []
    batches = iterate_batches(images, batch_size, shuffle=False)
    for pixels, _ in progress(batches, desc="predict", total=-(-len(images) // batch_size)):
        with runtime.autocast():
            outputs.append(model(to_float(pixels, runtime.channels_last)).float())
    return torch.cat(outputs)


def validate(
    model: nn.Module, images: ImageSet, criterion: nn.Module, batch_size: int, runtime: Runtime, num_classes: int
) -> dict[str, float]:
    logits = predict_logits(model, images, batch_size, runtime)
    return {
        "loss": float(criterion(logits, images.labels)),
        "f1_macro": macro_f1(images.labels.numpy(), logits.argmax(1).numpy(), num_classes),
    }


def fit(
    model: nn.Module,
    train_images: ImageSet,
    val_images: ImageSet,
    settings: FitSettings,
    runtime: Runtime,
    generator: torch.Generator,
    num_classes: int,
    on_epoch: EpochCallback | None = None,
) -> FitResult:
    """Train with early stopping on validation loss; the model ends holding its best weights."""
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer(model, settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda index: lr_factor(index, settings))
    train_criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    val_criterion = nn.CrossEntropyLoss()
    result = FitResult()
    best_loss, best_state, since_best = float("inf"), copy.deepcopy(model.state_dict()), 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for epoch in range(1, settings.max_epochs + 1):
        train_metrics = train_one_epoch(
            model, train_images, optimizer, train_criterion, settings, runtime, generator, num_classes
        )
        scheduler.step()
        val_metrics = validate(model, val_images, val_criterion, settings.batch_size, runtime, num_classes)
        row = {
            "epoch": epoch,
            "train_loss": train_metrics["loss"],
            "train_f1_macro": train_metrics["f1_macro"],
            "val_loss": val_metrics["loss"],
            "val_f1_macro": val_metrics["f1_macro"],
            "elapsed_s": time.perf_counter() - started,
        }
        result.history.append(row)
        result.epochs_run = epoch
        if val_metrics["loss"] < best_loss:
            best_loss, since_best, result.best_epoch = val_metrics["loss"], 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        log.info(
            "epoch %d/%d train_loss=%.4f train_f1=%.4f val_loss=%.4f val_f1=%.4f (%.0fs)%s",
            epoch, settings.max_epochs, row["train_loss"], row["train_f1_macro"], row["val_loss"],
            row["val_f1_macro"], row["elapsed_s"], " *best*" if since_best == 0 else "",
        )
        if on_epoch is not None:
            on_epoch(epoch, row)
        if since_best >= settings.patience:
            result.stopped_early = True
            log.info("early stop: no val_loss improvement for %d epochs; best epoch %d", since_best,
                     result.best_epoch)
            break
    result.fit_seconds = time.perf_counter() - started
    result.fit_cpu_seconds = time.process_time() - cpu_started
    model.load_state_dict(best_state)
    return result


def history_columns() -> list[str]:
    return ["epoch", "train_loss", "train_f1_macro", "val_loss", "val_f1_macro", "elapsed_s"]


def settings_from(train_params: Any) -> FitSettings:
    return FitSettings(
        max_epochs=train_params.max_epochs,
        patience=train_params.patience,
        batch_size=train_params.batch_size,
        optimizer=train_params.optimizer,
        lr=train_params.lr,
        weight_decay=train_params.weight_decay,
        label_smoothing=train_params.label_smoothing,
        augment=train_params.augment,
        backbone_lr_ratio=train_params.backbone_lr_ratio,
        warmup_epochs=train_params.warmup_epochs,
        schedule=train_params.schedule,
    )
