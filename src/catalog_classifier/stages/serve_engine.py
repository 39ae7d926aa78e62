"""``catalog-classifier serve --engine ray``: the champion on Ray Serve with adaptive batching, following the
champion alias (a promotion or rollback is switched to blue/green: loaded beside the served version, no gap)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any

from catalog_classifier.config.layout import Project
from catalog_classifier.endpoint.champion import NoChampion, ServedVersion, resolve_champion
from catalog_classifier.endpoint.payload import Limits
from catalog_classifier.infra.services import free_port, port_in_use
from catalog_classifier.modeling.torch_setup import available_cores
from catalog_classifier.ops.exits import InputError
from catalog_classifier.registry.tracking import setup_mlflow

log = logging.getLogger(__name__)


def serve_limits(project: Project) -> Limits:
    settings = project.params.serve
    return Limits(max_body_bytes=settings.max_body_bytes, max_rows=settings.max_rows,
                  max_pixels=settings.max_pixels, deadline_s=settings.deadline_s,
                  max_in_flight=settings.max_in_flight, retry_after_s=settings.retry_after_s)


def app_spec(project: Project, served: ServedVersion, tracking_uri: str) -> dict[str, Any]:
    """Plain values for the replica (they cross into a Ray actor); its runtime is the faster one for single images
    on this machine as `make bench-predict` measured it (``batch_predict.runtime``: auto), as predict's is."""
    from catalog_classifier.modeling.inference_runtime import choose_runtime
    from catalog_classifier.stages.predict import PREDICT_BENCH

    settings = project.params.batch_predict
    serve = project.params.serve
    runtime = choose_runtime(settings.runtime, project.path(project.params.bench.out_dir) / PREDICT_BENCH, "single")
    return {"runtime": runtime, "onnx_batch": settings.onnx_batch,
            "model_uri": served.uri, "version": served.version, "tracking_uri": tracking_uri,
            "limits": asdict(serve_limits(project)), "max_batch_size": serve.max_batch_size,
            "batch_wait_ms": serve.batch_wait_ms, "num_cpus": available_cores(),
            "concurrent_batches": serve.concurrent_batches,
            "forward_threads": forward_threads(serve.forward_threads, serve.concurrent_batches, available_cores())}


def forward_threads(configured: int | None, concurrent_batches: int, cores: int) -> int:
    """Intra-op threads of one forward pass: as configured, else the cores shared among the passes that run at
    once (more would make them take turns on the same cores)."""
    return configured or max(1, cores // concurrent_batches)


def ray_environment(throughput_optimized: bool, port: int) -> dict[str, str]:
    """What Ray reads from the environment when it starts (its controller, proxy and replica inherit it)."""
    environment = {"RAY_USAGE_STATS_ENABLED": "0",
                   "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if throughput_optimized else "0",
                   # The throughput mode would also run a handle's router in the caller's event loop; this
                   # process calls the replica (a champion switch) from a plain thread, so the router keeps a loop
                   # of its own, as without the mode. (Clients never go through a router: see below.)
                   "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1"}
    if throughput_optimized:
        # Ray Serve's throughput mode gives the replica an HTTP server of its own (direct ingress), on a port
        # drawn from this range: a range of one port, ``port``, so clients reach the replica without the HTTP
        # proxy's extra process hop (measured with 8 clients here: ~95 against ~65 requests/s through the proxy,
        # docs/registry-and-serving.md). The range's upper end is exclusive.
        environment |= {"RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
                        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1)}
    return environment


def proxy_port(throughput_optimized: bool, host: str, port: int) -> int:
    """Where Ray's HTTP proxy listens: ``port`` itself, unless the replica serves it (throughput mode), when the
    proxy takes a free port beside it on the same host (Ray starts one either way)."""
    return free_port(host) if throughput_optimized else port


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_ray_serve(project: Project, host: str, port: int) -> None:
    """Serve until interrupted; poll the alias every ``serve.reload_poll_s`` and redeploy when it moves."""
    import mlflow

    from catalog_classifier.ops.exposure import require_loopback_or_auth

    # The endpoint has no authentication of its own: loopback only, checked before anything starts.
    require_loopback_or_auth("the model server", host, None, "serve --host")
    if port_in_use(host, port):  # else the replica would retry its port, then fail deep inside Ray
        raise InputError(f"port {port} on {host} is in use: choose another with --port")
    setup_mlflow(project.params.mlflow, project.root)
    tracking_uri = mlflow.get_tracking_uri()
    client = mlflow.MlflowClient()
    name = project.params.registry.model_name
    served = resolve_champion(client, name)  # before Ray starts: no champion is a one-line error

    throughput_optimized = project.params.serve.throughput_optimized
    os.environ.update(ray_environment(throughput_optimized, port))
    import ray
    from ray import serve

    from catalog_classifier.endpoint.ray_app import APP_NAME, build_app

    signal.signal(signal.SIGTERM, _stop)
    cores = available_cores()
    # A cluster of its own (never one found on the machine), no dashboard: two cores have none to spare.
    ray.init(address="local", num_cpus=cores, include_dashboard=False, configure_logging=False,
             object_store_memory=128 * 1024 * 1024, _temp_dir=tempfile.mkdtemp(prefix="ray-catalog-"))
    try:
        proxy = proxy_port(throughput_optimized, host, port)
        serve.start(http_options={"host": host, "port": proxy,
                                  "request_timeout_s": project.params.serve.deadline_s + 5},
                    logging_config={"enable_access_log": False})
        serve.run(build_app(app_spec(project, served, tracking_uri)), name=APP_NAME, route_prefix="/")
        entry = (f"the replica's own HTTP server; Ray's proxy, unused, on port {proxy}" if proxy != port
                 else "through Ray's HTTP proxy")
        print(f"serving {name} v{served.version} (champion) on http://{host}:{port}/invocations (Ray Serve, "
              f"{entry}; batches of up to {project.params.serve.max_batch_size}, "
              f"{project.params.serve.concurrent_batches} at once)", file=sys.stderr, flush=True)
        while True:
            time.sleep(project.params.serve.reload_poll_s)
            served = _follow_champion(project, client, served)
    except KeyboardInterrupt:
        log.info("stopping the server")
    finally:
        serve.shutdown()
        ray.shutdown()


def _follow_champion(project: Project, client: Any, served: ServedVersion) -> ServedVersion:
    """Switch when the alias names another version; a registry that cannot be read, or a version that cannot be
    loaded, keeps the current one."""
    from ray import serve

    from catalog_classifier.endpoint.ray_app import APP_NAME, DEPLOYMENT_NAME

    try:
        current = resolve_champion(client, served.name)
    except NoChampion:
        log.warning("%s has no champion now: still serving v%s", served.name, served.version)
        return served
    except Exception as err:  # a registry that does not answer must not stop a serving endpoint
        log.warning("cannot read the champion alias (%s): still serving v%s", err, served.version)
        return served
    if current == served:
        return served
    started = time.monotonic()
    # Blue/green inside the replica: it loads the new version beside the served one (no gap, no redeploy).
    handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)
    try:
        handle.switch_to.remote(current.uri, current.version).result(timeout_s=project.params.serve.switch_timeout_s)
    except Exception as err:  # a version that cannot be loaded (refused, unreadable) never replaces a served one
        log.warning("cannot switch to %s v%s (%s): still serving v%s; retried at the next poll", current.name,
                    current.version, err, served.version)
        return served
    print(f"champion moved: v{served.version} -> v{current.version}, serving v{current.version} after "
          f"{time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    return current
