"""Which runtime runs a classifier's forward pass (PyTorch eager, or ONNX Runtime on the exported graph), chosen
by one small function that batch prediction and the server both call, and recorded with each prediction run.

The choice is a measurement of this machine, not a belief: ``catalog-classifier bench-predict`` times both on the
champion and writes ``<bench.out_dir>/predict.json``; ``auto`` takes the faster one from it (single-image p50 for
a server answering one request at a time; for batch prediction the streaming throughput, decoding threads and
forward pass sharing the cores as in a real run, since forward-only throughput misjudges it: bf16 PyTorch led
ONNX Runtime forward-only, 123 vs 119 images/s, and trailed it streaming, 76 vs 94, in artifacts/bench/predict.md),
and PyTorch when the bench has not run here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

TORCH = "torch"
ONNX = "onnx"
RUNTIMES = (TORCH, ONNX)
Purpose = Literal["batch", "single"]


def runtime_name(classifier: Any) -> str:
    """The runtime a loaded classifier runs on (``torch`` unless it was built on another one)."""
    return str(getattr(classifier, "runtime_name", TORCH))


def faster_runtime(figures: dict[str, Any], purpose: Purpose) -> str:
    """The faster of ``torch`` and ``onnx`` in a bench record's ``runtimes`` figures.

    ``figures``: ``{"torch": {"p50_ms": .., "streaming_images_per_s": ..}, "onnx": {...}}`` (the best PyTorch
    variant that the stored inference settings run, and ONNX Runtime). A record older than the streaming figure
    is judged on ``batch_images_per_s`` (forward only). A runtime without figures never wins.
    """
    def score(name: str) -> float:
        entry = figures.get(name) or {}
        if purpose == "single":
            value = entry.get("p50_ms")
            return -float(value) if value is not None else float("-inf")
        value = entry.get("streaming_images_per_s", entry.get("batch_images_per_s"))
        return float(value) if value is not None else float("-inf")

    best = max(RUNTIMES, key=score)
    return best if score(best) > float("-inf") else TORCH


def choose_runtime(preference: str, bench_record: Path | None, purpose: Purpose) -> str:
    """``torch`` or ``onnx``: the one asked for, or with ``auto`` the one the bench measured faster here."""
    if preference in RUNTIMES:
        return preference
    if bench_record is None or not bench_record.is_file():
        return TORCH
    from catalog_classifier.ops.io import read_json

    record = read_json(bench_record)
    chosen = faster_runtime(record.get("choice_figures", {}), purpose)
    log.info("runtime auto: %s (faster for %s prediction in %s)", chosen, purpose, bench_record)
    return chosen
