"""The I/O of the ``batch-label`` flow (flows/batch_label.py): how a catalogue is cut into shards, and the shard
predictions merged back in input order. Each shard itself is ``catalog-classifier predict --rows A:B``."""

from __future__ import annotations

from pathlib import Path

from catalog_classifier.modeling.batch_prediction import merge_outputs, plan_shards, read_inputs


def shard_ranges(catalogue: Path, shard_rows: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of at most ``shard_rows`` rows covering the catalogue, in order (one lazy pass)."""
    return plan_shards(read_inputs([catalogue]).count(), shard_rows)


def shard_file(output: Path, index: int) -> Path:
    """Where shard ``index`` writes its predictions (its summary and review queue go beside it)."""
    return output.with_name(output.name + ".shards") / f"{index:05d}.csv"


def merge_shards(output: Path, n_shards: int) -> int:
    """The shard files merged into ``output`` in input order (atomically); returns the number of rows."""
    return merge_outputs([shard_file(output, index) for index in range(n_shards)], output)
