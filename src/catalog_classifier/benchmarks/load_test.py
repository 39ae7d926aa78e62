"""A closed-loop load test of an HTTP endpoint: N clients, each with one kept-alive connection, sending the next
request as soon as the previous one is answered, until a count or a time bound is reached.

Works against any server speaking ``mlflow models serve``'s request format. A request counts as an error unless it
is answered 200 with one prediction per image and no row error.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

REQUEST_TIMEOUT_S = 120.0


def encode_request(paths: Sequence[Path]) -> bytes:
    """The JSON body classifying ``paths`` (one row each)."""
    records = [{"image": base64.b64encode(Path(path).read_bytes()).decode("ascii")} for path in paths]
    return json.dumps({"dataframe_records": records}).encode()


@dataclass
class LevelResult:
    """What one concurrency level measured."""

    clients: int
    requests: int = 0
    images: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    statuses: dict[int, int] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"clients": self.clients, "requests": self.requests, "images": self.images, "errors": self.errors,
                "seconds": round(self.seconds, 3),
                "requests_per_s": round(self.requests / self.seconds, 2) if self.seconds else 0.0,
                "images_per_s": round(self.images / self.seconds, 2) if self.seconds else 0.0,
                "p50_ms": round(self.percentile(50), 1), "p95_ms": round(self.percentile(95), 1),
                "p99_ms": round(self.percentile(99), 1), "statuses": {str(k): v for k, v in self.statuses.items()}}


def post(connection: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, Any]:
    """One POST on a kept-alive connection: status and parsed JSON (``None`` when the answer is not JSON)."""
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    answer = connection.getresponse()
    raw = answer.read()
    try:
        return answer.status, json.loads(raw)
    except ValueError:
        return answer.status, None


def _answered(status: int, payload: Any, rows: int) -> bool:
    if status != 200 or not isinstance(payload, dict):
        return False
    predictions = payload.get("predictions")
    return isinstance(predictions, list) and len(predictions) == rows and all(
        isinstance(row, dict) and not row.get("error") for row in predictions)


def drive(url: str, bodies: Sequence[tuple[bytes, int]], clients: int, max_requests: int, max_seconds: float,
          ) -> LevelResult:
    """Send ``max_requests`` requests (or for ``max_seconds``) from ``clients`` threads; ``bodies`` are
    (body, rows) pairs taken in turn."""
    target = urlsplit(url)
    result = LevelResult(clients=clients)
    tickets = itertools.count()
    lock = threading.Lock()
    start = time.perf_counter()
    stop_at = start + max_seconds

    def client() -> None:
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=REQUEST_TIMEOUT_S)
        try:
            while time.perf_counter() < stop_at:
                ticket = next(tickets)
                if ticket >= max_requests:
                    return
                body, rows = bodies[ticket % len(bodies)]
                sent = time.perf_counter()
                try:
                    status, payload = post(connection, target.path or "/invocations", body)
                except (OSError, http.client.HTTPException):
                    connection.close()
                    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=REQUEST_TIMEOUT_S)
                    status, payload = -1, None
                elapsed_ms = (time.perf_counter() - sent) * 1000
                with lock:
                    result.requests += 1
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if _answered(status, payload, rows):
                        result.images += rows
                        result.latencies_ms.append(elapsed_ms)
                    else:
                        result.errors += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - start
    return result


def pool_rounds(rounds: Sequence[LevelResult]) -> LevelResult:
    """One level's rounds as one result: every request's latency, counts and seconds summed."""
    pooled = LevelResult(clients=rounds[0].clients)
    for level in rounds:
        pooled.requests += level.requests
        pooled.images += level.images
        pooled.errors += level.errors
        pooled.seconds += level.seconds
        pooled.latencies_ms.extend(level.latencies_ms)
        for status, count in level.statuses.items():
            pooled.statuses[status] = pooled.statuses.get(status, 0) + count
    return pooled


def level_summary(rounds: Sequence[LevelResult]) -> dict[str, Any]:
    """A level measured in several rounds: latency percentiles over all their requests, requests/s and images/s
    as the median round, with every round's figure beside it (the spread a single run hides)."""
    summary = pool_rounds(rounds).summary()
    per_round = [level.summary() for level in rounds]
    for key in ("requests_per_s", "images_per_s"):
        summary[f"{key}_rounds"] = [level[key] for level in per_round]
        summary[key] = round(float(np.median(summary[f"{key}_rounds"])), 2)
    summary["p99_ms_rounds"] = [level["p99_ms"] for level in per_round]
    return summary


def speedups(engine: dict[str, Any], reference: dict[str, Any]) -> list[float]:
    """Round by round, the engine's requests/s over the reference's (rounds run back to back, so each ratio
    compares the two under the same background load)."""
    return [round(ours / theirs, 2) if theirs else float("inf") for ours, theirs in
            zip(engine["requests_per_s_rounds"], reference["requests_per_s_rounds"], strict=True)]


def target_verdict(engine: dict[str, Any], reference: dict[str, Any], min_speedup: float, max_p99_ms: float,
                   ) -> dict[str, Any]:
    """Met only if every round reaches ``min_speedup`` (the worst round, not the median, decides), the p99 over
    all rounds' requests is within ``max_p99_ms``, and no request failed."""
    ratios = speedups(engine, reference)
    met = (min(ratios) >= min_speedup and engine["p99_ms"] <= max_p99_ms and engine["errors"] == 0)
    return {"clients": engine["clients"], "speedups": ratios, "min_speedup": min(ratios),
            "median_speedup": round(float(np.median(ratios)), 2), "p99_ms": engine["p99_ms"],
            "errors": engine["errors"], "target_speedup": min_speedup, "target_p99_ms": max_p99_ms, "met": met}


def _spread(level: dict[str, Any], key: str) -> str:
    rounds = level.get(f"{key}_rounds") or [level[key]]
    if len(rounds) == 1:
        return f"{level[key]:.1f}"
    return f"{level[key]:.1f} ({min(rounds):.1f}-{max(rounds):.1f})"


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """A markdown table: one row per engine and concurrency level; requests/s and images/s as the median round
    (lowest-highest round), latencies over all rounds' requests."""
    lines = ["| server | clients | requests/s | images/s | p50 ms | p95 ms | p99 ms | errors | requests | "
             "mean batch | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for engine, levels in results.items():
        for level in levels:
            lines.append(f"| {engine} | {level['clients']} | {_spread(level, 'requests_per_s')} | "
                         f"{_spread(level, 'images_per_s')} | {level['p50_ms']:.0f} | {level['p95_ms']:.0f} | "
                         f"{level['p99_ms']:.0f} | {level['errors']} | {level['requests']} | "
                         f"{level.get('mean_batch') or '-'} | {level.get('load_avg_1min', '-')} |")
    return "\n".join(lines)
