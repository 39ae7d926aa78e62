"""Measuring prediction only: PyTorch (eager fp32, eager bf16 + channels_last, traced + frozen fp32 with BatchNorm
folded) against ONNX Runtime on one classifier, and the streaming batch prediction end to end with its peak RSS.

Every figure is printed and written by ``catalog-classifier bench-predict``; nothing here asserts a speed.
"""

from __future__ import annotations

import csv
import itertools
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catalog_classifier.modeling.batch_prediction import InputRow, StreamSettings, stream_predictions
from catalog_classifier.modeling.inference_runtime import ONNX, TORCH, faster_runtime
from catalog_classifier.modeling.onnx_runtime import OnnxImageClassifier, export_onnx
from catalog_classifier.modeling.prediction import ImageClassifier, _file_loader, time_calls

log = logging.getLogger(__name__)


class FrozenImageClassifier(ImageClassifier):
    """PyTorch with the module traced and ``torch.jit.freeze``-d (BatchNorm folded into the convolutions), fp32."""

    runtime_name = "torch-frozen"

    def __init__(self, base: ImageClassifier) -> None:
        super().__init__(base.model, base.config, base.settings, base.calibration)
        height, width = base.config["input_size"]
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(base.model.eval(), torch.rand(2, 3, height, width))
            self.frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))

    @torch.inference_mode()
    def _logits(self, pixels: np.ndarray) -> torch.Tensor:
        batch_size = self.settings.batch_size
        outputs = [self.frozen(torch.from_numpy(pixels[start:start + batch_size]).float().div_(255.0))
                   for start in range(0, len(pixels), batch_size)]
        return torch.cat(outputs).float()


def runtime_variants(base: ImageClassifier, scratch: Path, onnx_batch: int) -> dict[str, ImageClassifier]:
    """The same weights on each runtime under comparison."""
    fp32 = replace(base.settings, bf16=False, channels_last=False)
    bf16 = replace(base.settings, bf16=True, channels_last=True)
    eager_fp32 = ImageClassifier(base.model, base.config, fp32, base.calibration)
    variants: dict[str, ImageClassifier] = {"torch-fp32": eager_fp32}
    if torch.backends.cpu.get_cpu_capability() and _native_bf16():
        variants["torch-bf16"] = ImageClassifier(base.model, base.config, bf16, base.calibration)
    variants["torch-frozen-fp32"] = FrozenImageClassifier(eager_fp32)
    onnx_file = export_onnx(base.model, base.config, scratch / "model.onnx")
    variants["onnx-fp32"] = OnnxImageClassifier(eager_fp32, onnx_file, onnx_batch)
    return variants


def _native_bf16() -> bool:
    from catalog_classifier.modeling.torch_setup import cpu_has_native_bf16

    return cpu_has_native_bf16()


def batch_throughput(classifier: ImageClassifier, paths: Sequence[Path], batch: int, repeats: int) -> dict[str, Any]:
    """Forward + calibrated softmax images/s on pre-decoded batches of ``batch`` (decode excluded), best of runs."""
    pixels = np.stack([classifier._decode(_file_loader(path)) for path in paths[:batch]])
    classifier._forward(pixels)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        classifier._forward(pixels)
        times.append(time.perf_counter() - started)
    return {"batch": len(pixels), "images_per_s": len(pixels) / float(np.median(times)),
            "median_s": float(np.median(times))}


def streaming_throughput(classifier: ImageClassifier, paths: Sequence[Path], images: int,
                         settings: StreamSettings) -> float:
    """Images/s of the batch prediction path itself, in process: ``images`` rows (``paths`` over and over) decoded
    by the pool of threads while the model runs, in full batches, one warm-up batch first. Unlike
    :func:`batch_throughput`, decoding competes with the forward pass for the cores, as it does in a real run."""
    rows = [InputRow(str(path), path) for path in itertools.islice(itertools.cycle(paths), images)]
    for _ in stream_predictions(classifier, rows[:classifier.settings.batch_size], settings):
        pass
    started = time.perf_counter()
    done = sum(len(chunk) for chunk in stream_predictions(classifier, rows, settings))
    return done / (time.perf_counter() - started)


def runtime_figures(variants: dict[str, ImageClassifier], paths: Sequence[Path], warmup: int, repeats: int,
                    batch: int, batch_repeats: int, stream_images: int,
                    stream: StreamSettings) -> dict[str, dict[str, Any]]:
    """Per runtime: single-image p50/p95 end to end (decode + resize + forward + top-3), forward-only batch
    throughput, and the streaming throughput that decides the batch runtime."""
    figures: dict[str, dict[str, Any]] = {}
    for name, classifier in variants.items():
        log.info("timing %s", name)
        single = time_calls(lambda path, c=classifier: c.predict_files([path]), list(paths), warmup, repeats)
        figures[name] = {**single, "batch_images_per_s": batch_throughput(classifier, paths, batch,
                                                                            batch_repeats)["images_per_s"],
                         "streaming_images_per_s": streaming_throughput(classifier, paths, stream_images, stream)}
    return figures


def choice_figures(figures: dict[str, dict[str, Any]], stored_bf16: bool) -> dict[str, dict[str, Any]]:
    """The two candidates of :func:`faster_runtime`: PyTorch as the stored settings run it, and ONNX Runtime."""
    torch_name = "torch-bf16" if stored_bf16 and "torch-bf16" in figures else "torch-fp32"
    return {TORCH: {**figures[torch_name], "variant": torch_name}, ONNX: {**figures["onnx-fp32"],
                                                                          "variant": "onnx-fp32"}}


def decide(figures: dict[str, dict[str, Any]], stored_bf16: bool) -> dict[str, Any]:
    candidates = choice_figures(figures, stored_bf16)
    return {"choice_figures": candidates, "batch": faster_runtime(candidates, "batch"),
            "single": faster_runtime(candidates, "single")}


# --- the CLI's streaming batch prediction, end to end, in a child process -------------------------------------

def write_repeated_csv(target: Path, images: Sequence[Path], rows: int) -> Path:
    """A CSV of ``rows`` rows listing ``images`` over and over (a catalogue longer than the photo set)."""
    with target.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image"])
        for index in range(rows):
            writer.writerow([str(images[index % len(images)])])
    return target


def peak_rss_kib(pid: int) -> int | None:
    """The high-water mark of resident memory (KiB) of a running process's own address space (``VmHWM``)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def predict_run(command: Sequence[str], environment: dict[str, str] | None = None,
                poll_s: float = 0.2) -> dict[str, Any]:
    """Wall seconds and peak RSS (MB) of one ``catalog-classifier predict`` child process.

    The peak is the child's own ``VmHWM``, read every ``poll_s`` until it exits, not ``wait4``'s ``ru_maxrss``:
    Linux carries the forking parent's high-water mark across fork + exec, so a child of this multi-GB benchmark
    reported 2.66 GB where ``/usr/bin/time -v`` measured the same command at 1.38 GB.
    """
    started = time.perf_counter()
    process = subprocess.Popen(list(command), env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    peak_kib = 0
    while True:
        peak_kib = max(peak_kib, peak_rss_kib(process.pid) or 0)
        try:
            _, stderr = process.communicate(timeout=poll_s)
            break
        except subprocess.TimeoutExpired:
            continue
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        raise RuntimeError(f"predict exited {process.returncode}: {last}")
    return {"wall_s": seconds, "peak_rss_mb": peak_kib / 1024.0}


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "catalog_classifier.cli", *args]
