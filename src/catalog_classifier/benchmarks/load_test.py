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


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """A markdown table: one row per engine and concurrency level."""
    lines = ["| server | clients | requests/s | images/s | p50 ms | p95 ms | p99 ms | errors | requests | "
             "mean batch | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for engine, levels in results.items():
        for level in levels:
            lines.append(f"| {engine} | {level['clients']} | {level['requests_per_s']:.1f} | "
                         f"{level['images_per_s']:.1f} | {level['p50_ms']:.0f} | {level['p95_ms']:.0f} | "
                         f"{level['p99_ms']:.0f} | {level['errors']} | {level['requests']} | "
                         f"{level.get('mean_batch') or '-'} | {level.get('load_avg_1min', '-')} |")
    return "\n".join(lines)
