"""CPU execution settings: threads, memory format and bf16 autocast, detected once and recorded with each run."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# The CPU features that pick oneDNN's conv/matmul kernels, hence the float rounding of a fit (docs/reproducibility.md).
ISA_CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
CPUINFO = Path("/proc/cpuinfo")


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


def _cpuinfo(cpuinfo: Path) -> str:
    try:
        return cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    return set(_cpuinfo(cpuinfo).split())


def cpu_has_native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """True when the CPU executes bf16 matmuls natively; emulated bf16 is slower than fp32."""
    return any(flag in cpu_flags(cpuinfo) for flag in BF16_CPU_FLAGS)


def runtime_facts(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """What, besides params and the thread count, decides a fit's float rounding, so that two runs of the same
    params that differ can be told apart by their records: torch (and with it oneDNN/MKL) version, ATen's vector
    ISA, the CPU and its AMX/AVX-512 features, and an ``ONEDNN_MAX_CPU_ISA`` cap. On one machine with equal facts
    and threads, training is bit-identical; a difference in any of them changes the trajectory."""
    flags = cpu_flags(cpuinfo)
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo(cpuinfo).splitlines()
                  if line.startswith("model name")), "unknown")
    return {
        "torch_version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": model,
        "cpu_isa_flags": ",".join(flag for flag in ISA_CPU_FLAGS if flag in flags),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "unset"),
    }


def resolve_runtime(channels_last: bool | str, bf16: bool | str, num_threads: int | None) -> Runtime:
    """Turn ``auto`` settings into concrete ones and apply the thread count to torch."""
    threads = num_threads or available_cores()
    torch.set_num_threads(threads)
    return Runtime(
        threads=threads,
        channels_last=True if channels_last == "auto" else bool(channels_last),
        bf16=cpu_has_native_bf16() if bf16 == "auto" else bool(bf16),
    )


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, then give the caller its own count back.

    torch's thread count is one per process: a model that sets it for itself (a champion loaded beside a
    challenger, each with its stored settings) would otherwise decide how fast every other model runs."""
    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def seed_everything(seed: int) -> torch.Generator:
    """Seed every source of randomness a stage uses; returns the generator for batch order and augmentation."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
