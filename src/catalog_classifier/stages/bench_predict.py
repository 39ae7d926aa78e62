"""``catalog-classifier bench-predict`` (``make bench-predict``): the prediction runtimes side by side on the
champion's architecture and weights, ONNX parity on the real val+test images, the runtime choice this machine
gets, and the streaming batch prediction end to end (images/s with start-up, peak RSS) on catalogues of
``batch_predict.bench_rows`` rows. JSON and Markdown in ``bench.out_dir`` (``predict.json``: read by ``auto``)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from catalog_classifier.benchmarks.batch_predict_speed import predict_classifier
from catalog_classifier.benchmarks.prediction_runtimes import (
    cli_command,
    decide,
    predict_run,
    runtime_figures,
    runtime_variants,
    write_repeated_csv,
)
from catalog_classifier.benchmarks.suite import cpu_name
from catalog_classifier.config.layout import Project
from catalog_classifier.data.manifests import read_manifest
from catalog_classifier.modeling.batch_prediction import StreamSettings
from catalog_classifier.modeling.onnx_runtime import export_classifier_dir, parity
from catalog_classifier.modeling.prediction import pipeline_inference_settings, write_classifier_dir
from catalog_classifier.modeling.torch_setup import cpu_has_native_bf16
from catalog_classifier.ops.io import read_json, write_json, write_text

log = logging.getLogger(__name__)

QUICK_OVERRIDES: dict[str, Any] = {"bench.latency_warmup": 1, "bench.latency_repeats": 5,
                                   "batch_predict.bench_rows": [200], "batch_predict.bench_stream_images": 64}
BATCH = 32


def selected_model(project: Project) -> str:
    """The model the last compare stage selected (the champion's), else the first one with trained weights."""
    comparison = project.path(project.params.compare.out_json)
    if comparison.is_file():
        selected = read_json(comparison).get("selected")
        if selected in project.params.models:
            return str(selected)
    trained = [name for name in project.params.models if project.weights(name).is_file()]
    return trained[0] if trained else project.params.models[0]


def _served_folder(project: Project, model_name: str, classifier: Any, folder: Path) -> Path:
    """The classifier folder of these weights (data files, as a registered version holds them), saved locally:
    what ``predict --model-uri`` loads."""
    from catalog_classifier.modeling.models import save_classifier

    weights = project.weights(model_name)
    if not weights.is_file():
        weights = folder / "weights" / "model.pt"
        weights.parent.mkdir(parents=True)
        save_classifier(classifier.model, model_name, classifier.classes, weights)
    autolabel = project.autolabel(model_name)
    directory = write_classifier_dir(weights, folder / "classifier", pipeline_inference_settings(project.params),
                                     autolabel if autolabel.is_file() else None)
    # As a registered version carries it: predict loads the graph instead of exporting at start (an export
    # took the 10,000-row run's peak RSS to 2.3 GB, against 1.4 GB with the registered graph).
    export_classifier_dir(directory)
    return directory


def end_to_end(project: Project, pyfunc: Path, images: list[Path], rows: int, runtime: str,
               folder: Path) -> dict[str, Any]:
    """One ``catalog-classifier predict --input`` child over ``rows`` rows: images/s with start-up, peak RSS."""
    catalogue = write_repeated_csv(folder / f"catalogue_{rows}.csv", images, rows)
    output = folder / f"predictions_{rows}_{runtime}.csv"
    command = cli_command("predict", "--input", str(catalogue), "--output", str(output), "--model-uri", str(pyfunc),
                          "--no-resume", "--params", str(project.root / "params.yaml"),
                          "--set", f"batch_predict.runtime={runtime}",
                          "--set", f"mlflow.tracking_uri=sqlite:///{folder / 'mlflow.db'}")
    log.info("end to end: %d rows on %s", rows, runtime)
    figures = predict_run(command, {**os.environ, "MLFLOW_TRACKING_URI": ""})
    summary = json.loads(output.with_name(f"{output.stem}_summary.json").read_text(encoding="utf-8"))
    return {"rows": rows, "runtime": runtime, **figures, "images_per_s_with_startup": rows / figures["wall_s"],
            "images_per_s_streaming": summary["images_per_s"], "n_unreadable": summary["n_unreadable"],
            "command": " ".join(command)}


def run_bench_predict(project: Project, quick: bool = False) -> dict[str, Any]:
    params, bench = project.params, project.params.bench
    model_name = selected_model(project)
    classifier, built_from = predict_classifier(
        model_name, list(params.data.classes), project.weights(model_name), project.autolabel(model_name),
        pipeline_inference_settings(params), params.train.image_size, bench.seed)
    images_dir = project.path(params.data.images_dir)
    parity_paths = [images_dir / name for split in ("val", "test") for name in read_manifest(project, split)["image"]]
    all_images = sorted(images_dir.glob("*.jpg"))
    report: dict[str, Any] = {"model": model_name, "weights": built_from, "quick": quick,
                              "machine": {"cpu": cpu_name(), "bf16": cpu_has_native_bf16(),
                                          "threads": classifier.runtime.threads, "loadavg_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as scratch_name:
        scratch = Path(scratch_name)
        variants = runtime_variants(classifier, scratch, params.batch_predict.onnx_batch)
        reference = variants["torch-fp32"]
        report["parity"] = {name: parity(reference, candidate, parity_paths)
                            for name, candidate in variants.items() if name != "torch-fp32"}
        report["runtimes"] = runtime_figures(variants, parity_paths, bench.latency_warmup, bench.latency_repeats,
                                             BATCH, 5 if not quick else 1, params.batch_predict.bench_stream_images,
                                             StreamSettings.from_params(params.batch_predict))
        report["choice"] = decide(report["runtimes"], classifier.runtime.bf16)
        pyfunc = _served_folder(project, model_name, classifier, scratch / "served")
        report["end_to_end"] = [end_to_end(project, pyfunc, all_images, rows, report["choice"]["batch"], scratch)
                                for rows in params.batch_predict.bench_rows]
    report["machine"]["loadavg_end"] = os.getloadavg()
    out_dir = project.path(bench.out_dir) / ("quick" if quick else "")
    table = markdown(report)
    write_json(out_dir / "predict.json", {**report, "choice_figures": report["choice"]["choice_figures"]})
    write_text(out_dir / "predict.md", table)
    print(table)
    return report


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [f"# Prediction runtimes: {report['model']} ({report['weights']} weights)", "",
             f"CPU {machine['cpu']}, {machine['threads']} threads, bf16 {'yes' if machine['bf16'] else 'no'}; "
             f"load average {machine['loadavg_start'][0]:.1f} at start.", "",
             "| runtime | 1-image p50 ms (decode+resize+forward) | p95 ms | batch-32 images/s (forward) "
             "| streaming images/s (decode + forward, in process) |",
             "|---|---:|---:|---:|---:|"]
    for name, figures in report["runtimes"].items():
        lines.append(f"| {name} | {figures['p50_ms']:.1f} | {figures['p95_ms']:.1f} | "
                     f"{figures['batch_images_per_s']:.1f} | {figures['streaming_images_per_s']:.1f} |")
    lines += ["", "| parity vs torch-fp32 | images | top-1 agreement | max abs logit diff |", "|---|---:|---:|---:|"]
    for name, figures in report["parity"].items():
        lines.append(f"| {name} | {figures['n_images']} | {figures['top1_agreement']:.2%} | "
                     f"{figures['max_abs_logit_diff']:.2e} |")
    choice = report["choice"]
    lines += ["", f"Chosen: batch prediction **{choice['batch']}**, single image **{choice['single']}**.", "",
              "| rows | runtime | wall s | images/s with start-up | images/s streaming | peak RSS MB |",
              "|---:|---|---:|---:|---:|---:|"]
    for run in report["end_to_end"]:
        lines.append(f"| {run['rows']:,} | {run['runtime']} | {run['wall_s']:.1f} | "
                     f"{run['images_per_s_with_startup']:.1f} | {run['images_per_s_streaming']} | "
                     f"{run['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"
