"""MLflow wiring: where the store is, which experiment, and the provenance tags every run carries."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from catalog_classifier.config.params import MlflowParams
from catalog_classifier.ops.gitstate import dirty_files_text, git_state

log = logging.getLogger(__name__)

SERVER_PROBE_TIMEOUT_S = 5.0
# MLflow 3's experiment type (the tag its UI writes when a user picks one): this project trains models.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached; raised before any training starts."""


def resolve_tracking_uri(mlflow_params: MlflowParams, project_root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the params URI with a relative sqlite path made absolute."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or mlflow_params.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        database = (project_root / uri[len(prefix):]).resolve()
        database.parent.mkdir(parents=True, exist_ok=True)
        return f"{prefix}{database}"
    return uri


def artifact_location(mlflow_params: MlflowParams, project_root: Path) -> str:
    root = mlflow_params.artifact_root
    return (root if root.is_absolute() else (project_root / root).resolve()).as_uri()


def check_server(uri: str) -> None:
    """Fail fast with one clear line when an HTTP tracking server is not answering, or answers but cannot reach its
    database (a server on PostgreSQL whose database is down answers 500 to every call, which MLflow's client
    retries for minutes): one plain request each, a short timeout, no retries."""
    if not uri.startswith(("http://", "https://")):
        return
    base = uri.rstrip("/")
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=SERVER_PROBE_TIMEOUT_S):
            pass
    except (urllib.error.URLError, OSError) as err:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({getattr(err, 'reason', err)}); "
            "start it (make ui) or unset MLFLOW_TRACKING_URI to use the local store"
        ) from None
    # /health does not touch the backend store: one cheap read that does.
    # With the client's own credentials (an authenticating server answers 401 to an anonymous probe before it
    # would touch its store): the ones MLflow's client sends, from the environment.
    headers = {"Content-Type": "application/json"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    probe = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search", method="POST",
                                   data=json.dumps({"max_results": 1}).encode(), headers=headers)
    try:
        with urllib.request.urlopen(probe, timeout=SERVER_PROBE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError as err:
        if err.code < 500:
            return  # an auth or proxy answer is the real call's to report
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} answers but its backend store does not (HTTP {err.code}: "
            f"{_error_message(err)}); is its database up? (make stack-status)") from None
    except (urllib.error.URLError, OSError) as err:
        raise TrackingUnavailable(f"MLflow tracking server {uri} did not answer a store read within "
                                  f"{SERVER_PROBE_TIMEOUT_S:.0f} s ({getattr(err, 'reason', err)})") from None


def _error_message(err: urllib.error.HTTPError, limit: int = 160) -> str:
    """The first line of an MLflow error answer (its JSON ``message``), shortened."""
    try:
        body = err.read().decode("utf-8", errors="replace")
        message = str(json.loads(body).get("message", body))
    except (OSError, ValueError, AttributeError):
        message = str(err.reason)
    first = message.strip().splitlines()[0] if message.strip() else str(err.reason)
    return first if len(first) <= limit else first[:limit - 1] + "…"


def setup_mlflow(mlflow_params: MlflowParams, project_root: Path) -> str:
    """Point MLflow at the store and return the experiment id (created with our artifact root if new)."""
    import mlflow

    uri = resolve_tracking_uri(mlflow_params, project_root)
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    # Registry beside the runs, unless MLFLOW_REGISTRY_URI says otherwise. Both set_* calls also export their URI
    # (MLflow's design: subprocesses such as `mlflow models serve` inherit it), so a second project set up in the
    # same process keeps the first one's store unless the two variables are cleared first (the tests do).
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    experiment = mlflow.get_experiment_by_name(mlflow_params.experiment)
    if experiment is None:
        # A tracking server stores artifacts where it was told to (proxied: clients upload through it); a path on
        # this machine would mean nothing to the server nor to the other clients.
        location = None if uri.startswith(("http://", "https://")) else artifact_location(mlflow_params, project_root)
        try:
            return mlflow.create_experiment(
                mlflow_params.experiment, artifact_location=location,
                tags={EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND},
            )
        except mlflow.exceptions.MlflowException:
            # Another process created it between our lookup and create.
            experiment = mlflow.get_experiment_by_name(mlflow_params.experiment)
            if experiment is None:
                raise
    mark_training_experiment(experiment.experiment_id, experiment.tags)
    return experiment.experiment_id


def git_commit(project_root: Path) -> str:
    """HEAD commit, suffixed ``-dirty`` when code or params differ from it (DVC's outputs and ``dvc.lock`` do not
    count: :mod:`catalog_classifier.ops.gitstate`); ``unknown`` outside git."""
    return git_state(project_root).tag


def git_tags(project_root: Path) -> dict[str, str]:
    """``git_commit``, and ``git_dirty_files`` (the files that make it dirty, truncated) when it is dirty."""
    state = git_state(project_root)
    tags = {"git_commit": state.tag}
    if state.dirty:
        tags["git_dirty_files"] = dirty_files_text(state.dirty_files)
    return tags


def data_version(project_root: Path) -> str:
    """md5 of the data folder as pinned in ``data.dvc`` (the dataset version a run used)."""
    pointer = project_root / "data.dvc"
    if not pointer.is_file():
        return "untracked"
    with pointer.open(encoding="utf-8") as handle:
        outs = (yaml.safe_load(handle) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", "unknown"))


def metric_key(name: str) -> str:
    """MLflow metric names allow only letters, digits, ``_-. :/``; class names like ``A & B`` need mapping."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


def flatten(prefix: str, tree: dict[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"prefix.a.b": 1}`` for ``mlflow.log_params``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(name, value))
        else:
            flat[name] = value
    return flat


def mark_training_experiment(experiment_id: str, tags: dict[str, str]) -> None:
    """Tag the experiment as model training (MLflow 3's ``mlflow.experimentKind``), once, for stores made earlier.

    What MLflow 3.17's UI opens on is its own GenAI / Model training switch (per browser), not this tag; the links
    from :func:`training_runs_url` carry the switch. The tag records the kind for the API and the UIs that read it.
    """
    import mlflow

    if tags.get(EXPERIMENT_KIND_TAG) != TRAINING_EXPERIMENT_KIND:
        mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND)


def training_runs_url(server_url: str, experiment_id: str) -> str:
    """A link that opens the experiment on its training runs in MLflow 3.17's UI (whatever the browser's switch)."""
    return f"{server_url.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def start_system_metrics(mlflow_params: MlflowParams) -> bool:
    """Whether the next ``mlflow.start_run`` should log system metrics, with MLflow's sampling set from params.

    MLflow's monitor reads both from its environment variables, which these setters write for this process.
    """
    import mlflow

    if mlflow_params.system_metrics_interval_s is None:
        return False
    mlflow.set_system_metrics_sampling_interval(mlflow_params.system_metrics_interval_s)
    mlflow.set_system_metrics_samples_before_logging(mlflow_params.system_metrics_samples)
    return True
