"""How long one MLflow ``log_batch`` takes on the team stack against the embedded sqlite store.

A training run logs a batch of metrics per epoch; this times exactly that call (``MlflowClient.log_batch`` of N
metrics, one step each call) through three stores: the stack's MLflow server (HTTP, PostgreSQL behind it),
PostgreSQL directly (the same database, no server: the server's share of the cost), and a fresh local sqlite
file (``make run``'s default), taking turns call by call. Warm-up calls (connections, the sqlite schema) are not
timed.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from catalog_classifier.config.params import BenchParams
from catalog_classifier.infra.composition import MLFLOW_DATABASE, StackPlan
from catalog_classifier.infra.services import ServiceError, http_ok

EXPERIMENT = "catalog-classifier-bench-stack"


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class _Store:
    """One store under measurement: its client, a run to log into, and the timings so far."""

    def __init__(self, tracking_uri: str, artifact_location: str | None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            EXPERIMENT, artifact_location=artifact_location)
        self.run_id = self.client.create_run(experiment_id, run_name="log-batch-latency").info.run_id
        self.timings: list[float] = []

    def log(self, step: int, metrics: int, timed: bool) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(f"bench/metric_{index}", float(step * metrics + index), now, step) for index in range(metrics)]
        started = time.perf_counter()
        self.client.log_batch(self.run_id, metrics=batch)
        if timed:
            self.timings.append((time.perf_counter() - started) * 1000)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
        self.client.delete_run(self.run_id)  # a measurement, not a result: kept out of the team's run list

    def summary(self) -> dict[str, float]:
        timings = self.timings
        return {"median_ms": round(statistics.median(timings), 3), "p95_ms": round(_percentile(timings, 0.95), 3),
                "mean_ms": round(statistics.fmean(timings), 3), "min_ms": round(min(timings), 3),
                "max_ms": round(max(timings), 3)}


def time_log_batch(uris: dict[str, tuple[str, str | None]], calls: int, metrics: int, warmup: int,
                   ) -> dict[str, dict[str, float]]:
    """Milliseconds per ``log_batch`` of ``metrics`` metrics, per store, over ``calls`` timed calls after ``warmup``.

    The stores take turns call by call, so a burst of load on a shared machine hits all of them alike.
    """
    stores = {name: _Store(uri, location) for name, (uri, location) in uris.items()}
    try:
        for step in range(warmup + calls):
            for store in stores.values():
                store.log(step, metrics, timed=step >= warmup)
    finally:
        for store in stores.values():
            store.close()
    return {name: store.summary() for name, store in stores.items()}


def bench_logging(plan: StackPlan, bench: BenchParams) -> dict[str, Any]:
    """The three stores with the same calls, interleaved; the stack must be running."""
    if not http_ok(f"{plan.mlflow_url}/health"):
        raise ServiceError(f"no MLflow server answers at {plan.mlflow_url}: start the stack first (make stack)")
    calls, metrics, warmup = bench.stack_log_calls, bench.stack_log_metrics, bench.stack_log_warmup
    cluster = plan.cluster()
    direct = cluster.url(MLFLOW_DATABASE)
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as folder:
        uris = {"server_postgres": (plan.mlflow_url, None), "postgres_direct": (direct, None),
                "sqlite_local": (f"sqlite:///{Path(folder) / 'mlflow.db'}", Path(folder).as_uri())}
        timings = time_log_batch(uris, calls, metrics, warmup)
    shown = {"server_postgres": plan.mlflow_url, "postgres_direct": direct.replace(cluster.password(), "***"),
             "sqlite_local": "sqlite:///<temporary folder>/mlflow.db"}
    stores = {name: {"uri": shown[name], **figures} for name, figures in timings.items()}
    sqlite_median = stores["sqlite_local"]["median_ms"]
    return {
        "what": f"MlflowClient.log_batch of {metrics} metrics, median/p95 over {calls} calls after {warmup} warm-up "
                "(stores interleaved call by call)",
        "calls": calls, "metrics_per_batch": metrics, "warmup": warmup,
        "machine": {"hostname": platform.node(), "cpus": os.cpu_count(), "load_1m": round(os.getloadavg()[0], 2)},
        "stores": stores,
        "median_vs_sqlite": {name: round(store["median_ms"] / sqlite_median, 2) for name, store in stores.items()},
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [result["what"], f"{'store':<17} {'median ms':>10} {'p95 ms':>10} {'x sqlite':>9}  uri"]
    for name, store in result["stores"].items():
        lines.append(f"{name:<17} {store['median_ms']:>10.2f} {store['p95_ms']:>10.2f} "
                     f"{result['median_vs_sqlite'][name]:>9.2f}  {store['uri']}")
    return "\n".join(lines)
