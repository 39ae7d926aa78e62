"""Atomic file output: a stage killed mid-write never leaves a half file that looks complete."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pandas as pd


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; it replaces ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give outputs the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(target: Path | str, mode: str = "w") -> Iterator[IO[Any]]:
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(target) as tmp, tmp.open(mode, encoding=encoding, newline=None) as handle:
        yield handle


def write_json(target: Path | str, payload: Any) -> None:
    with atomic_open(target) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")


class CorruptFileError(ValueError):
    """A file the pipeline reads back (metrics, records) exists but cannot be parsed."""


def read_json(path: Path | str) -> Any:
    """Parsed JSON; a damaged file raises :class:`CorruptFileError` naming the file, the line and the fix."""
    try:
        with Path(path).open(encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f"line {err.lineno}, column {err.colno}: {err.msg}" if isinstance(err, json.JSONDecodeError) else (
            f"byte {err.start}: not UTF-8")
        raise CorruptFileError(f"{path} is not valid JSON ({where}); rerun the stage that writes it "
                               "(dvc repro, or dvc repro -f STAGE)") from None


def write_text(target: Path | str, text: str) -> None:
    with atomic_open(target) as handle:
        handle.write(text)


def write_csv(target: Path | str, frame: pd.DataFrame) -> None:
    # lineterminator fixed so manifests are byte-identical on every platform.
    with atomic_open(target) as handle:
        frame.to_csv(handle, index=False, lineterminator="\n")
