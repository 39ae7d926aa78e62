"""The bench's suite: every model measured side by side on one machine in one run, from the project's params.

The measurements themselves are in :mod:`catalog_classifier.benchmarks.speed`; the Markdown page is
:mod:`catalog_classifier.benchmarks.results_page`; the bench stage writes and logs what this returns.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from catalog_classifier.benchmarks.speed import (
    DEFAULT_FIT_EPOCHS,
    BenchSettings,
    batch_predict_throughput,
    bench_model,
    fit_settings_for_bench,
    frozen_figures,
    frozen_versus_full,
    matmul_peak,
    predict_classifier,
    predict_paths,
    take_sample,
)
from catalog_classifier.config.layout import Project
from catalog_classifier.data.imageset import decode_manifest
from catalog_classifier.data.manifests import read_manifest
from catalog_classifier.data.splitting import SPLITS
from catalog_classifier.modeling.fit_loop import settings_from
from catalog_classifier.modeling.models import create_classifier
from catalog_classifier.modeling.prediction import pipeline_inference_settings
from catalog_classifier.modeling.torch_setup import Runtime, resolve_runtime
from catalog_classifier.ops.io import read_json

log = logging.getLogger(__name__)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(runtime: Runtime) -> dict[str, Any]:
    return {"cpu": cpu_name(), "threads": runtime.threads, "bf16": runtime.bf16,
            "channels_last": runtime.channels_last, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
            "loadavg_start": list(os.getloadavg())}


def recorded_full_fit(project: Project, model_name: str) -> dict[str, Any]:
    """Full fine-tuning figures of the last pipeline run, read from its outputs (None where absent)."""
    figures: dict[str, Any] = {"fit_time_s": None, "test_f1_macro": None, "epochs_run": None,
                               "train_metrics": str(project.train_metrics(model_name).relative_to(project.root)),
                               "eval_metrics": str(project.eval_metrics(model_name).relative_to(project.root))}
    if project.train_metrics(model_name).is_file():
        train = read_json(project.train_metrics(model_name))
        figures.update(fit_time_s=train.get("fit_time_s"), fit_cpu_time_s=train.get("fit_cpu_time_s"),
                       epochs_run=train.get("epochs_run"), weights_used=train.get("weights_used"))
        if train.get("freeze_backbone"):
            # The pipeline's own recipe was frozen (e.g. train.pretrained): there is no full fine-tuning to compare.
            figures.update(fit_time_s=None, note="the pipeline's run was itself frozen-backbone (no full fit)")
            return figures
    if project.eval_metrics(model_name).is_file():
        figures["test_f1_macro"] = read_json(project.eval_metrics(model_name))["test"]["f1_macro"]
    return figures


def frozen_for(project: Project, model_name: str, runtime: Runtime, n_train: int, n_val: int,
            estimated_full_fit_s: float | None) -> dict[str, Any]:
    params, bench = project.params, project.params.bench
    torch.manual_seed(params.train.seed)
    model, weights = create_classifier(
        model_name, len(params.data.classes), weights=params.train.weights,
        weights_file=project.weights_file(model_name),
        allow_fallback=params.train.allow_random_fallback, image_size=params.train.image_size)
    images_dir = project.path(params.data.images_dir)
    splits = {}
    for split in SPLITS:
        manifest = read_manifest(project, split)
        if bench.frozen_max_images is not None:
            manifest = manifest.sample(n=min(bench.frozen_max_images, len(manifest)), random_state=bench.seed)
        splits[split] = decode_manifest(manifest, images_dir, model.data_config)
    log.info("%s: frozen backbone (cached features, head only; weights %s)", model_name, weights.used)
    # The settings the pipeline would train this model with (train.pretrained for an ImageNet backbone).
    frozen = frozen_figures(model, splits, settings_from(params.train.recipe_for(weights.used)), runtime,
                            params.train.seed, len(params.data.classes))
    frozen["weights_used"] = weights.used
    return frozen_versus_full(frozen, recorded_full_fit(project, model_name), n_train, n_val,
                              estimated_full_fit_s)


def batch_predict_for(project: Project, model_name: str, paths: list[Path]) -> dict[str, Any]:
    """End-to-end batch prediction as ``catalog-classifier predict`` runs the served model (its inference settings,
    the trained weights and calibration when present)."""
    params, bench = project.params, project.params.bench
    weights = project.weights(model_name)
    classifier, built_from = predict_classifier(
        model_name, list(params.data.classes), weights, project.autolabel(model_name),
        pipeline_inference_settings(params), params.train.image_size, bench.seed)
    log.info("%s: batch predict, %d images (%s weights)", model_name, len(paths), built_from)
    figures = batch_predict_throughput(classifier, paths, bench.predict_images, bench.predict_target_img_s)
    trained = built_from == "trained"
    figures.update(weights=built_from, weights_file=str(weights.relative_to(project.root)) if trained else None,
                   calibrated=trained and project.autolabel(model_name).is_file())
    log.info("%s: batch predict %.1f img/s (decode+resize %.1f s, forward %.1f s)", model_name,
             figures["images_per_s"], figures["decode_resize_s"], figures["forward_s"])
    return figures


def run_suite(project: Project, quick: bool = False) -> dict[str, Any]:
    """Measure every bench model side by side (matmul peak, training, inference, batch predict, frozen mode)."""
    params, bench = project.params, project.params.bench
    runtime = resolve_runtime(params.train.channels_last, params.train.bf16, params.train.num_threads)
    models = bench.models or params.models
    manifests = {split: read_manifest(project, split) for split in SPLITS}
    n_train, n_val = len(manifests["train"]), len(manifests["val"])
    images_dir = project.path(params.data.images_dir)
    sample = take_sample(manifests["train"], images_dir, bench.n_images, bench.seed)
    batch_paths = predict_paths([manifests[split] for split in SPLITS], images_dir, bench.predict_images, bench.seed)
    fit = fit_settings_for_bench(settings_from(params.train), bench.batch_size)
    settings = BenchSettings(
        fit=fit, warmup_steps=bench.warmup_steps, measure_steps=bench.measure_steps,
        inference_batch_sizes=tuple(bench.inference_batch_sizes), latency_warmup=bench.latency_warmup,
        latency_repeats=bench.latency_repeats, naive_num_workers=bench.naive_num_workers,
        compile=bench.compile, compile_timeout_s=bench.compile_timeout_s, image_size=params.train.image_size,
        seed=bench.seed,
    )
    started = time.perf_counter()
    report: dict[str, Any] = {"quick": quick, "machine": machine_info(runtime)}
    if report["machine"]["loadavg_start"][0] > runtime.threads / 2:
        log.warning("load average %.1f on %d threads: other work competes for the cores, the figures will not "
                    "represent this machine", report["machine"]["loadavg_start"][0], runtime.threads)
    report["settings"] = {**bench.model_dump(mode="json"), "batch_size": fit.batch_size, "n_train": n_train,
                          "n_val": n_val, "models": models, "sample_images": len(sample.manifest),
                          "predict_images_used": len(batch_paths)}
    log.info("matmul peak (%d x %d, %d threads)", bench.matmul_size, bench.matmul_size, runtime.threads)
    report["peak"] = {name: matmul_peak(dtype, bench.matmul_size, bench.matmul_repeats)
                      for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    report["models"] = {}
    for model_name in models:
        full = recorded_full_fit(project, model_name)
        fit_epochs = bench.fit_epochs or full.get("epochs_run") or DEFAULT_FIT_EPOCHS
        figures = bench_model(model_name, len(params.data.classes), sample, settings, runtime, report["peak"],
                              n_train, n_val, fit_epochs)
        figures["inference"]["batch_predict"] = batch_predict_for(project, model_name, batch_paths)
        if bench.frozen:
            estimate = None
            if full.get("epochs_run"):
                first_batch = figures["inference"]["batched"][str(settings.inference_batch_sizes[0])]
                estimate = full["epochs_run"] * (figures["training"]["project"]["epoch_s_extrapolated"]
                                                 + n_val / first_batch["images_per_s"])
            figures["frozen"] = frozen_for(project, model_name, runtime, n_train, n_val, estimate)
        report["models"][model_name] = figures
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["wall_s"] = time.perf_counter() - started
    return report

