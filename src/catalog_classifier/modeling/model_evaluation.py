"""Evaluating one trained model: validation and test metrics, per-image predictions, speed through the predict
path, and calibration with the auto-labelling threshold (fitted on validation, reported on test).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from catalog_classifier.config.layout import Project
from catalog_classifier.config.params import UncertaintyParams
from catalog_classifier.data.imageset import decode_manifest
from catalog_classifier.data.manifests import read_manifest
from catalog_classifier.modeling.autolabel import AutolabelReport, CalibrationSet, autolabel_metrics, autolabel_report
from catalog_classifier.modeling.calibration import calibrated_probabilities
from catalog_classifier.modeling.conformal import conformal_metrics, conformal_summary
from catalog_classifier.modeling.cross_validation import calibration_logits
from catalog_classifier.modeling.fit_loop import predict_logits
from catalog_classifier.modeling.metrics import (
    classification_metrics,
    plot_confusion,
    plot_reliability,
    predictions_frame,
)
from catalog_classifier.modeling.models import load_classifier
from catalog_classifier.modeling.prediction import ImageClassifier, pipeline_inference_settings, single_image_latency
from catalog_classifier.modeling.torch_setup import resolve_runtime
from catalog_classifier.modeling.uncertainty import Interval, bootstrap_macro_f1
from catalog_classifier.ops.io import read_json


@dataclass
class Evaluation:
    """What the evaluate stage writes: metrics (metrics.json), test and val prediction frames, auto-labelling."""

    results: dict[str, Any]
    frames: dict[str, pd.DataFrame]
    autolabel: AutolabelReport


def _inference_throughput(model: torch.nn.Module, images: Any, batch_size: int, runtime: Any) -> float:
    started = time.perf_counter()
    predict_logits(model, images, batch_size, runtime)
    return len(images) / (time.perf_counter() - started)


def _single_image_latency(project: Project, model: torch.nn.Module, config: dict[str, Any],
                          names: list[str]) -> dict[str, float]:
    """p50/p95 ms of one test image at a time through the same predict path the served model uses."""
    params = project.params
    settings = pipeline_inference_settings(params)
    paths = [project.path(params.data.images_dir) / name for name in names]
    timing = single_image_latency(ImageClassifier(model, config, settings), paths,
                                  params.evaluate.latency_warmup, params.evaluate.latency_repeats)
    return {"p50": round(timing["p50_ms"], 2), "p95": round(timing["p95_ms"], 2)}


def _prediction_sets(calibration: CalibrationSet, logits: dict[str, Any], labels: dict[str, Any], classes: list[str],
                     temperature: float, project: Project) -> dict[str, Any]:
    """Conformal prediction sets calibrated on the temperature-scaled calibration predictions (out-of-fold where
    the fit is cheap, else val), measured on test."""
    autolabel = project.params.autolabel
    fitted_on = calibrated_probabilities(calibration.logits, temperature)
    test = calibrated_probabilities(logits["test"], temperature)
    return conformal_summary(fitted_on, calibration.labels, test, labels["test"], classes, autolabel.set_alpha,
                             autolabel.interval_confidence, calibration=calibration.source)


def evaluate_model(project: Project, model_name: str) -> Evaluation:
    """Score the trained model on validation and test; fit the temperature and the auto-labelling threshold on
    validation and measure what they give on test. Draws the confusion and reliability figures in the eval folder.
    """
    params = project.params
    classes = params.data.classes
    model, config = load_classifier(project.weights(model_name))
    runtime = resolve_runtime(params.train.channels_last, params.train.bf16, params.train.num_threads)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    images_dir = project.path(params.data.images_dir)
    out_dir = project.eval_dir(model_name)
    results: dict[str, Any] = {"model": model_name}
    frames: dict[str, pd.DataFrame] = {}
    logits: dict[str, torch.Tensor] = {}
    labels: dict[str, Any] = {}
    for split in ("val", "test"):
        images = decode_manifest(read_manifest(project, split), images_dir, model.data_config)
        logits[split] = predict_logits(model, images, params.evaluate.batch_size, runtime)
        probabilities = torch.softmax(logits[split], 1)
        labels[split] = images.labels.numpy()
        predicted = probabilities.argmax(1).numpy()
        results[split] = classification_metrics(labels[split], predicted, classes)
        frames[split] = predictions_frame(images.names, labels[split], probabilities.numpy(), classes)
        if split == "test":
            plot_confusion(labels[split], predicted, classes,
                           f"{model_name}: test confusion (macro-F1 {results['test']['f1_macro']:.3f})",
                           out_dir / "confusion.png")
            results["inference_images_per_s"] = round(
                _inference_throughput(model, images, params.evaluate.batch_size, runtime), 2)
            results["latency_ms"] = _single_image_latency(project, model, config, images.names)
    for split in ("val", "test"):
        results[split]["f1_macro_interval"] = f1_interval(labels[split], logits[split].argmax(1).numpy(),
                                                          len(classes), params.uncertainty).to_dict()
    calibration = calibration_set(project, model_name, logits["val"], labels["val"])
    autolabel = autolabel_report(model_name, logits, labels, classes, params.autolabel, calibration)
    autolabel.summary["conformal"] = _prediction_sets(calibration, logits, labels, classes,
                                                      autolabel.summary["temperature"], project)
    for split, frame in frames.items():  # the calibrated confidence and the decision, per image
        frame["calibrated_confidence"] = autolabel.confidence[split].round(6)
        frame["auto_labelled"] = autolabel.auto[split]
    results.update(autolabel_metrics(autolabel.summary))
    results.update(conformal_metrics(autolabel.summary["conformal"]))
    results["prediction_sets"] = autolabel.summary["conformal"]["test"]
    plot_reliability(autolabel.reliability_before, autolabel.reliability_after,
                     (f"{model_name}: test, uncalibrated (ECE {autolabel.summary['ece']['test_before']:.3f})",
                      f"{model_name}: test, T={autolabel.summary['temperature']:.2f} "
                      f"(ECE {autolabel.summary['ece']['test_after']:.3f})"), out_dir / "reliability.png")
    return Evaluation(results, frames, autolabel)


def f1_interval(truth: Any, predicted: Any, n_classes: int, uncertainty: UncertaintyParams) -> Interval:
    """macro-F1 with its percentile bootstrap interval (params.uncertainty: level, resamples, seed)."""
    return bootstrap_macro_f1(truth, predicted, n_classes, resamples=uncertainty.bootstrap_resamples,
                              confidence=uncertainty.confidence, seed=uncertainty.seed)


def calibration_set(project: Project, model_name: str, val_logits: Any, val_labels: Any) -> CalibrationSet:
    """The out-of-fold predictions of the train stage's cross-validation when it ran (about 5x the images of
    val), else the validation split."""
    summary_file, oof_file = project.cv_summary(model_name), project.oof_predictions(model_name)
    if summary_file.is_file() and oof_file.is_file():
        summary = read_json(summary_file)
        if summary.get("used"):
            logits, labels = calibration_logits(pd.read_csv(oof_file, dtype={"image": str}))
            return CalibrationSet(logits, labels, f"out-of-fold ({summary['folds']}-fold on train+val, "
                                                  f"{len(labels)} images)")
    return CalibrationSet(val_logits, val_labels, f"val ({len(val_labels)} images)")


def class_report_markdown(model_name: str, results: dict[str, Any], classes: list[str]) -> str:
    lines = [f"# {model_name}", ""]
    for split in ("val", "test"):
        split_results = results[split]
        interval = split_results.get("f1_macro_interval")
        shown = (f" ({interval['confidence']:.0%} bootstrap interval {interval['low']:.4f}-{interval['high']:.4f})"
                 if interval else "")
        lines += [f"## {split}: macro-F1 {split_results['f1_macro']:.4f}{shown}, "
                  f"accuracy {split_results['accuracy']:.4f}", "",
                  "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        for name in classes:
            row = split_results["per_class"][name]
            lines.append(f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} "
                         f"| {row['support']} |")
        lines.append("")
    return "\n".join(lines)
