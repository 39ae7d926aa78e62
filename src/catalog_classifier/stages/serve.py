"""Entry points that use a registered model: ``predict`` on files or folders, and the HTTP model server."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from catalog_classifier.config.layout import Project
from catalog_classifier.modeling.prediction import expand_paths
from catalog_classifier.ops.io import write_csv
from catalog_classifier.registry.tracking import setup_mlflow
from catalog_classifier.registry.versions import CHAMPION

log = logging.getLogger(__name__)


def model_uri(project: Project, version: str | None = None, uri: str | None = None) -> str:
    """An explicit URI, else a version of the registered model, else its champion."""
    if uri:
        return uri
    name = project.params.registry.model_name
    return f"models:/{name}/{version}" if version else f"models:/{name}@{CHAMPION}"


def run_predict(project: Project, paths: Sequence[str], uri: str, output: Path | None) -> pd.DataFrame:
    """CSV of image, label, probability, top-3 (and a per-file error) to ``output`` or stdout."""
    from mlflow.exceptions import MlflowException

    from catalog_classifier.registry.served import load_served_model

    files = expand_paths(paths)
    if not files:
        raise FileNotFoundError(f"no image found in {', '.join(paths)}")
    setup_mlflow(project.params.mlflow, project.root)
    try:
        served = load_served_model(uri)
    except MlflowException as err:
        raise FileNotFoundError(f"cannot load {uri}: {str(err).splitlines()[0]}") from None
    frame = served.classifier.predict_files(files)
    if output is None:
        frame.to_csv(sys.stdout, index=False, lineterminator="\n")
    else:
        write_csv(output, frame)
    failed = int((frame["error"] != "").sum())
    log.info("predicted %d image(s) with %s (%d unreadable)", len(frame) - failed, uri, failed)
    return frame


def run_serve(project: Project, host: str, port: int) -> None:
    """Serve the champion with ``mlflow models serve --env-manager local`` (replaces this process)."""
    import mlflow

    from catalog_classifier.registry.served import exec_server
    from catalog_classifier.registry.versions import champion_version

    setup_mlflow(project.params.mlflow, project.root)
    name = project.params.registry.model_name
    version = champion_version(mlflow.MlflowClient(), name)
    if version is None:
        raise FileNotFoundError(f"registered model {name!r} has no champion yet: run `dvc repro` "
                                "(promote stage) or `catalog-classifier promote`")
    print(f"serving {name} v{version} (champion) on http://{host}:{port}/invocations", file=sys.stderr)
    # The version, not the alias: what runs is fixed for the server's lifetime and says so in its logs.
    exec_server(f"models:/{name}/{version}", mlflow.get_tracking_uri(), host, port)
