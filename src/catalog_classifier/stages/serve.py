"""Entry points that use a registered model: batch ``predict`` (files, folders or a CSV), and the HTTP model server.

Both load a version through :func:`catalog_classifier.registry.artifact.fetch_verified`: data files only, each
checked against the sha256 recorded at registration; both run with MLflow's pickle deserialisation disabled.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from catalog_classifier.config.layout import Project
from catalog_classifier.registry.tracking import setup_mlflow
from catalog_classifier.registry.versions import CHAMPION

log = logging.getLogger(__name__)


def model_uri(project: Project, version: str | None = None, uri: str | None = None) -> str:
    """An explicit URI, else a version of the registered model, else its champion."""
    if uri:
        return uri
    name = project.params.registry.model_name
    return f"models:/{name}/{version}" if version else f"models:/{name}@{CHAMPION}"


def run_predict(project: Project, sources: Sequence[str], uri: str, output: Path | None) -> pd.DataFrame:
    """Predictions (image, label, calibrated confidence, top-3, needs_review, error) to ``output`` or stdout;
    with ``output``, the review queue and the summary beside it. ``sources``: one CSV, or files and folders."""
    from mlflow.exceptions import MlflowException

    from catalog_classifier.modeling.batch_prediction import (
        describe_summary,
        predict_batch,
        read_inputs,
        summarise,
        write_outputs,
    )
    from catalog_classifier.registry import artifact
    from catalog_classifier.registry.served import NO_PICKLE_ENV

    batch = read_inputs(sources)  # before loading the model: a bad input fails at once
    os.environ[NO_PICKLE_ENV] = "false"  # nothing here unpickles; no MLflow loader may either
    setup_mlflow(project.params.mlflow, project.root)
    try:
        classifier, _ = artifact.load_champion(uri)
    except MlflowException as err:
        raise FileNotFoundError(f"cannot load {uri}: {str(err).splitlines()[0]}") from None
    frame = predict_batch(classifier, batch)
    summary = {**summarise(frame, classifier, batch.labels), "model_uri": uri}
    if output is None:
        frame.to_csv(sys.stdout, index=False, lineterminator="\n")
    else:
        review, summary_file = write_outputs(output, frame, summary)
        log.info("wrote %s, review queue %s, summary %s", output, review, summary_file)
    # Standard output carries the CSV when there is no output file: the summary line must not end up in it.
    print(describe_summary(summary), file=sys.stderr if output is None else sys.stdout)
    return frame


def run_serve(project: Project, host: str, port: int) -> None:
    """Serve the champion with ``mlflow models serve --env-manager local`` (replaces this process): its data files,
    verified, inside a pyfunc folder written here whose loader is the package's own code."""
    import mlflow

    from catalog_classifier.ops.exposure import require_loopback_or_auth
    from catalog_classifier.registry.artifact import fetch_verified
    from catalog_classifier.registry.served import exec_server, write_local_pyfunc
    from catalog_classifier.registry.versions import champion_version

    # mlflow models serve answers anyone who reaches its port: loopback only, checked before anything is loaded.
    require_loopback_or_auth("the model server", host, None, "serve --host")
    setup_mlflow(project.params.mlflow, project.root)
    name = project.params.registry.model_name
    version = champion_version(mlflow.MlflowClient(), name)
    if version is None:
        raise FileNotFoundError(f"registered model {name!r} has no champion yet: run `dvc repro` "
                                "(promote stage) or `catalog-classifier promote`")
    # The version, not the alias: what runs is fixed for the server's lifetime and says so in its logs. The folder
    # outlives this process (it becomes the server); it sits in the system's temporary directory.
    folder = Path(tempfile.mkdtemp(prefix="catalog-serve-"))
    verified = fetch_verified(f"models:/{name}/{version}", folder / "classifier")
    local = write_local_pyfunc(verified.directory, folder / "pyfunc")
    print(f"serving {name} v{version} (champion) on http://{host}:{port}/invocations", file=sys.stderr)
    exec_server(str(local), mlflow.get_tracking_uri(), host, port)
