"""Which runtime runs a classifier's forward pass (PyTorch eager, or ONNX Runtime on the exported graph), chosen
by one small function that batch prediction and the server both call, and recorded with each prediction run."""

from __future__ import annotations

from typing import Any

TORCH = "torch"
ONNX = "onnx"
RUNTIMES = (TORCH, ONNX)


def runtime_name(classifier: Any) -> str:
    """The runtime a loaded classifier runs on (``torch`` unless it was built on another one)."""
    return str(getattr(classifier, "runtime_name", TORCH))
