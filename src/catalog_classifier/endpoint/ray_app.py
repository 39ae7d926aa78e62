"""The champion on Ray Serve: a FastAPI ingress that applies the request limits, and ``@serve.batch`` that
gathers the images of concurrent requests into one forward pass (``serve.max_batch_size`` images, waiting at most
``serve.batch_wait_ms`` for a batch to fill; up to ``serve.concurrent_batches`` passes at once).

Routes: ``POST /invocations`` (mlflow models serve's request and answer, plus ``model_version``; the header
``X-Model-Version`` says which registered version answered), ``GET /ping`` and ``/health`` (alive, which version),
``GET /ready`` (200 once the model is loaded and answering). A champion move is a blue/green switch inside the
replica (:meth:`ClassifierDeployment.switch_to`): the new version is loaded beside the served one while it keeps
answering, then new requests go to it; a request in flight finishes on the version it started with, and every
answer names its version. (Redeploying the application instead stops a single replica before starting the new one:
Ray Serve's rolling update, which left a gap in which requests failed.)

No ``from __future__ import annotations`` here: FastAPI must see ``Request`` itself in the signatures of the
methods Ray Serve wraps, or it takes ``request`` for a query parameter (422).
"""

import asyncio
import logging
import time
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from catalog_classifier.data.images import ImageLoadError
from catalog_classifier.endpoint.batching import BatchModel, QueuedImage, error_row, forward_by_model
from catalog_classifier.endpoint.payload import (
    Limits,
    Refused,
    add_chunk,
    check_declared_length,
    decode_image,
    read_cells,
)

log = logging.getLogger(__name__)

APP_NAME = "catalog-classifier"
DEPLOYMENT_NAME = "CatalogClassifier"
VERSION_HEADER = "X-Model-Version"

app = FastAPI(title="catalog-classifier champion", docs_url=None, redoc_url=None)


def _load(model_uri: str, runtime: str, onnx_batch: int, threads: int) -> BatchModel:
    """The version's data files, checked against the sha256 recorded at registration: nothing from the registry
    runs here (registry/artifact.py). On ``onnx`` the forward pass is ONNX Runtime on the version's own
    ``model.onnx`` (exported from its weights if an older version lacks one). Each forward pass runs on
    ``threads`` intra-op threads (the stored setting is the whole machine's; here passes run side by side)."""
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from catalog_classifier.modeling.inference_runtime import ONNX
    from catalog_classifier.modeling.onnx_runtime import with_onnx
    from catalog_classifier.modeling.prediction import ImageClassifier
    from catalog_classifier.registry.artifact import fetch_verified

    with tempfile.TemporaryDirectory(prefix="catalog-replica-") as folder:
        verified = fetch_verified(model_uri, Path(folder) / "version")
        stored = ImageClassifier.from_dir(verified.directory)
        classifier = ImageClassifier(stored.model, stored.config, replace(stored.settings, num_threads=threads),
                                     stored.calibration)
        if runtime == ONNX:  # the session has read the graph: the folder may go
            classifier = with_onnx(classifier, verified.directory, Path(folder), onnx_batch)
    return BatchModel(classifier)


def _refusal(refused: Refused, version: str, retry_after_s: int | None = None) -> JSONResponse:
    headers = {VERSION_HEADER: version}
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return JSONResponse({"error": refused.message, "model_version": version}, status_code=refused.status,
                        headers=headers)


@serve.deployment(name=DEPLOYMENT_NAME, num_replicas=1)
@serve.ingress(app)
class ClassifierDeployment:
    """One replica: the model of one registered version, loaded once, answering until it is replaced."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import os

        import mlflow

        from catalog_classifier.registry.pyfunc_model import NO_PICKLE_ENV

        os.environ[NO_PICKLE_ENV] = "false"  # the replica loads data files only; no MLflow loader may unpickle
        mlflow.set_tracking_uri(spec["tracking_uri"])
        mlflow.set_registry_uri(spec["tracking_uri"])
        self.version = str(spec["version"])
        self.limits = Limits(**spec["limits"])
        self.runtime, self.onnx_batch = spec["runtime"], int(spec["onnx_batch"])
        self.forward_threads = int(spec["forward_threads"])
        self.model = _load(spec["model_uri"], self.runtime, self.onnx_batch, self.forward_threads)
        # Built here, not as a class decorator: its sizes come from params. Up to ``concurrent_batches`` passes
        # run at once (each in a worker thread); a batch forms while they run.
        self._forward = serve.batch(max_batch_size=int(spec["max_batch_size"]),
                                    batch_wait_timeout_s=float(spec["batch_wait_ms"]) / 1000,
                                    max_concurrent_batches=int(spec["concurrent_batches"]))(self._run_batch)
        self.in_flight = 0
        self.batches = 0  # forward passes run, and the images they held: the mean batch size shows batching works
        self.batched_images = 0

    async def switch_to(self, model_uri: str, version: str) -> str:
        """Blue/green: load ``version`` while the served one keeps answering, then serve it. Called through a
        deployment handle when the champion alias moves; returns the version now served."""
        model = await asyncio.to_thread(_load, model_uri, self.runtime, self.onnx_batch, self.forward_threads)
        self.model, self.version = model, str(version)  # one step for the event loop: no request sees half of it
        return self.version

    @app.get("/ping")
    @app.get("/health")
    async def health(self) -> JSONResponse:
        return JSONResponse({"status": "ok", "model_version": self.version}, headers={VERSION_HEADER: self.version})

    @app.get("/ready")
    async def ready(self) -> JSONResponse:
        # The constructor loaded the model; a replica only receives traffic once it has returned.
        return JSONResponse({"ready": True, "model_version": self.version, "runtime": self.runtime,
                             "limits": asdict(self.limits),
                             "batches": self.batches, "batched_images": self.batched_images},
                            headers={VERSION_HEADER: self.version})

    @app.post("/invocations")
    async def invocations(self, request: Request) -> JSONResponse:
        if self.in_flight >= self.limits.max_in_flight:
            refused = Refused(503, f"overloaded: {self.in_flight} requests in flight reach serve.max_in_flight "
                                   f"{self.limits.max_in_flight}; retry after {self.limits.retry_after_s} s")
            return _refusal(refused, self.version, self.limits.retry_after_s)
        self.in_flight += 1
        deadline = time.monotonic() + self.limits.deadline_s
        model, version = self.model, self.version  # the version this request is answered by, start to end
        try:
            rows = await asyncio.wait_for(self._answer(request, model, deadline), timeout=self.limits.deadline_s)
        except Refused as refused:
            return _refusal(refused, version)
        except TimeoutError:
            refused = Refused(504, f"no answer within serve.deadline_s {self.limits.deadline_s} s; its images "
                                   "were dropped from the queue")
            return _refusal(refused, version)
        finally:
            self.in_flight -= 1
        return JSONResponse({"predictions": rows, "model_version": version}, headers={VERSION_HEADER: version})

    async def _answer(self, request: Request, model: BatchModel, deadline: float) -> list[dict[str, Any]]:
        check_declared_length(request.headers.get("content-length"), self.limits)
        body = bytearray()
        async for chunk in request.stream():
            add_chunk(body, chunk, self.limits)
        cells = read_cells(bytes(body), self.limits)
        del body
        prepared = await asyncio.to_thread(self._prepare, cells, model, deadline)
        rows: list[Any] = list(prepared)
        waiting = [index for index, item in enumerate(prepared) if isinstance(item, QueuedImage)]
        answers = await asyncio.gather(*(self._forward(prepared[index]) for index in waiting))
        for index, answer in zip(waiting, answers, strict=True):
            rows[index] = answer if answer is not None else error_row("deadline passed before the forward pass")
        return rows

    def _prepare(self, cells: list[Any], model: BatchModel, deadline: float) -> list[QueuedImage | dict[str, Any]]:
        """Decode and resize each image (in a worker thread): a queued image, or the row saying why not."""
        prepared: list[QueuedImage | dict[str, Any]] = []
        for cell in cells:
            if time.monotonic() >= deadline:
                prepared.append(error_row("deadline passed before decoding"))
                continue
            try:
                pixels = model.preprocess(decode_image(cell, self.limits.max_pixels))
            except ImageLoadError as err:
                prepared.append(error_row(str(err)))
                continue
            prepared.append(QueuedImage(pixels, deadline, model))
        return prepared

    async def _run_batch(self, items: list[QueuedImage]) -> list[dict[str, Any] | None]:
        # In a thread: the event loop keeps receiving requests (which form the next batch) while this one runs.
        rows = await asyncio.to_thread(forward_by_model, items, self.model)
        self.batches += 1
        self.batched_images += sum(row is not None for row in rows)
        return rows


def build_app(spec: dict[str, Any]) -> Any:
    """The application for one served version; ``spec`` holds plain values only (it crosses into Ray actors)."""
    limits = spec["limits"]
    from ray.serve.config import BackpressureConfig

    # The replica sheds its own excess (503 naming the limit); Ray's router queue is the backstop behind it.
    return ClassifierDeployment.options(
        max_ongoing_requests=limits["max_in_flight"] + 8,
        max_queued_requests=limits["max_in_flight"],
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=limits["retry_after_s"]),
        ray_actor_options={"num_cpus": spec["num_cpus"]},
        graceful_shutdown_timeout_s=spec["limits"]["deadline_s"] + 5,
        # No access-log line per request (a file write in the replica for each one); errors are still logged.
        logging_config={"enable_access_log": False},
    ).bind(spec)
