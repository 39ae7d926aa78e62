"""Progress bars in a terminal, nothing in CI logs (where stages print one plain line per epoch instead)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress(items: Iterable[T], *, desc: str, total: int | None = None) -> Iterable[T]:
    if not interactive():
        return items
    return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
