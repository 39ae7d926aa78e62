"""``torch.compile`` measured in a child process (compile seconds, steady speed of the training step and of batched
inference) and the verdict: does the compile repay itself within one fit? Run bounded by
:func:`catalog_classifier.benchmarks.isolated_call.run_bounded` (see ``loop_speed.bench_compile``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from catalog_classifier.benchmarks.isolated_call import run_bounded
from catalog_classifier.benchmarks.loop_speed import BenchSettings, Sample, Timing, repeat_images
from catalog_classifier.data.imageset import decode_manifest
from catalog_classifier.modeling.fit_loop import FitSettings, create_optimizer, predict_logits, train_one_epoch
from catalog_classifier.modeling.models import create_classifier
from catalog_classifier.modeling.torch_setup import Runtime

log = logging.getLogger(__name__)


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
