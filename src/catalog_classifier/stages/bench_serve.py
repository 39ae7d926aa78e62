"""``make bench-serve``: the champion under load, on the batching engine and on ``mlflow models serve``, one after
the other on loopback, with the same real test images and the same client counts; one table, also in
``<bench.out_dir>/serve.{json,md}``."""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd

from catalog_classifier.benchmarks.load_test import drive, encode_request, table
from catalog_classifier.config.layout import Project
from catalog_classifier.infra.services import Service, http_ok
from catalog_classifier.ops.io import write_json, write_text

HOST = "127.0.0.1"
ENGINE_LABELS = {"ray": "Ray Serve (batching)", "mlflow": "mlflow models serve"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def cpu_name() -> str:
    """The CPU model and whether it has native bf16 (figures are only comparable on the same kind)."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 "unknown CPU")
    bf16 = "avx512_bf16" in info or "amx_bf16" in info
    return f"{model}, {os.cpu_count()} cores, bf16 {'yes' if bf16 else 'no'}"


def test_images(project: Project, count: int) -> list[Path]:
    manifest = pd.read_csv(project.manifest("test"))
    images = project.path(project.params.data.images_dir)
    return [images / name for name in manifest["image"].head(count)]


def server_command(project: Project, engine: str, port: int, settings: list[str]) -> list[str]:
    return [sys.executable, "-m", "catalog_classifier", "serve", "--engine", engine, "--host", HOST, "--port",
            str(port), "--params", str(project.root / "params.yaml"), *(f"--set={item}" for item in settings)]


def start_server(project: Project, engine: str, settings: list[str], work_dir: Path) -> tuple[Service, int]:
    """Start ``engine`` on a free loopback port and wait until it answers."""
    port = free_port()
    service = Service(f"bench-serve-{engine}", work_dir / f"{engine}.pid", work_dir / f"{engine}.log")
    service.start(server_command(project, engine, port, settings), os.environ, project.root)
    try:
        service.wait_ready(lambda: http_ok(f"http://{HOST}:{port}/ping"), project.params.serve.bench.startup_timeout_s)
    except BaseException:
        service.stop()
        raise
    return service, port


def bench_engines(project: Project, engines: list[str], bodies: list[tuple[bytes, int]], settings: list[str],
                  work_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Start every engine, warm each up, then run each client level on one engine after the other: the engines
    meet the same background load (on a shared machine it drifts from minute to minute)."""
    bench = project.params.serve.bench
    servers: dict[str, tuple[Service, int]] = {}
    try:
        for engine in engines:
            servers[engine] = start_server(project, engine, settings, work_dir)
        for _, port in servers.values():
            drive(f"http://{HOST}:{port}/invocations", bodies, max(bench.clients), bench.warmup_requests,
                  bench.max_seconds_per_level)
        results: dict[str, list[dict[str, Any]]] = {engine: [] for engine in engines}
        for clients in bench.clients:
            for engine, (_, port) in servers.items():
                before = _batch_counters(port)
                level = drive(f"http://{HOST}:{port}/invocations", bodies, clients, bench.requests_per_level,
                              bench.max_seconds_per_level).summary()
                level["mean_batch"] = _mean_batch(before, _batch_counters(port))
                # Other work on the machine shows here: a 2-core box at load 10 measures the queue, not the server.
                level["load_avg_1min"] = round(os.getloadavg()[0], 2)
                print(f"  {engine}: {clients} clients: {level['requests_per_s']:.1f} req/s, p99 "
                      f"{level['p99_ms']:.0f} ms, {level['errors']} errors", file=sys.stderr, flush=True)
                results[engine].append(level)
        return results
    finally:
        for service, _ in servers.values():
            service.stop()


def _batch_counters(port: int) -> tuple[int, int] | None:
    """(forward passes, images in them) so far, from Ray Serve's /ready; None for a server that does not say."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/ready", timeout=10) as answer:
            ready = json.loads(answer.read())
        return int(ready["batches"]), int(ready["batched_images"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _mean_batch(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[0] == before[0]:
        return None
    return round((after[1] - before[1]) / (after[0] - before[0]), 2)


def run_bench_serve(project: Project, engines: list[str], settings: list[str]) -> dict[str, Any]:
    """Measure each engine; ``settings`` are the ``--set`` overrides passed on to the servers."""
    import mlflow

    from catalog_classifier.endpoint.champion import resolve_champion
    from catalog_classifier.registry.tracking import setup_mlflow

    setup_mlflow(project.params.mlflow, project.root)
    # Both servers serve this version (each resolves the alias itself at start): a missing champion fails here.
    served = resolve_champion(mlflow.MlflowClient(), project.params.registry.model_name)
    bench = project.params.serve.bench
    images = test_images(project, bench.n_images)
    bodies = [(encode_request([path]), 1) for path in images]
    out_dir = project.path(project.params.bench.out_dir)
    work_dir = out_dir / "serve-logs"
    measured = bench_engines(project, engines, bodies, settings, work_dir)
    results = {ENGINE_LABELS[engine]: levels for engine, levels in measured.items()}
    report = {"cpu": cpu_name(), "model": f"{served.name} v{served.version}", "images": len(images),
              "clients": bench.clients,
              "requests_per_level": bench.requests_per_level, "max_seconds_per_level": bench.max_seconds_per_level,
              "serve": project.params.serve.model_dump(mode="json", exclude={"bench"}), "results": results}
    markdown = (f"{table(results)}\n\nCPU: {report['cpu']}; {report['model']}; one image per request, "
                f"{len(images)} real test images.\n")
    write_json(out_dir / "serve.json", report)
    write_text(out_dir / "serve.md", markdown)
    print(markdown)
    print(json.dumps({"written": str(out_dir / "serve.json")}))
    return report
