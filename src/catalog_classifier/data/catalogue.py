"""Catalogue readers: turn a product catalogue CSV into (image, label) rows.

Two formats are accepted. The Flipkart export (``image`` + ``product_category_tree`` columns), where the label is
the first level of the category tree, and a plain CSV with columns ``image,label`` for any other catalogue.
Everything downstream sees the same frame: columns ``image``, ``label``, ``label_id`` in catalogue order.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import pandas as pd

FLIPKART_COLUMNS = ("image", "product_category_tree")
PLAIN_COLUMNS = ("image", "label")
TREE_SEPARATOR = ">>"


class CatalogueError(ValueError):
    """The catalogue CSV cannot be used; the message names the file, row or column."""


def first_category(tree: str, row_number: int) -> str:
    """``'["Home Furnishing >> Curtains >> …"]'`` → ``'Home Furnishing'``."""
    try:
        parsed = ast.literal_eval(tree)
    except (ValueError, SyntaxError):
        parsed = None
    if not (isinstance(parsed, list) and parsed and isinstance(parsed[0], str)):
        raise CatalogueError(
            f"row {row_number}: malformed product_category_tree {tree[:80]!r} "
            '(expected a list like ["A >> B >> C"])'
        )
    label = parsed[0].split(TREE_SEPARATOR)[0].strip()
    if not label:
        raise CatalogueError(f"row {row_number}: empty first level in product_category_tree {tree[:80]!r}")
    return label


def _first_non_utf8_position(path: Path) -> tuple[int, int]:
    """1-based line number and 0-based byte column of the first byte sequence that is not UTF-8."""
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return line_number, err.start
    return 0, 0


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CatalogueError(f"catalogue not found: {path}")
    if path.stat().st_size == 0:
        raise CatalogueError(f"catalogue {path} is empty")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as err:
        # pandas decodes in chunks, so err.start is relative to its buffer: find the line ourselves.
        line, column = _first_non_utf8_position(path)
        raise CatalogueError(
            f"catalogue {path} is not UTF-8 (line {line}, byte {column} of that line: {err.reason}); "
            "re-save it as UTF-8"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as err:
        raise CatalogueError(f"catalogue {path} cannot be parsed as CSV: {err}") from None
    if frame.empty:
        raise CatalogueError(f"catalogue {path} has a header but no rows")
    return frame


def _labels(frame: pd.DataFrame, path: Path) -> pd.Series:
    columns = set(frame.columns)
    if set(FLIPKART_COLUMNS) <= columns:
        # Row numbers as a spreadsheet shows them: header is row 1.
        return pd.Series(
            [first_category(tree, index + 2) for index, tree in enumerate(frame["product_category_tree"])],
            index=frame.index,
        )
    if set(PLAIN_COLUMNS) <= columns:
        return frame["label"].str.strip()
    missing_flipkart = [c for c in FLIPKART_COLUMNS if c not in columns]
    missing_plain = [c for c in PLAIN_COLUMNS if c not in columns]
    raise CatalogueError(
        f"catalogue {path} lacks column(s) {', '.join(missing_flipkart)} (Flipkart format) "
        f"or {', '.join(missing_plain)} (plain image,label format); found: {', '.join(frame.columns)}"
    )


def read_catalogue(path: Path | str, classes: list[str]) -> pd.DataFrame:
    """Read a catalogue into columns ``image``, ``label``, ``label_id`` (index of the label in ``classes``).

    Unknown labels and rows repeating the same image are errors: silently dropping them would change the
    class balance the study depends on.
    """
    path = Path(path)
    frame = _read_csv(path)
    labels = _labels(frame, path)
    images = frame["image"].str.strip()
    empty = images.eq("")
    if empty.any():
        raise CatalogueError(f"row {int(empty.idxmax()) + 2}: empty image name")
    class_ids = {name: index for index, name in enumerate(classes)}
    unknown = ~labels.isin(class_ids)
    if unknown.any():
        first = int(unknown.idxmax())
        raise CatalogueError(
            f"row {first + 2}: unknown category {labels[first]!r} "
            f"({int(unknown.sum())} row(s) in all); known: {', '.join(classes)}"
        )
    repeated = images.duplicated(keep="first")
    if repeated.any():
        first = int(repeated.idxmax())
        raise CatalogueError(f"row {first + 2}: image {images[first]!r} is listed more than once")
    return pd.DataFrame(
        {"image": images.to_numpy(), "label": labels.to_numpy(), "label_id": labels.map(class_ids).to_numpy()}
    )
