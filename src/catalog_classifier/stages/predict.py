"""Entry point for batch ``predict`` with a registered model: files, folders or a CSV in, one CSV row per image out.

The version is loaded through :func:`catalog_classifier.registry.artifact.fetch_verified`: data files only, each
checked against the sha256 recorded at registration; it runs with MLflow's pickle deserialisation disabled.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from catalog_classifier.config.layout import Project
from catalog_classifier.registry.tracking import setup_mlflow
from catalog_classifier.registry.versions import CHAMPION

log = logging.getLogger(__name__)

PREDICT_BENCH = "predict.json"  # bench-predict's record in bench.out_dir: which runtime is faster here


def model_uri(project: Project, version: str | None = None, uri: str | None = None) -> str:
    """An explicit URI, else a version of the registered model, else its champion."""
    if uri:
        return uri
    name = project.params.registry.model_name
    return f"models:/{name}/{version}" if version else f"models:/{name}@{CHAMPION}"


def run_predict(project: Project, sources: Sequence[str], uri: str, output: Path | None,
                resume: bool = True, rows: str | None = None) -> dict[str, Any]:
    """Predictions (image, label, calibrated confidence, top-3, needs_review, error) streamed to ``output`` or
    stdout; with ``output``, resumable, and the review queue and the summary beside it. ``sources``: one CSV, or
    files and folders. Returns the summary."""
    from mlflow.exceptions import MlflowException

    from catalog_classifier.modeling.batch_prediction import parse_row_range, read_inputs
    from catalog_classifier.modeling.inference_runtime import ONNX, choose_runtime
    from catalog_classifier.modeling.onnx_runtime import with_onnx
    from catalog_classifier.registry.model_access import classify_load_error, load_model_or_classify
    from catalog_classifier.registry.pyfunc_model import NO_PICKLE_ENV
    from catalog_classifier.registry.tracking import resolve_tracking_uri

    # Before loading the model: a bad input fails at once.
    batch = read_inputs(sources, parse_row_range(rows) if rows else None)
    os.environ[NO_PICKLE_ENV] = "false"  # nothing here unpickles; no MLflow loader may either
    tracking_uri = resolve_tracking_uri(project.params.mlflow, project.root)
    try:
        setup_mlflow(project.params.mlflow, project.root)
    except MlflowException as err:
        raise classify_load_error(err, uri, tracking_uri) from None
    settings = project.params.batch_predict
    runtime = choose_runtime(settings.runtime, project.path(project.params.bench.out_dir) / PREDICT_BENCH, "batch")
    with tempfile.TemporaryDirectory(prefix="catalog-predict-") as scratch:
        served = load_model_or_classify(uri, tracking_uri, Path(scratch) / "model")
        classifier = served.classifier
        if runtime == ONNX:
            classifier = with_onnx(classifier, served.directory, Path(scratch), settings.onnx_batch)
        return _predict_with(classifier, served, batch, uri, output, settings, resume)


def _predict_with(classifier: Any, served: Any, batch: Any, uri: str, output: Path | None, settings: Any,
                  resume: bool) -> dict[str, Any]:
    from catalog_classifier.modeling.batch_prediction import (
        StreamSettings,
        SummaryCounter,
        describe_summary,
        predict_to_file,
        predict_to_stream,
        summarise_file,
        write_companions,
    )
    from catalog_classifier.modeling.inference_runtime import runtime_name
    from catalog_classifier.registry.model_access import model_identity

    stream = StreamSettings.from_params(settings)
    if output is None:
        counter = SummaryCounter(batch.has_labels)
        figures = predict_to_stream(classifier, batch, sys.stdout, counter, stream)
        summary = {**counter.summary(classifier), "model_uri": uri, "runtime": runtime_name(classifier),
                   "rows_predicted": figures.rows_predicted, "images_per_s": figures.images_per_s}
        # Standard output carries the CSV when there is no output file: the summary line must not end up in it.
        print(describe_summary(summary), file=sys.stderr)
        return summary
    # A partial output resumes only with the same inputs, model files and runtime: no file mixes two models' answers.
    state = {"inputs": batch.identity(), "model_uri": uri, "model": model_identity(served),
             "runtime": runtime_name(classifier)}
    figures = predict_to_file(classifier, batch, output, state, stream, resume=resume)
    summary, queue = summarise_file(output, batch, classifier)
    summary.update(model_uri=uri, runtime=runtime_name(classifier), rows_resumed=figures.rows_resumed,
                   rows_predicted=figures.rows_predicted, images_per_s=figures.images_per_s,
                   decode_workers=stream.decode_workers, batch_size=classifier.settings.batch_size)
    review, summary_file = write_companions(output, queue, summary)
    resumed = f" (resumed after {figures.rows_resumed} rows already written)" if figures.rows_resumed else ""
    log.info("wrote %s%s, review queue %s, summary %s", output, resumed, review, summary_file)
    print(describe_summary(summary))
    return summary
