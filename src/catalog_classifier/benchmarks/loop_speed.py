"""Training and inference loop speed, measured side by side on one machine in one run: the project's loops against
a naive PyTorch loop and against the machine's own matrix-multiply peak. (torch.compile: ``compile_speed``; the
frozen head: ``frozen_speed``; batch prediction end to end: ``batch_predict_speed``; all of it per model: ``suite``.)

Why: on a 2-core CPU, how the training loop is written decides whether a model comparison takes minutes or
hours; these figures show what the project's choices (decode once, uint8 in memory, channels_last, bf16
autocast, cached frozen features) buy, and how far from the hardware's limit they still are.

- The *project* training step is :func:`catalog_classifier.modeling.fit_loop.train_one_epoch` itself, called on decoded
  uint8 images in memory, with the runtime the pipeline resolves (channels_last, bf16 autocast when native).
- The *naive* baseline is the textbook loop: a ``Dataset`` that opens each JPEG with PIL and applies
  torchvision ``Resize`` + ``ToTensor`` + ``Normalize`` at every step, a ``DataLoader``, fp32, NCHW, the same
  architecture, initial weights, batch size, optimiser and learning rate.
- The peak is the best of a few large square matmuls (fp32 and bf16) on all threads, timed in the same run.
- FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; element-wise
  work is not counted) for one forward pass per image; a training step counts as 3 forward passes.

Every timing here is a measurement of the machine at that moment: nothing asserts on it.
Only measuring lives here: the Markdown tables of these figures are :mod:`catalog_classifier.benchmarks.results_page`.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from catalog_classifier.data.images import load_rgb, resize_to_array
from catalog_classifier.data.imageset import DataConfig, ImageSet
from catalog_classifier.modeling.fit_loop import FitSettings, create_optimizer, predict_logits, train_one_epoch
from catalog_classifier.modeling.torch_setup import Runtime

log = logging.getLogger(__name__)

# Targets of the issue: reported as met or not, never asserted.
TRAIN_RATIO_TARGETS = {"resnet50": 3.0, "mobilevitv2_100": 3.5}
LATENCY_P50_TARGETS_MS = {"mobilevitv2_100": 30.0}
DEFAULT_FIT_EPOCHS = 8


@dataclass(frozen=True)
class Timing:
    """``images`` processed in ``seconds`` of wall time (warm-up excluded)."""

    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def to_dict(self) -> dict[str, float]:
        return {"images": self.images, "seconds": self.seconds, "images_per_s": self.images_per_s}


@dataclass(frozen=True)
class Sample:
    """The real training images the speed measurements use (a subset of the train manifest)."""

    manifest: pd.DataFrame  # columns image, label_id
    images_dir: Path

    @property
    def paths(self) -> list[Path]:
        return [self.images_dir / name for name in self.manifest["image"]]

    @property
    def labels(self) -> list[int]:
        return [int(v) for v in self.manifest["label_id"]]


def take_sample(manifest: pd.DataFrame, images_dir: Path, n_images: int, seed: int) -> Sample:
    """A seeded, class-mixed subset of ``n_images`` manifest rows (all of them when fewer)."""
    chosen = manifest.sample(n=min(n_images, len(manifest)), random_state=seed)
    return Sample(manifest=chosen[["image", "label_id"]].reset_index(drop=True), images_dir=images_dir)


def repeat_images(images: ImageSet, n: int) -> ImageSet:
    """``n`` images cycling through ``images``: a fixed number of full batches from a small sample."""
    index = torch.arange(n) % len(images)
    return ImageSet(pixels=images.pixels[index], labels=images.labels[index],
                    names=[images.names[i] for i in index.tolist()])


# --- the machine's limit -------------------------------------------------------------------------------------

def matmul_peak(dtype: torch.dtype, size: int, repeats: int) -> dict[str, Any]:
    """GFLOP/s of the best of ``repeats`` (size x size) @ (size x size) products on the current threads."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(dtype)
    right = torch.randn(size, size, generator=generator).to(dtype)
    torch.matmul(left, right)  # warm-up: thread pool, oneDNN kernels
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(left, right)
        times.append(time.perf_counter() - started)
    flops = 2.0 * size**3
    return {"dtype": str(dtype).removeprefix("torch."), "size": size, "repeats": repeats,
            "best_s": min(times), "median_s": statistics.median(times), "gflops": flops / min(times) / 1e9}


TRAIN_FLOPS_PER_FORWARD = 3.0  # backward ~ 2x forward (grads w.r.t. activations and weights)


def count_flops(model: nn.Module, input_size: tuple[int, int]) -> dict[str, float]:
    """Matmul/conv GFLOPs per image: counted forward (eval, batch 1, on a copy), and training = 3 x forward.

    Training FLOPs are not counted through a backward pass: torch's FlopCounterMode ignores ``groups`` in its
    convolution-backward formula (a 64-group 3x3 conv's backward counts 65x its forward instead of 2x), which
    would inflate MobileViTv2's depthwise convolutions about 6-fold.
    """
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).eval()
    height, width = input_size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        probe(torch.rand(1, 3, height, width))
    forward = counter.get_total_flops() / 1e9
    return {"forward_gflops_per_image": forward, "train_gflops_per_image": TRAIN_FLOPS_PER_FORWARD * forward}


# --- the naive baseline --------------------------------------------------------------------------------------

class JpegDataset(torch.utils.data.Dataset):
    """Textbook image dataset: open, decode and transform the file at every access, every epoch."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: Callable) -> None:
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), self.labels[index]


def naive_transform(data_config: DataConfig) -> Callable:
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(data_config.input_size, interpolation=transforms.InterpolationMode(
            data_config.interpolation)),
        transforms.ToTensor(),
        transforms.Normalize(data_config.mean, data_config.std),
    ])


def time_naive_training(
    backbone: nn.Module,
    sample: Sample,
    data_config: DataConfig,
    settings: FitSettings,
    warmup_steps: int,
    measure_steps: int,
    num_workers: int,
    seed: int,
) -> Timing:
    """Train steps of the naive loop (decode + transform in the DataLoader, fp32, NCHW); warm-up not timed."""
    batch = settings.batch_size
    n = (warmup_steps + measure_steps) * batch
    paths = [sample.paths[i % len(sample.paths)] for i in range(n)]
    labels = [sample.labels[i % len(sample.labels)] for i in range(n)]
    loader = torch.utils.data.DataLoader(
        JpegDataset(paths, labels, naive_transform(data_config)), batch_size=batch, shuffle=True,
        num_workers=num_workers, generator=torch.Generator().manual_seed(seed), drop_last=True,
    )
    backbone = backbone.float().to(memory_format=torch.contiguous_format).train()
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    criterion = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for step, (pixels, targets) in enumerate(loader):
        if step == warmup_steps:
            started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(backbone(pixels), targets)
        loss.backward()
        optimizer.step()
    return Timing(images=measure_steps * batch, seconds=time.perf_counter() - started)


# --- the project's loops -------------------------------------------------------------------------------------

def time_project_training(
    model: nn.Module,
    images: ImageSet,
    settings: FitSettings,
    runtime: Runtime,
    warmup_steps: int,
    measure_steps: int,
    seed: int,
    num_classes: int,
) -> Timing:
    """Train steps of :func:`train_one_epoch` exactly as ``fit`` runs it; the warm-up epoch is not timed."""
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer(model, settings)
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    generator = torch.Generator().manual_seed(seed)
    batch = settings.batch_size
    warmup = repeat_images(images, warmup_steps * batch)
    measured = repeat_images(images, measure_steps * batch)
    train_one_epoch(model, warmup, optimizer, criterion, settings, runtime, generator, num_classes)
    started = time.perf_counter()
    train_one_epoch(model, measured, optimizer, criterion, settings, runtime, generator, num_classes)
    return Timing(images=len(measured), seconds=time.perf_counter() - started)


def time_inference(model: nn.Module, images: ImageSet, batch_size: int, runtime: Runtime, steps: int) -> Timing:
    """Batched inference through :func:`predict_logits` (eval, inference_mode, the pipeline's runtime)."""
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    predict_logits(model, repeat_images(images, batch_size), batch_size, runtime)  # warm-up
    measured = repeat_images(images, steps * batch_size)
    started = time.perf_counter()
    predict_logits(model, measured, batch_size, runtime)
    return Timing(images=len(measured), seconds=time.perf_counter() - started)


def preprocess_one(data_config: DataConfig) -> Callable[[Path], np.ndarray]:
    """The decode + resize part of the predict path alone, to split latency into its two parts."""
    return lambda path: resize_to_array(load_rgb(path), data_config.input_size, data_config.interpolation)


# --- one model, side by side ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchSettings:
    """What the measurements of one model need (from params.bench and params.train)."""

    fit: FitSettings
    warmup_steps: int
    measure_steps: int
    inference_batch_sizes: tuple[int, ...]
    latency_warmup: int
    latency_repeats: int
    naive_num_workers: int
    compile: bool
    compile_timeout_s: float
    image_size: int | None
    seed: int


def training_figures(project: Timing, naive: Timing, flops: dict[str, float], peaks: dict[str, Any],
                     runtime: Runtime, n_train: int, target: float | None) -> dict[str, Any]:
    """Ratio, extrapolated epoch times, achieved GFLOP/s and their fraction of the relevant peak."""
    per_image = flops["train_gflops_per_image"]
    peak_dtype = "bf16" if runtime.bf16 else "fp32"
    project_gflops = project.images_per_s * per_image
    naive_gflops = naive.images_per_s * per_image
    ratio = project.images_per_s / naive.images_per_s
    return {
        "project": {**project.to_dict(), "epoch_s_extrapolated": n_train / project.images_per_s,
                    "achieved_gflops": project_gflops, "peak_dtype": peak_dtype,
                    "fraction_of_peak": project_gflops / peaks[peak_dtype]["gflops"]},
        "naive": {**naive.to_dict(), "epoch_s_extrapolated": n_train / naive.images_per_s,
                  "achieved_gflops": naive_gflops, "peak_dtype": "fp32",
                  "fraction_of_peak": naive_gflops / peaks["fp32"]["gflops"]},
        "ratio": ratio,
        # The most the project could gain over the naive loop if it ran at 100 % of its own peak.
        "ceiling_ratio": peaks[peak_dtype]["gflops"] / naive_gflops,
        "target_ratio": target,
        "meets_target": None if target is None else bool(ratio >= target),
        "epoch_images": n_train,
    }
