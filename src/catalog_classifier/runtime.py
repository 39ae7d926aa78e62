"""CPU execution settings: threads, memory format and bf16 autocast, detected once and recorded with each run."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Runtime:
    threads: int
    channels_last: bool
    bf16: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU executes bf16 matmuls natively; emulated bf16 is slower than fp32."""
    try:
        flags = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in BF16_CPU_FLAGS)


def resolve_runtime(channels_last: bool | str, bf16: bool | str, num_threads: int | None) -> Runtime:
    """Turn ``auto`` settings into concrete ones and apply the thread count to torch."""
    threads = num_threads or available_cores()
    torch.set_num_threads(threads)
    return Runtime(
        threads=threads,
        channels_last=True if channels_last == "auto" else bool(channels_last),
        bf16=cpu_has_native_bf16() if bf16 == "auto" else bool(bf16),
    )


def seed_everything(seed: int) -> torch.Generator:
    """Seed every source of randomness a stage uses; returns the generator for batch order and augmentation."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
