"""Loading a served model by URI with its failures sorted into the two kinds the CLI's exit status tells apart:
the user's (an unknown model, version or alias, a malformed URI: exit 2, no retry can help) and the tracking
server's (5xx answers, timeouts, refused connections: exit 75, the orchestrator retries later)."""

from __future__ import annotations

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


def load_model_or_classify(uri: str, tracking_uri: str) -> Any:
    """The served-model wrapper at ``uri`` (see ``registry.served.load_served_model``), failures classified."""
    from catalog_classifier.registry.served import load_served_model

    try:
        return load_served_model(uri)
    except MlflowException as err:
        raise classify_load_error(err, uri, tracking_uri) from None
    except OSError as err:  # a local path or file: URI that names nothing
        raise InputError(f"cannot load {uri}: {err}") from None


def model_identity(served: Any) -> dict[str, str]:
    """sha256 of each file the served model carries (weights, config, calibration), by name: two loads of the same
    URI that resolve to different versions (a moved alias) tell themselves apart by it."""
    from catalog_classifier.data.images import file_sha256

    directory = getattr(served, "directory", None)
    if directory is None:
        return {}
    return {str(path.relative_to(directory)): file_sha256(path)
            for path in sorted(directory.rglob("*")) if path.is_file()}
