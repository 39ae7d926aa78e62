"""Speed, measured side by side on one machine in one run: the project's loops against a naive PyTorch loop
and against the machine's own matrix-multiply peak.

Why: on a 2-core CPU, how the training loop is written decides whether a model comparison takes minutes or
hours; these figures show what the project's choices (decode once, uint8 in memory, channels_last, bf16
autocast, cached frozen features) buy, and how far from the hardware's limit they still are.

- The *project* training step is :func:`catalog_classifier.modeling.fit_loop.train_one_epoch` itself, called on decoded
  uint8 images in memory, with the runtime the pipeline resolves (channels_last, bf16 autocast when native).
- The *naive* baseline is the textbook loop: a ``Dataset`` that opens each JPEG with PIL and applies
  torchvision ``Resize`` + ``ToTensor`` + ``Normalize`` at every step, a ``DataLoader``, fp32, NCHW, the same
  architecture, initial weights, batch size, optimiser and learning rate.
- *Batch predict* is what ``catalog-classifier predict`` does to a folder: ``ImageClassifier.predict_files`` over
  ``bench.predict_images`` dataset files in one call (decode, resize, forward, calibrated softmax, top-3, review
  flag, ``evaluate.batch_size`` images at a time), with the trained weights when the pipeline left them.
- The peak is the best of a few large square matmuls (fp32 and bf16) on all threads, timed in the same run.
- FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; element-wise
  work is not counted) for one forward pass per image; a training step counts as 3 forward passes.

Every timing here is a measurement of the machine at that moment: nothing asserts on it.
Only measuring lives here: the Markdown tables of these figures are :mod:`catalog_classifier.benchmarks.results_page`.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from catalog_classifier.benchmarks.isolated_call import run_bounded
from catalog_classifier.data.images import load_rgb, resize_to_array
from catalog_classifier.data.imageset import DataConfig, ImageSet, decode_manifest
from catalog_classifier.modeling.fit_loop import FitSettings, create_optimizer, predict_logits, train_one_epoch
from catalog_classifier.modeling.models import Classifier, create_classifier, load_classifier
from catalog_classifier.modeling.prediction import (
    Calibration,
    ImageClassifier,
    InferenceSettings,
    Loader,
    single_image_latency,
    time_calls,
)
from catalog_classifier.modeling.torch_setup import Runtime

log = logging.getLogger(__name__)

# Targets of the issue: reported as met or not, never asserted.
TRAIN_RATIO_TARGETS = {"resnet50": 3.0, "mobilevitv2_100": 3.5}
FROZEN_SPEEDUP_TARGET = 20.0
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


# --- batch prediction, end to end ---------------------------------------------------------------------------

BATCH_PREDICT_PATH = ("prediction.ImageClassifier.predict_files (decode, resize, forward, calibrated softmax, top-3, "
                      "review flag), batches of evaluate.batch_size")


def predict_paths(manifests: Sequence[pd.DataFrame], images_dir: Path, n_images: int, seed: int) -> list[Path]:
    """Up to ``n_images`` distinct dataset files from the given manifests, in a seeded order (all when fewer).

    Why every split: a user's batch is a folder of photos each read once, and the train split alone holds too few
    to make the 1,000-image batch the target names; which images they are does not change the speed.
    """
    pool = pd.concat([manifest[["image"]] for manifest in manifests], ignore_index=True).drop_duplicates("image")
    chosen = pool.sample(frac=1.0, random_state=seed).head(n_images)
    return [images_dir / name for name in chosen["image"]]


def predict_classifier(model_name: str, classes: list[str], weights: Path, autolabel: Path,
                       settings: InferenceSettings, image_size: int | None, seed: int) -> tuple[ImageClassifier, str]:
    """The classifier ``predict`` would run: the trained weights and calibration when the pipeline left them,
    else random weights with the pipeline's architecture and input size (speed does not depend on the values).

    Returns it with what it was built from: ``trained`` or ``random``.
    """
    if weights.is_file():
        model, config = load_classifier(weights)
        calibration = Calibration.read(autolabel) if autolabel.is_file() else None
        return ImageClassifier(model, config, settings, calibration), "trained"
    torch.manual_seed(seed)
    model, _ = create_classifier(model_name, len(classes), weights="none", image_size=image_size)
    return ImageClassifier(model.eval(), {"classes": list(classes), **model.data_config.to_dict()}, settings), "random"


class TimedClassifier(ImageClassifier):
    """The predict path unchanged, adding up the seconds spent decoding + resizing and in forward + softmax.

    Why a subclass: the split comes from the very run that is timed (two clock reads per image and per batch),
    instead of a second decode pass that would double the cost of the figure.
    """

    def __init__(self, classifier: ImageClassifier) -> None:
        super().__init__(classifier.model, classifier.config, classifier.settings, classifier.calibration)
        self.decode_s = 0.0
        self.forward_s = 0.0

    def _decode(self, loader: Loader) -> np.ndarray:
        started = time.perf_counter()
        try:
            return super()._decode(loader)
        finally:
            self.decode_s += time.perf_counter() - started

    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        try:
            return super()._forward(pixels)
        finally:
            self.forward_s += time.perf_counter() - started


def batch_predict_throughput(classifier: ImageClassifier, paths: Sequence[Path], n_requested: int,
                             target_img_s: float) -> dict[str, Any]:
    """Images/s of one ``predict_files`` call over ``paths``, as ``catalog-classifier predict`` runs a batch.

    Not warmed up: a user's batch pays its first batch's warm-up too. Model loading is not timed.
    """
    timed = TimedClassifier(classifier)
    started = time.perf_counter()
    frame = timed.predict_files(list(paths))
    seconds = time.perf_counter() - started
    images_per_s = len(paths) / seconds
    return {
        "path": BATCH_PREDICT_PATH, "n_images": len(paths), "n_requested": n_requested, "seconds": seconds,
        "images_per_s": images_per_s, "batch_size": timed.settings.batch_size, "threads": timed.runtime.threads,
        "channels_last": timed.runtime.channels_last, "bf16": timed.runtime.bf16,
        "decode_resize_s": timed.decode_s, "forward_s": timed.forward_s,
        "other_s": seconds - timed.decode_s - timed.forward_s,  # top-3, review flags, the output frame
        "errors": int((frame["error"] != "").sum()),
        "target_img_s": target_img_s, "meets_target": bool(images_per_s >= target_img_s),
    }


# --- torch.compile, bounded in a child process ----------------------------------------------------------------

def compiled_speed(spec: dict[str, Any]) -> dict[str, Any]:
    """In a child process: compile time and steady speed of the training step and of batched inference.

    Compile seconds = wall time of the first (warm-up) pass minus what that pass costs at steady speed. The
    inductor cache starts empty (a fresh directory), so this is the compile a first fit pays: with a warm cache
    from an earlier run on the same machine, compiling is several times faster.
    """
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = spec["inductor_cache_dir"]  # read at compile time, not at import
    torch.set_num_threads(spec["threads"])
    runtime = Runtime(**spec["runtime"])
    settings = FitSettings(**spec["settings"])
    torch.manual_seed(spec["seed"])
    model, _ = create_classifier(spec["model_name"], spec["num_classes"], weights="none",
                                 image_size=spec["image_size"])
    frame = pd.DataFrame({"image": spec["images"], "label_id": spec["labels"]})
    images = decode_manifest(frame, Path(spec["images_dir"]), model.data_config)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    figures: dict[str, Any] = {"torch_compile_mode": "default"}

    compiled = torch.compile(model)
    optimizer = create_optimizer(model, settings)
    criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    generator = torch.Generator().manual_seed(spec["seed"])
    batch, warmup_steps, steps = settings.batch_size, spec["warmup_steps"], spec["measure_steps"]
    started = time.perf_counter()
    train_one_epoch(compiled, repeat_images(images, warmup_steps * batch), optimizer, criterion, settings,
                    runtime, generator, spec["num_classes"])
    first = time.perf_counter() - started
    started = time.perf_counter()
    train_one_epoch(compiled, repeat_images(images, steps * batch), optimizer, criterion, settings, runtime,
                    generator, spec["num_classes"])
    steady = Timing(steps * batch, time.perf_counter() - started)
    figures["train"] = {**steady.to_dict(),
                        "compile_s": max(0.0, first - warmup_steps * batch / steady.images_per_s)}

    infer_batch = spec["inference_batch_size"]
    compiled_eval = torch.compile(model.eval())
    started = time.perf_counter()
    predict_logits(compiled_eval, repeat_images(images, infer_batch), infer_batch, runtime)
    first = time.perf_counter() - started
    measured = repeat_images(images, steps * infer_batch)
    started = time.perf_counter()
    predict_logits(compiled_eval, measured, infer_batch, runtime)
    steady = Timing(len(measured), time.perf_counter() - started)
    figures["inference"] = {**steady.to_dict(), "batch_size": infer_batch,
                            "compile_s": max(0.0, first - infer_batch / steady.images_per_s)}
    return figures


def compile_verdict(compiled: dict[str, Any], eager_train_ips: float, eager_infer_ips: float, n_train: int,
                    n_val: int, fit_epochs: int) -> dict[str, Any]:
    """Does compiling repay its compile time within one fit? (train: fit_epochs epochs of n_train images;
    inference: the fit's per-epoch validation passes, fit_epochs x n_val images)."""
    verdict: dict[str, Any] = {}
    for part, eager_ips, images_per_fit in (("train", eager_train_ips, fit_epochs * n_train),
                                            ("inference", eager_infer_ips, fit_epochs * n_val)):
        figures = compiled[part]
        saved_per_image = 1.0 / eager_ips - 1.0 / figures["images_per_s"]
        saved_per_fit = saved_per_image * images_per_fit
        verdict[part] = {
            "compile_s": figures["compile_s"],
            "eager_images_per_s": eager_ips,
            "compiled_images_per_s": figures["images_per_s"],
            "speedup": figures["images_per_s"] / eager_ips,
            "images_per_fit": images_per_fit,
            "saved_per_fit_s": saved_per_fit,
            "break_even_images": (figures["compile_s"] / saved_per_image) if saved_per_image > 0 else None,
            "repays_within_one_fit": bool(saved_per_fit > figures["compile_s"]),
        }
        if "batch_size" in figures:
            verdict[part]["batch_size"] = figures["batch_size"]
    return verdict


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


def bench_model(
    model_name: str,
    num_classes: int,
    sample: Sample,
    settings: BenchSettings,
    runtime: Runtime,
    peaks: dict[str, Any],
    n_train: int,
    n_val: int,
    fit_epochs: int,
) -> dict[str, Any]:
    """Every speed figure of one model. Weights are random: speed does not depend on their values."""
    torch.manual_seed(settings.seed)
    model, _ = create_classifier(model_name, num_classes, weights="none", image_size=settings.image_size)
    naive_model = copy.deepcopy(model)  # same architecture and initial weights, untouched by the project loop
    data_config = model.data_config
    report: dict[str, Any] = {"input_size": list(data_config.input_size),
                              "interpolation": data_config.interpolation,
                              "n_params": sum(p.numel() for p in model.parameters())}
    report["flops"] = count_flops(model, data_config.input_size)

    started = time.perf_counter()
    images = decode_manifest(sample.manifest, sample.images_dir, data_config)
    decode_s = time.perf_counter() - started
    report["decode_once"] = {"images": len(images), "seconds": decode_s,
                             "train_split_s_extrapolated": decode_s / len(images) * n_train}

    log.info("%s: project training step (train_one_epoch, uint8 in memory, runtime %s)", model_name,
             runtime.to_dict())
    project = time_project_training(model, images, settings.fit, runtime, settings.warmup_steps,
                                    settings.measure_steps, settings.seed, num_classes)
    log.info("%s: project %.2f img/s; naive baseline (PIL + torchvision every step, fp32, NCHW, workers=%d)",
             model_name, project.images_per_s, settings.naive_num_workers)
    naive = time_naive_training(naive_model.backbone, sample, data_config, settings.fit, settings.warmup_steps,
                                settings.measure_steps, settings.naive_num_workers, settings.seed)
    del naive_model
    report["training"] = training_figures(project, naive, report["flops"], peaks, runtime, n_train,
                                          TRAIN_RATIO_TARGETS.get(model_name))
    report["training"]["naive"]["num_workers"] = settings.naive_num_workers
    log.info("%s: naive %.2f img/s -> ratio %.2f", model_name, naive.images_per_s, report["training"]["ratio"])

    model.eval()
    report["inference"] = {"batched": {}}
    for batch_size in settings.inference_batch_sizes:
        timing = time_inference(model, images, batch_size, runtime, settings.measure_steps)
        report["inference"]["batched"][str(batch_size)] = {**timing.to_dict(), "batch_size": batch_size}
    classifier = ImageClassifier(model, {"classes": [str(i) for i in range(num_classes)],
                                         **data_config.to_dict()},
                                 InferenceSettings(channels_last=runtime.channels_last, bf16=runtime.bf16,
                                                   num_threads=runtime.threads))
    single = single_image_latency(classifier, sample.paths, settings.latency_warmup, settings.latency_repeats)
    target = LATENCY_P50_TARGETS_MS.get(model_name)
    report["inference"]["single_image"] = {
        **single, "path": "predict.ImageClassifier.predict_files (load_rgb, resize, forward, top-3)",
        "preprocess": time_calls(preprocess_one(data_config), sample.paths, 0, settings.latency_repeats),
        "target_p50_ms": target, "meets_target": None if target is None else bool(single["p50_ms"] <= target),
    }
    log.info("%s: single-image p50 %.1f ms p95 %.1f ms", model_name, single["p50_ms"], single["p95_ms"])

    if settings.compile:
        report["compile"] = bench_compile(model_name, num_classes, sample, settings, runtime, n_train, n_val,
                                          fit_epochs, project.images_per_s,
                                          report["inference"]["batched"][str(settings.inference_batch_sizes[0])]
                                          ["images_per_s"])
    else:
        report["compile"] = {"status": "skipped", "reason": "bench.compile is false"}
    return report


def bench_compile(model_name: str, num_classes: int, sample: Sample, settings: BenchSettings, runtime: Runtime,
                  n_train: int, n_val: int, fit_epochs: int, eager_train_ips: float,
                  eager_infer_ips: float) -> dict[str, Any]:
    spec = {
        "model_name": model_name, "num_classes": num_classes, "image_size": settings.image_size,
        "images": list(sample.manifest["image"]), "labels": sample.labels, "images_dir": str(sample.images_dir),
        "threads": runtime.threads, "runtime": runtime.to_dict(), "settings": asdict(settings.fit),
        "warmup_steps": settings.warmup_steps, "measure_steps": settings.measure_steps,
        "inference_batch_size": settings.inference_batch_sizes[0], "seed": settings.seed,
    }
    log.info("%s: torch.compile (child process, at most %.0fs)", model_name, settings.compile_timeout_s)
    cache = tempfile.mkdtemp(prefix="bench-inductor-")  # empty: the compile a first fit pays
    try:
        outcome = run_bounded(compiled_speed, ({**spec, "inductor_cache_dir": cache},), settings.compile_timeout_s)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if outcome["status"] != "ok":
        log.warning("%s: torch.compile %s: %s", model_name, outcome["status"], outcome["error"])
        return outcome
    verdict = compile_verdict(outcome["result"], eager_train_ips, eager_infer_ips, n_train, n_val, fit_epochs)
    return {"status": "ok", "wall_s": outcome["wall_s"], "fit_epochs": fit_epochs,
            "mode": outcome["result"]["torch_compile_mode"], "inductor_cache": "cold", **verdict}


def fit_settings_for_bench(settings: FitSettings, batch_size: int | None) -> FitSettings:
    return settings if batch_size is None else replace(settings, batch_size=batch_size)


# --- frozen backbone against full fine-tuning -----------------------------------------------------------------

def frozen_figures(
    model: Classifier,
    splits: dict[str, ImageSet],
    settings: FitSettings,
    runtime: Runtime,
    seed: int,
    num_classes: int,
) -> dict[str, Any]:
    """Fit only the head on cached backbone features (train.fit's early stopping) and score it on test."""
    from catalog_classifier.modeling.frozen import extract_features, fit_frozen, score_head

    generator = torch.Generator().manual_seed(seed)
    result, _, _ = fit_frozen(model, splits["train"], splits["val"], settings, runtime, generator, num_classes)
    started = time.perf_counter()
    test_features = extract_features(model, splits["test"], settings.batch_size, runtime)
    test_feature_s = time.perf_counter() - started
    return {
        "n_images": {name: len(images) for name, images in splits.items()},
        "feature_dim": int(test_features.pixels.shape[1]),
        "feature_s": result.feature_seconds,
        "head_fit_s": result.head_fit_seconds,
        "fit_s": result.fit_seconds,
        "fit_cpu_s": result.fit_cpu_seconds,
        "epochs_run": result.fit.epochs_run,
        "best_epoch": result.fit.best_epoch,
        "best_val_f1_macro": result.fit.best["val_f1_macro"],
        "test_feature_s": test_feature_s,
        "test_f1_macro": score_head(model, test_features, runtime, settings.batch_size, num_classes),
    }


def frozen_versus_full(frozen: dict[str, Any], full: dict[str, Any], n_train: int, n_val: int,
                       estimated_full_fit_s: float | None) -> dict[str, Any]:
    """Speed-up of the frozen fit over full fine-tuning; a fit on a capped subset is extrapolated by images."""
    used = frozen["n_images"]["train"] + frozen["n_images"]["val"]
    scale = (n_train + n_val) / used
    fit_s = frozen["feature_s"] * scale + frozen["head_fit_s"]
    comparison = {**frozen, "full": full, "fit_s_for_speedup": fit_s, "extrapolated": bool(scale != 1.0),
                  "speedup_target": FROZEN_SPEEDUP_TARGET}
    recorded = full.get("fit_time_s")
    comparison["speedup"] = recorded / fit_s if recorded else None
    comparison["meets_target"] = None if recorded is None else bool(recorded / fit_s >= FROZEN_SPEEDUP_TARGET)
    comparison["full_fit_s_estimated_this_run"] = estimated_full_fit_s
    comparison["speedup_vs_estimate"] = estimated_full_fit_s / fit_s if estimated_full_fit_s else None
    return comparison
