"""``make bench-serve``: the champion under load, on the batching engine and on ``mlflow models serve``, one after
the other on loopback, with the same real test images and the same client counts; one table, also in
``<bench.out_dir>/serve.{json,md}``."""

from __future__ import annotations

import json
import os
import platform
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd

from catalog_classifier.benchmarks.load_test import (
    LevelResult,
    drive,
    encode_request,
    level_summary,
    table,
    target_verdict,
)
from catalog_classifier.config.layout import Project
from catalog_classifier.config.params import ServeBenchParams
from catalog_classifier.infra.services import Service, free_port, http_ok
from catalog_classifier.ops.io import write_json, write_text

HOST = "127.0.0.1"
ENGINE_LABELS = {"ray": "Ray Serve (batching)", "mlflow": "mlflow models serve"}


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
    port = free_port(HOST)
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
    """Start every engine, warm each up, then run each client level on one engine after the other, all levels
    ``serve.bench.rounds`` times with the engines' order alternating: the engines meet the same background load
    (on a shared machine it drifts from minute to minute), and each figure comes with its spread over rounds."""
    bench = project.params.serve.bench
    servers: dict[str, tuple[Service, int]] = {}
    try:
        for engine in engines:
            servers[engine] = start_server(project, engine, settings, work_dir)
        for _, port in servers.values():
            drive(f"http://{HOST}:{port}/invocations", bodies, max(bench.clients), bench.warmup_requests,
                  bench.max_seconds_per_level)
        rounds: dict[tuple[str, int], list[LevelResult]] = {}
        batching: dict[tuple[str, int], list[int]] = {}  # forward passes and their images, summed over rounds
        load: dict[tuple[str, int], float] = {}
        for round_index in range(bench.rounds):
            order = engines if round_index % 2 == 0 else engines[::-1]
            for clients in bench.clients:
                for engine in order:
                    port = servers[engine][1]
                    before = _batch_counters(port)
                    level = drive(f"http://{HOST}:{port}/invocations", bodies, clients, bench.requests_per_level,
                                  bench.max_seconds_per_level)
                    _add_batches(batching.setdefault((engine, clients), [0, 0]), before, _batch_counters(port))
                    # Other work on the machine shows here: a 2-core box at load 10 measures the queue.
                    load[engine, clients] = max(load.get((engine, clients), 0.0), os.getloadavg()[0])
                    rounds.setdefault((engine, clients), []).append(level)
                    summary = level.summary()
                    print(f"  round {round_index + 1}/{bench.rounds} {engine}: {clients} clients: "
                          f"{summary['requests_per_s']:.1f} req/s, p99 {summary['p99_ms']:.0f} ms, "
                          f"{summary['errors']} errors", file=sys.stderr, flush=True)
        results: dict[str, list[dict[str, Any]]] = {engine: [] for engine in engines}
        for engine in engines:
            for clients in bench.clients:
                summary = level_summary(rounds[engine, clients])
                passes, images = batching[engine, clients]
                summary["mean_batch"] = round(images / passes, 2) if passes else None
                summary["load_avg_1min"] = round(load[engine, clients], 2)
                results[engine].append(summary)
        return results
    finally:
        for service, _ in servers.values():
            service.stop()


def _add_batches(total: list[int], before: tuple[int, int] | None, after: tuple[int, int] | None) -> None:
    if before is not None and after is not None:
        total[0] += after[0] - before[0]
        total[1] += after[1] - before[1]


def _batch_counters(port: int) -> tuple[int, int] | None:
    """(forward passes, images in them) so far, from Ray Serve's /ready; None for a server that does not say."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/ready", timeout=10) as answer:
            ready = json.loads(answer.read())
        return int(ready["batches"]), int(ready["batched_images"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
    verdict = targets(measured, bench)
    report = {"cpu": cpu_name(), "model": f"{served.name} v{served.version}", "images": len(images),
              "clients": bench.clients, "rounds": bench.rounds,
              "requests_per_level": bench.requests_per_level, "max_seconds_per_level": bench.max_seconds_per_level,
              "serve": project.params.serve.model_dump(mode="json", exclude={"bench"}), "results": results,
              "targets": verdict}
    markdown = (f"{table(results)}\n\nCPU: {report['cpu']}; {report['model']}; one image per request, "
                f"{len(images)} real test images; requests/s: median round (lowest-highest) of {bench.rounds}, "
                f"latencies over all rounds' requests.\n")
    if verdict:
        markdown += f"\n{verdict_line(verdict)}\n"
    write_json(out_dir / "serve.json", report)
    write_text(out_dir / "serve.md", markdown)
    print(markdown)
    print(json.dumps({"written": str(out_dir / "serve.json")}))
    return report


def targets(measured: dict[str, list[dict[str, Any]]], bench: ServeBenchParams) -> dict[str, Any] | None:
    """The batching engine against the reference at ``serve.bench.target_clients`` (None when either engine or
    that level was not measured)."""
    levels = {engine: {level["clients"]: level for level in found} for engine, found in measured.items()}
    ours, reference = levels.get("ray", {}), levels.get("mlflow", {})
    if bench.target_clients not in ours or bench.target_clients not in reference:
        return None
    return target_verdict(ours[bench.target_clients], reference[bench.target_clients], bench.target_speedup,
                          bench.target_p99_ms)


def verdict_line(verdict: dict[str, Any]) -> str:
    rounds = ", ".join(f"{ratio:.2f}x" for ratio in verdict["speedups"])
    return (f"Targets with {verdict['clients']} clients (>= {verdict['target_speedup']:g}x mlflow models serve in "
            f"every round, p99 <= {verdict['target_p99_ms']:g} ms, 0 errors): {'MET' if verdict['met'] else 'MISSED'}"
            f" - speedup by round {rounds}; p99 {verdict['p99_ms']:.0f} ms; {verdict['errors']} errors.")
