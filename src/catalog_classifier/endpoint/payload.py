"""What a request may carry, read without trusting it: a body size cap while streaming, a row cap, and images
decoded from memory after their header's pixel count has been checked (no temp file, nothing decoded over the cap).

The request format is ``mlflow models serve``'s, so clients of the reference server work unchanged:
``{"dataframe_records": [{"image": "<base64>"}, ...]}`` or
``{"dataframe_split": {"columns": ["image"], "data": [["<base64>"], ...]}}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from catalog_classifier.data.images import DRAFT_EDGE, ImageLoadError, _to_rgb

INPUT_COLUMN = "image"


@dataclass(frozen=True)
class Limits:
    """The caps of ``serve`` in params.yaml, as the server applies them."""

    max_body_bytes: int
    max_rows: int
    max_pixels: int
    deadline_s: float
    max_in_flight: int
    retry_after_s: int


class Refused(Exception):
    """A request answered with an HTTP error that names the limit or the fault and its value."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_declared_length(content_length: str | None, limits: Limits) -> None:
    """Refuse from the header alone, before a byte of the body is read (a 40 MB upload is not read to say no)."""
    if content_length is None:
        return
    try:
        declared = int(content_length)
    except ValueError:
        raise Refused(400, f"Content-Length {content_length!r} is not a number") from None
    if declared > limits.max_body_bytes:
        raise Refused(413, f"body of {declared} bytes exceeds serve.max_body_bytes {limits.max_body_bytes}")


def add_chunk(body: bytearray, chunk: bytes, limits: Limits) -> None:
    """Append one streamed chunk; refuse as soon as the total passes the cap (chunked bodies have no length)."""
    body += chunk
    if len(body) > limits.max_body_bytes:
        raise Refused(413, f"body exceeds serve.max_body_bytes {limits.max_body_bytes} "
                           f"(over {len(body)} bytes read)")


def read_cells(body: bytes, limits: Limits) -> list[Any]:
    """The ``image`` cell of every row, in order; 400 for a malformed request, 413 over ``max_rows``."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise Refused(400, f"the body is not JSON: {err}") from None
    if not isinstance(payload, dict):
        raise Refused(400, "the body must be a JSON object with dataframe_records or dataframe_split")
    if "dataframe_records" in payload:
        records = payload["dataframe_records"]
        if not isinstance(records, list) or not all(isinstance(row, dict) for row in records):
            raise Refused(400, "dataframe_records must be a list of objects")
        _check_rows(len(records), limits)
        if any(INPUT_COLUMN not in row for row in records):
            raise Refused(400, f"every record needs a column named {INPUT_COLUMN!r} holding a base64-encoded image")
        return [row[INPUT_COLUMN] for row in records]
    if "dataframe_split" in payload:
        split = payload["dataframe_split"]
        columns = split.get("columns") if isinstance(split, dict) else None
        data = split.get("data") if isinstance(split, dict) else None
        if not isinstance(columns, list) or not isinstance(data, list):
            raise Refused(400, "dataframe_split needs columns and data lists")
        if INPUT_COLUMN not in columns:
            raise Refused(400, f"the request needs a column named {INPUT_COLUMN!r} holding base64-encoded images")
        _check_rows(len(data), limits)
        position = columns.index(INPUT_COLUMN)
        if not all(isinstance(row, list) and len(row) == len(columns) for row in data):
            raise Refused(400, f"every dataframe_split row needs {len(columns)} values")
        return [row[position] for row in data]
    raise Refused(400, "the body needs dataframe_records or dataframe_split (mlflow models serve's format)")


def _check_rows(count: int, limits: Limits) -> None:
    if count > limits.max_rows:
        raise Refused(413, f"{count} rows exceed serve.max_rows {limits.max_rows}")
    if count == 0:
        raise Refused(400, "the request has no rows")


def decode_image(cell: Any, max_pixels: int) -> Image.Image:
    """An RGB image from one base64 cell, decoded as ``data.images.load_rgb`` decodes a file (draft mode, EXIF
    orientation, same messages), from memory; an image whose header declares more than ``max_pixels`` is
    refused before its pixels are decoded. Raises ``ImageLoadError`` (reported in the row, never the request)."""
    if not isinstance(cell, str | bytes):
        raise ImageLoadError("not valid base64")
    try:
        payload = base64.b64decode(cell, validate=True)
    except (binascii.Error, ValueError):
        raise ImageLoadError("not valid base64") from None
    if not payload:
        raise ImageLoadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(payload)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageLoadError(f"image of {width}x{height} = {width * height} pixels exceeds "
                                         f"serve.max_pixels {max_pixels}")
                image.draft("RGB", (DRAFT_EDGE, DRAFT_EDGE))
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image))
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError("not an image (format not recognised)") from None
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"decompression bomb refused: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"unreadable image: {err}") from None
