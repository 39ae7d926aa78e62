"""The bench's suite: every model measured side by side on one machine in one run, from the project's params.

The measurements themselves are in ``loop_speed`` (training and inference loops, the machine's peak),
``compile_speed``, ``frozen_speed`` and ``batch_predict_speed``; this module runs them per model (:func:`bench_model`)
and for every model; the Markdown page is
:mod:`catalog_classifier.benchmarks.results_page`; the bench stage writes and logs what this returns.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from catalog_classifier.benchmarks.batch_predict_speed import (
    batch_predict_throughput,
    predict_classifier,
    predict_paths,
)
from catalog_classifier.benchmarks.compile_speed import bench_compile
from catalog_classifier.benchmarks.frozen_speed import fit_settings_for_bench, frozen_figures, frozen_versus_full
from catalog_classifier.benchmarks.loop_speed import (
    DEFAULT_FIT_EPOCHS,
    LATENCY_P50_TARGETS_MS,
    TRAIN_RATIO_TARGETS,
    BenchSettings,
    Sample,
    count_flops,
    matmul_peak,
    preprocess_one,
    take_sample,
    time_inference,
    time_naive_training,
    time_project_training,
    training_figures,
)
from catalog_classifier.config.layout import Project
from catalog_classifier.data.imageset import decode_manifest
from catalog_classifier.data.manifests import read_manifest
from catalog_classifier.data.splitting import SPLITS
from catalog_classifier.modeling.fit_loop import settings_from
from catalog_classifier.modeling.models import create_classifier
from catalog_classifier.modeling.prediction import (
    ImageClassifier,
    InferenceSettings,
    pipeline_inference_settings,
    single_image_latency,
    time_calls,
)
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
