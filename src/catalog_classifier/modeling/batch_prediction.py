"""Batch prediction for auto-labelling: a folder, files or a CSV of images in; predictions, a review queue and,
when true labels are given, the precision the auto-labels reached.

Streaming and bounded: input rows are read lazily, decoded by a small pool of threads while the model runs on the
previous batch, grouped into full batches of readable images (an unreadable row never shrinks a batch), and
appended to the output as each batch finishes, flushed to disk. Memory does not grow with the number of rows.

Resumable: rows go to ``<output>.partial`` (renamed to the output only when every row is in) beside a small
``<output>.partial.json`` saying which inputs and which model they come from. A run killed at any point and
started again with the same command skips the rows already written (after dropping a half-written last line) and
finishes; the output then holds exactly one row per input row, in input order.

The predictions file holds one row per input (an unreadable or missing file gets its reason in ``error``). Beside
it, ``<stem>_review.csv`` holds the rows a human must look at (``needs_review``), most uncertain first, and
``<stem>_summary.json`` the counts: how many were auto-labelled (coverage) and, with a ``label`` column in the
input CSV, the share of auto-labels that were right (precision). Both are built by reading the predictions file
back (with the input, for the true labels), never from memory, so a resumed run reports on all of its rows.
"""

from __future__ import annotations

import collections
import csv
import itertools
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from catalog_classifier.data.images import ImageLoadError
from catalog_classifier.modeling.prediction import (
    IMAGE_SUFFIXES,
    OUTPUT_COLUMNS,
    ImageClassifier,
    _file_loader,
    parse_top3,
)
from catalog_classifier.ops.exits import InputError
from catalog_classifier.ops.io import read_json, write_csv, write_json

IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
PARTIAL_SUFFIX = ".partial"
STATE_SUFFIX = ".partial.json"


@dataclass(frozen=True)
class InputRow:
    """One row to predict: the name shown in the output, the file (None: the row names none), the true label."""

    name: str
    path: Path | None
    label: str | None = None


class BatchInput:
    """The rows of one CSV, or of image files and folders, read lazily and as often as asked (never held)."""

    def __init__(self, sources: Sequence[str | Path], row_range: tuple[int, int | None] | None = None) -> None:
        self.sources = [Path(source) for source in sources]
        self.row_range = row_range  # [start, stop) of the input's rows (a shard), None: all of them
        csvs = [source for source in self.sources if source.suffix.lower() == ".csv"]
        self.csv: Path | None = None
        if csvs:
            if len(self.sources) != 1:
                raise InputError("a CSV input is given alone (one --input CSV, no other paths)")
            if not csvs[0].is_file():
                raise InputError(f"no such CSV file: {csvs[0]}")
            self.csv = csvs[0]
            self.has_labels = LABEL_COLUMN in _csv_header(self.csv)
        else:
            self.has_labels = False
        if next(iter(self.rows()), None) is None:
            where = "" if row_range is None else f" rows {row_range[0]}:{'' if row_range[1] is None else row_range[1]}"
            raise InputError(f"no image found in {', '.join(map(str, self.sources))}{where}")

    def rows(self) -> Iterator[InputRow]:
        rows = _csv_rows(self.csv) if self.csv is not None else _file_rows(self.sources)
        if self.row_range is None:
            return rows
        return itertools.islice(rows, *self.row_range)

    def count(self) -> int:
        """How many rows (one lazy pass)."""
        return sum(1 for _ in self.rows())

    def identity(self) -> list[str]:
        """What the input is, for telling a resumable partial output from another run's."""
        identity = [str(source.resolve()) for source in self.sources]
        return identity if self.row_range is None else [*identity, f"rows {self.row_range[0]}:{self.row_range[1]}"]


def read_inputs(sources: Sequence[str | Path], row_range: tuple[int, int | None] | None = None) -> BatchInput:
    """One CSV file, or image files and folders (searched recursively), optionally only the rows [start, stop);
    nothing found is an error."""
    return BatchInput(sources, row_range)


def parse_row_range(text: str) -> tuple[int, int | None]:
    """``START:STOP`` (STOP may be empty: to the end), 0-based, STOP excluded, as Python slices count."""
    start, sep, stop = text.partition(":")
    try:
        bounds = (int(start or 0), int(stop) if stop else None)
    except ValueError:
        bounds = (-1, None)
    if not sep or bounds[0] < 0 or (bounds[1] is not None and bounds[1] <= bounds[0]):
        raise InputError(f"--rows {text!r}: expected START:STOP with 0 <= START < STOP, e.g. 0:5000")
    return bounds


def _csv_header(path: Path) -> list[str]:
    """The columns; a CSV that cannot be read or has no ``image`` column is one clear error."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), [])
    except (csv.Error, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable CSV ({str(err).splitlines()[0] if str(err) else 'empty'})") from None
    header = [column.strip() for column in header]
    if IMAGE_COLUMN not in header:
        columns = ", ".join(header) or "none"
        raise InputError(f"{path} has no {IMAGE_COLUMN!r} column (columns: {columns}): it needs one, holding "
                         "image paths absolute or relative to the CSV's folder")
    return header


def _csv_rows(path: Path) -> Iterator[InputRow]:
    """Rows of a CSV with an ``image`` column (paths absolute or relative to the CSV's folder), one at a time."""
    header = _csv_header(path)
    image, label = header.index(IMAGE_COLUMN), header.index(LABEL_COLUMN) if LABEL_COLUMN in header else None
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        try:
            for line in reader:
                if not line:
                    continue  # a blank line is no row (as pandas reads it)
                name = line[image].strip() if image < len(line) else ""
                true = (line[label].strip() if label < len(line) else "") if label is not None else None
                yield InputRow(name, path.parent / name if name else None, true)  # an absolute name stays absolute
        except (csv.Error, UnicodeDecodeError) as err:
            raise InputError(f"{path}: not a readable CSV (line {reader.line_num}: {err})") from None


def _file_rows(sources: Sequence[Path]) -> Iterator[InputRow]:
    """Files as given (even missing: they get a reason), folders as their image files in sorted path order."""
    for source in sources:
        files = _walk_images(source, source) if source.is_dir() else iter([source])
        for path in files:
            yield InputRow(str(path), path)


def _walk_images(folder: Path, root: Path) -> Iterator[Path]:
    """Image files under ``folder`` in the order ``sorted(Path)`` gives, one folder listing in memory at a time."""
    try:
        entries = sorted(Path(entry.path) for entry in os.scandir(folder) if not entry.name.startswith("."))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir():
            yield from _walk_images(entry, root)
        elif entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES:
            yield entry


# --- streaming prediction ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamSettings:
    """How hard to push: decoding threads, and how many batches may be decoded ahead of the model."""

    decode_workers: int = 2
    prefetch_batches: int = 2

    @classmethod
    def from_params(cls, settings: Any) -> StreamSettings:
        """From params.yaml's ``batch_predict`` section (``BatchPredictParams``)."""
        return cls(decode_workers=settings.decode_workers, prefetch_batches=settings.prefetch_batches)


def _decode(classifier: ImageClassifier, path: Path | None) -> np.ndarray | str:
    """Pixels, or the reason the file cannot be used."""
    try:
        return classifier._decode(_file_loader(path))
    except ImageLoadError as err:
        return str(err)


def _error_row(name: str, reason: str) -> dict[str, Any]:
    # No prediction is no label: such a row always goes to a human.
    return {"image": name, "label": "", "confidence": math.nan, "top3": "", "needs_review": True,
            "prediction_set": "", "error": reason}


def stream_predictions(classifier: ImageClassifier, rows: Iterable[InputRow],
                       settings: StreamSettings = StreamSettings()) -> Iterator[list[dict[str, Any]]]:
    """Output rows in input order, a chunk per model batch: every batch but the last holds ``batch_size``
    readable images; unreadable rows between them ride along in the chunk without taking a place.

    At most ``batch_size * prefetch_batches`` images are decoded ahead, so memory stays bounded.
    """
    batch_size = classifier.settings.batch_size
    window = batch_size * max(1, settings.prefetch_batches)
    pending: list[tuple[InputRow, np.ndarray | str]] = []
    readable = 0

    def flush() -> list[dict[str, Any]]:
        pixels = [value for _, value in pending if not isinstance(value, str)]
        probabilities = iter(classifier._forward(np.stack(pixels)) if pixels else [])
        chunk = [_error_row(row.name, value) if isinstance(value, str) else
                 {"image": row.name, **classifier._describe(next(probabilities))} for row, value in pending]
        pending.clear()
        return chunk

    with ThreadPoolExecutor(max_workers=max(1, settings.decode_workers), thread_name_prefix="decode") as pool:
        queue: collections.deque[tuple[InputRow, Future]] = collections.deque()
        source = iter(rows)
        exhausted = False
        while queue or not exhausted:
            while not exhausted and len(queue) < window:
                row = next(source, None)
                if row is None:
                    exhausted = True
                    break
                queue.append((row, pool.submit(_decode, classifier, row.path)))
            if not queue:
                break
            row, future = queue.popleft()
            value = future.result()
            pending.append((row, value))
            if not isinstance(value, str):
                readable += 1
                if readable == batch_size:
                    readable = 0
                    yield flush()
        if pending:
            yield flush()


# --- the output file: append, flush per chunk, resume -------------------------------------------------------------

def partial_paths(output: Path) -> tuple[Path, Path]:
    """Where rows accumulate until the run is complete, and the record of what they are predictions of."""
    return output.with_name(output.name + PARTIAL_SUFFIX), output.with_name(output.name + STATE_SUFFIX)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


class PredictionWriter:
    """Appends chunks of output rows to a CSV and makes each one durable before the next is computed."""

    def __init__(self, handle: IO[str], write_header: bool) -> None:
        self.handle = handle
        self.writer = csv.writer(handle, lineterminator="\n")
        if write_header:
            self.writer.writerow(OUTPUT_COLUMNS)
            self.flush()

    def write(self, chunk: Sequence[dict[str, Any]]) -> None:
        self.writer.writerows([[_csv_cell(row[column]) for column in OUTPUT_COLUMNS] for row in chunk])
        self.flush()

    def flush(self) -> None:
        self.handle.flush()
        if self.handle.fileno() > 2:  # a regular file: survive a crash of the machine, not just of the process
            os.fsync(self.handle.fileno())


def _drop_torn_line(path: Path) -> None:
    """A run killed mid-write may leave half a line at the end: cut the file back to its last complete row."""
    with path.open("rb+") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size == 0:
            return
        position = size
        while position > 0:
            step = min(1 << 16, position)
            handle.seek(position - step)
            block = handle.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = position - step + newline + 1
                if end != size:
                    handle.truncate(end)
                return
            position -= step
        handle.truncate(0)


def _rows_done(partial: Path, rows: Iterator[InputRow]) -> int:
    """How many rows the partial output holds; each must be the input row at its position."""
    with partial.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return -1  # not even a header: start the file again
        if header != OUTPUT_COLUMNS:
            raise InputError(f"{partial} is not a predictions file of this version (columns {', '.join(header)}); "
                             "delete it or rerun with --no-resume")
        done = 0
        for line in reader:
            row = next(rows, None)
            if row is None or not line or line[0] != row.name:
                raise InputError(f"{partial} row {done + 1} ({line[0] if line else 'blank'}) is not input row "
                                 f"{done + 1} ({row.name if row else 'none'}): it comes from other inputs; "
                                 "delete it or rerun with --no-resume")
            done += 1
        return done


def open_output(output: Path, state: dict[str, Any], resume: bool, rows: Iterator[InputRow]) -> tuple[IO[str], int]:
    """The partial file to append to, and how many input rows it already holds (``rows`` is advanced past them).

    A partial output of the same inputs and model is resumed (unless ``resume`` is false); one of other inputs
    or another model is refused, so no run mixes two models' answers in one file.
    """
    partial, state_file = partial_paths(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = -1
    if resume and partial.is_file() and state_file.is_file():
        recorded = read_json(state_file)
        if recorded != state:
            differs = sorted(key for key in set(recorded) | set(state) if recorded.get(key) != state.get(key))
            raise InputError(f"{partial} holds predictions of other {' and '.join(differs)} than this run's; "
                             "rerun the command it came from, delete it, or rerun with --no-resume")
        _drop_torn_line(partial)
        done = _rows_done(partial, rows)
    if done < 0:
        write_json(state_file, state)
        return partial.open("w", encoding="utf-8", newline=""), 0
    return partial.open("a", encoding="utf-8", newline=""), done


def finish_output(output: Path) -> None:
    """Every row is in: the partial file becomes the output (atomically), its record goes."""
    partial, state_file = partial_paths(output)
    os.replace(partial, output)
    state_file.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunFigures:
    """What one invocation did (a resumed run counts only its own rows in ``images_per_s``)."""

    rows_resumed: int
    rows_predicted: int
    seconds: float

    @property
    def images_per_s(self) -> float | None:
        return round(self.rows_predicted / self.seconds, 2) if self.seconds > 0 and self.rows_predicted else None


def predict_to_file(classifier: ImageClassifier, batch: BatchInput, output: Path, state: dict[str, Any],
                    settings: StreamSettings = StreamSettings(), resume: bool = True) -> RunFigures:
    """Predict every input row into ``output``, resuming a partial output of the same run."""
    rows = batch.rows()
    handle, done = open_output(output, state, resume, rows)
    started = time.perf_counter()
    predicted = 0
    with handle:
        writer = PredictionWriter(handle, write_header=done == 0)
        for chunk in stream_predictions(classifier, rows, settings):
            writer.write(chunk)
            predicted += len(chunk)
    finish_output(output)
    return RunFigures(rows_resumed=done, rows_predicted=predicted, seconds=time.perf_counter() - started)


def predict_to_stream(classifier: ImageClassifier, batch: BatchInput, handle: IO[str], counter: SummaryCounter,
                      settings: StreamSettings = StreamSettings()) -> RunFigures:
    """Predict every input row to an open text stream (standard output), chunk by chunk, counting into
    ``counter`` (the true labels come from a second lazy pass over the input, in step)."""
    started = time.perf_counter()
    writer = PredictionWriter(handle, write_header=True)
    truths = batch.rows()
    predicted = 0
    for chunk in stream_predictions(classifier, batch.rows(), settings):
        writer.write(chunk)
        for row in chunk:
            counter.add(row["label"], row["needs_review"], row["error"], next(truths).label)
        predicted += len(chunk)
    return RunFigures(rows_resumed=0, rows_predicted=predicted, seconds=time.perf_counter() - started)


def predict_batch(classifier: ImageClassifier, batch: BatchInput) -> pd.DataFrame:
    """One row per input, in order, in memory (small batches, tests); files go through :func:`predict_to_file`."""
    chunks = [row for chunk in stream_predictions(classifier, batch.rows()) for row in chunk]
    return pd.DataFrame(chunks, columns=OUTPUT_COLUMNS)


# --- review queue and summary, from the output file ---------------------------------------------------------------

def margin(top3: str) -> float:
    """Top-1 minus top-2 probability (how close the runner-up was); 1 with a single class, NaN without one."""
    probabilities = [probability for _, probability in parse_top3(top3)]
    if not probabilities:
        return math.nan
    return probabilities[0] - (probabilities[1] if len(probabilities) > 1 else 0.0)


def review_queue(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows needing review, most uncertain first: lowest confidence, then smallest top-1/top-2 margin.

    Unreadable rows (no confidence) come last: nobody can label them by looking until the file is fixed.
    """
    queue = frame[frame["needs_review"].astype(bool)].copy()
    queue["_margin"] = queue["top3"].map(margin)
    queue["_unreadable"] = queue["error"] != ""
    queue = queue.sort_values(["_unreadable", "confidence", "_margin"], kind="stable", na_position="last")
    return queue.drop(columns=["_margin", "_unreadable"]).reset_index(drop=True)


class SummaryCounter:
    """Counts, coverage (auto-labelled share of all rows) and, with true labels, the auto-labels' precision.

    With labels, coverage and precision are over the rows that have a true label; an unreadable row counts as
    not auto-labelled.
    """

    def __init__(self, has_labels: bool) -> None:
        self.has_labels = has_labels
        self.n = self.unreadable = self.auto = 0
        self.labelled = self.auto_labelled = self.auto_correct = 0

    def add(self, label: str, needs_review: bool, error: str, true_label: str | None) -> None:
        auto = not needs_review and not error
        self.n += 1
        self.unreadable += bool(error)
        self.auto += auto
        if true_label:
            self.labelled += 1
            self.auto_labelled += auto
            self.auto_correct += auto and label == true_label

    def summary(self, classifier: ImageClassifier) -> dict[str, Any]:
        calibration = classifier.calibration
        summary: dict[str, Any] = {
            "n_images": self.n, "n_unreadable": self.unreadable, "n_auto_labelled": self.auto,
            "n_review": self.n - self.auto, "coverage": _ratio(self.auto, self.n),
            "temperature": calibration.temperature, "threshold": calibration.threshold,
            "target_precision": calibration.target_precision,
        }
        if self.has_labels:
            summary.update(n_labelled=self.labelled, n_auto_labelled_with_label=self.auto_labelled,
                           n_auto_labelled_correct=self.auto_correct,
                           coverage=_ratio(self.auto_labelled, self.labelled),
                           precision=_ratio(self.auto_correct, self.auto_labelled))
        return summary


def _truthy(cell: str) -> bool:
    return cell.strip().lower() == "true"


def summarise_file(output: Path, batch: BatchInput, classifier: ImageClassifier) -> tuple[dict[str, Any],
                                                                                           pd.DataFrame]:
    """The summary and the review queue of a finished predictions file, read back row by row beside its input
    (for the true labels); only the rows needing review are held, to be sorted."""
    counter = SummaryCounter(batch.has_labels)
    review: list[list[str]] = []
    with output.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        column = {name: header.index(name) for name in OUTPUT_COLUMNS}
        for line, row in zip(reader, batch.rows(), strict=True):
            needs_review = _truthy(line[column["needs_review"]])
            counter.add(line[column["label"]], needs_review, line[column["error"]], row.label)
            if needs_review:
                review.append(line)
    frame = pd.DataFrame(review, columns=header)
    frame["confidence"] = pd.to_numeric(frame["confidence"])
    frame["needs_review"] = True
    return counter.summary(classifier), review_queue(frame)


def summarise(frame: pd.DataFrame, classifier: ImageClassifier, labels: Sequence[str] | None) -> dict[str, Any]:
    """The summary of predictions held in memory (``labels``: the true ones, row for row, or None)."""
    counter = SummaryCounter(labels is not None)
    truths = labels if labels is not None else [None] * len(frame)
    for row, truth in zip(frame.itertuples(index=False), truths, strict=True):
        counter.add(row.label, bool(row.needs_review), row.error, truth)
    return counter.summary(classifier)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def companion_paths(output: Path) -> tuple[Path, Path]:
    """``<stem>_review.csv`` and ``<stem>_summary.json`` beside the predictions file."""
    return output.with_name(f"{output.stem}_review.csv"), output.with_name(f"{output.stem}_summary.json")


def write_companions(output: Path, queue: pd.DataFrame, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Review queue and summary beside the predictions, each written atomically; returns their paths."""
    review, summary_path = companion_paths(output)
    write_csv(review, queue)
    write_json(summary_path, summary)
    return review, summary_path


def describe_summary(summary: dict[str, Any]) -> str:
    """One line: auto-labelled share and, with true labels, their precision against the target."""
    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    threshold = "none (target not reachable: all to review)" if summary["threshold"] is None else (
        f"{summary['threshold']:.4f}")
    line = (f"auto-labelled {summary['n_auto_labelled']}/{summary['n_images']} "
            f"(coverage {share(summary['coverage'])}), {summary['n_review']} to review, "
            f"{summary['n_unreadable']} unreadable; threshold {threshold}")
    if "precision" in summary:
        target = summary["target_precision"]
        line += (f"; precision on auto-labelled rows {share(summary['precision'])} "
                 f"({summary['n_auto_labelled_correct']}/{summary['n_auto_labelled_with_label']} right"
                 f"{'' if target is None else f', target {target:.1%}'})")
    return line


# --- shards of a catalogue (the batch-label flow) -----------------------------------------------------------------

def plan_shards(n_rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of at most ``shard_rows`` rows covering ``n_rows`` in order."""
    if shard_rows < 1:
        raise InputError(f"shard_rows must be at least 1, got {shard_rows}")
    return [(start, min(start + shard_rows, n_rows)) for start in range(0, n_rows, shard_rows)]


def merge_outputs(parts: Sequence[Path], target: Path) -> int:
    """Concatenate shard predictions files (each with its header) into ``target`` in the given order, atomically;
    returns the number of rows. Streams line by line: no shard is held in memory."""
    from catalog_classifier.ops.io import atomic_open

    rows = 0
    header = ",".join(OUTPUT_COLUMNS) + "\n"
    with atomic_open(target) as merged:
        merged.write(header)
        for part in parts:
            with part.open(encoding="utf-8", newline="") as handle:
                if handle.readline() != header:
                    raise InputError(f"{part} is not a predictions file (unexpected header)")
                for line in handle:
                    merged.write(line)
                    rows += 1
    return rows
