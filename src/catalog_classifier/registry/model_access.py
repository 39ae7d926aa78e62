"""Loading a served model by URI with its failures sorted into the two kinds the CLI's exit status tells apart:
the user's (an unknown model, version or alias, a malformed URI: exit 2, no retry can help) and the tracking
server's (5xx answers, timeouts, refused connections: exit 75, the orchestrator retries later)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from catalog_classifier.ops.exits import InputError
from catalog_classifier.registry.tracking import TrackingUnavailable

# MLflow maps its error codes to HTTP statuses; below this one the request itself was wrong.
FIRST_SERVER_STATUS = 500


def is_remote(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://", "databricks"))


def classify_load_error(err: MlflowException, uri: str, tracking_uri: str) -> Exception:
    """The exception to raise instead of ``err``, with a one-line message.

    A client-side status (404 no such model or version, 400 malformed URI) is the user's. A server-side status
    (MLflow's own 5xx, or a plain MlflowException for a timeout or a refused connection, which MLflow files under
    INTERNAL_ERROR) is transient when the store is a server; with a local store it cannot be waited out.
    """
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    status = err.get_http_status_code()
    if status >= FIRST_SERVER_STATUS and is_remote(tracking_uri):
        return TrackingUnavailable(f"cannot load {uri}: the tracking server {tracking_uri} failed "
                                   f"(HTTP {status}: {first_line[:200]}); retry later")
    return InputError(f"cannot load {uri}: {first_line}")


@dataclass(frozen=True)
class LoadedModel:
    """A classifier loaded from data files only, and the folder they are in (hashed into a resume state)."""

    classifier: Any  # modeling.prediction.ImageClassifier
    directory: Path


def load_model_or_classify(uri: str, tracking_uri: str, scratch: Path) -> LoadedModel:
    """The classifier at ``uri``, loaded as data (safetensors + JSON, no pickle, no code), failures classified.

    ``uri``: a registered version (``models:/<name>/<n>`` or ``models:/<name>@<alias>``), downloaded into
    ``scratch`` and checked against the sha256 recorded at registration; or a local classifier folder of one's
    own (the same data files; nothing vouches for them but the caller, nothing in them can run).
    """
    from catalog_classifier.modeling.prediction import ImageClassifier
    from catalog_classifier.registry.artifact import check_names, fetch_verified

    local = Path(uri)
    if not uri.startswith("models:/") and local.is_dir():
        check_names({path.name for path in local.iterdir()}, str(local))
        return LoadedModel(ImageClassifier.from_dir(local), local)
    try:
        verified = fetch_verified(uri, scratch)
    except MlflowException as err:
        raise classify_load_error(err, uri, tracking_uri) from None
    except OSError as err:  # a file: URI or path that names nothing
        raise InputError(f"cannot load {uri}: {err}") from None
    return LoadedModel(ImageClassifier.from_dir(verified.directory), verified.directory)


def model_identity(served: Any) -> dict[str, str]:
    """sha256 of each file the served model carries (weights, config, calibration), by name: two loads of the same
    URI that resolve to different versions (a moved alias) tell themselves apart by it."""
    from catalog_classifier.data.images import file_sha256

    directory = getattr(served, "directory", None)
    if directory is None:
        return {}
    return {str(path.relative_to(directory)): file_sha256(path)
            for path in sorted(directory.rglob("*")) if path.is_file()}
