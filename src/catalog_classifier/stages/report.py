"""Report stage: write ``index.html`` (atomically) and attach it to every model's MLflow run.

Why on the model runs rather than in a run of its own: the page describes exactly those runs (one per model in
params), so it is found where a reader already is (each run's artifacts, ``report/index.html``, which the MLflow
UI previews), and the experiment keeps one run per trained model, an invariant the flows summary and the
tracking tests rely on. Attaching an artifact does not reopen a run: its status and end time stay as they were.

The registry is read before rendering; when it cannot be read the page says so and is still written. Logging
needs the tracking store: when it is down the page is on disk and the command fails with a clear message, so
DVC runs the stage again next time instead of recording a report that never reached MLflow.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from catalog_classifier.config.layout import Project
from catalog_classifier.infra.postgres import redact_url
from catalog_classifier.ops.gitstate import git_state
from catalog_classifier.ops.io import read_json, write_text
from catalog_classifier.registry.tracking import check_server, data_version, resolve_tracking_uri
from catalog_classifier.reporting.charts import EmbedSettings
from catalog_classifier.reporting.collector import RegistryState, collect, read_registry
from catalog_classifier.reporting.page import render_html

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

ARTIFACT_PATH = "report"
SQLITE = "sqlite:///"


def _client(project: Project) -> MlflowClient:
    """An MLflow client on the project's store; never creates a sqlite database that is not there yet."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(project.params.mlflow, project.root)
    if uri.startswith(SQLITE) and not Path(uri[len(SQLITE):]).is_file():
        raise FileNotFoundError(f"no MLflow store at {uri[len(SQLITE):]}: nothing has been tracked yet")
    check_server(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


def registry_state(project: Project) -> RegistryState:
    """The registry as :func:`read_registry` sees it, or a state whose ``error`` says why it could not be read."""
    name = project.params.registry.model_name
    uri = resolve_tracking_uri(project.params.mlflow, project.root)
    location = redact_url(os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    try:
        return replace(read_registry(_client(project), name), location=location)
    except Exception as err:  # noqa: BLE001 - whatever failed (server down, no store, bad schema), the page renders
        log.warning("report: registry %r not read: %s", name, err)
        return RegistryState(name, error=str(err).strip().splitlines()[0] if str(err).strip() else repr(err),
                             location=location)


def embed_settings(project: Project) -> EmbedSettings:
    report = project.params.report
    return EmbedSettings(max_width=report.max_image_width, png_max_kb=report.png_max_kb,
                         jpeg_quality=report.jpeg_quality)


def write_report(project: Project, registry: RegistryState | None = None) -> Path:
    """Render the page from the project's outputs and write it atomically; returns its path."""
    registry = registry if registry is not None else registry_state(project)
    context = {"git commit": git_state(project.root).short, "data version": data_version(project.root)}
    inputs = collect(project, registry, datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), context)
    page = project.report_page()
    write_text(page, render_html(inputs, embed_settings(project)))
    log.info("report: %s (%.1f MB)", page, page.stat().st_size / 1e6)
    return page


def run_exists(client: MlflowClient, run_id: str) -> bool:
    """Whether the store holds ``run_id``; any other failure (server down, bad schema) is raised as it is."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        client.get_run(run_id)
    except MlflowException as err:
        if err.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return False
        raise
    return True


def log_report(project: Project, page: Path) -> list[str]:
    """Attach ``page`` to the MLflow run of every model that has one (run.json); returns those run ids."""
    client = _client(project)
    run_ids = []
    for model in project.params.models:
        record = project.run_record(model)
        if not record.is_file():
            log.warning("report: %s has no run.json: the page is not attached to a run of it", model)
            continue
        run_id = read_json(record)["run_id"]
        if not run_exists(client, run_id):
            # Outputs trained against another store (a clone's earlier mlruns/, a cleaned store): say it, go on.
            log.warning("report: %s's run %s (run.json) is not in this MLflow store: the page is not attached to it",
                        model, run_id)
            continue
        client.log_artifact(run_id, str(page), artifact_path=ARTIFACT_PATH)
        run_ids.append(run_id)
    return run_ids


def run_report(project: Project, log_to_mlflow: bool = True) -> Path:
    page = write_report(project)
    if log_to_mlflow:
        runs = log_report(project, page)
        log.info("report: attached as %s/%s to run(s) %s", ARTIFACT_PATH, page.name, ", ".join(runs) or "none")
    print(f"report: {page}")
    return page
