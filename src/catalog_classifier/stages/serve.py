"""Entry point for the HTTP model server (``mlflow models serve``) around the registered champion.

The version is loaded through :func:`catalog_classifier.registry.artifact.fetch_verified`: data files only, each
checked against the sha256 recorded at registration, inside a pyfunc folder whose loader is the package's own code.
Batch prediction is :mod:`catalog_classifier.stages.predict`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from catalog_classifier.config.layout import Project
from catalog_classifier.registry.tracking import setup_mlflow


def run_serve(project: Project, host: str, port: int) -> None:
    """Serve the champion with ``mlflow models serve --env-manager local`` (replaces this process): its data files,
    verified, inside a pyfunc folder written here whose loader is the package's own code."""
    import mlflow

    from catalog_classifier.ops.exposure import require_loopback_or_auth
    from catalog_classifier.registry.artifact import fetch_verified
    from catalog_classifier.registry.pyfunc_model import exec_server, write_local_pyfunc
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
