"""Atomic outputs: a failure mid-write leaves the previous file intact and no temp files behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog_classifier.ops.io import CorruptFileError, atomic_open, read_json, write_json


def test_failed_write_keeps_the_previous_content(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"f1": 0.5})
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write('{"f1": 0.9, "trunc')
        raise RuntimeError("killed mid-write")
    assert read_json(target) == {"f1": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_json_is_sorted_and_newline_terminated(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out.json"
    write_json(target, {"b": 1, "a": "é"})
    assert target.read_text(encoding="utf-8") == '{\n  "a": "é",\n  "b": 1\n}\n'


def test_outputs_get_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {})
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_damaged_json_file_is_named_with_its_line(tmp_path: Path) -> None:
    damaged = tmp_path / "metrics.json"
    damaged.write_text('{\n  "f1": 0.5,\n  "acc": \n}\n', encoding="utf-8")
    with pytest.raises(CorruptFileError, match=r"metrics.json is not valid JSON \(line 4, column 1: Expecting value\)"):
        read_json(damaged)
    damaged.write_bytes(b'{"label": "caf\xe9"}')
    with pytest.raises(CorruptFileError, match=r"byte 14: not UTF-8"):
        read_json(damaged)
