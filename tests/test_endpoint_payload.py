"""The endpoint's request limits and in-memory decoding, on real photos: each cap refuses with its name and value,
and an image decoded from a request is pixel for pixel the one the file path decodes."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalog_classifier.data.images import ImageLoadError, load_rgb
from catalog_classifier.endpoint.payload import (
    Limits,
    Refused,
    add_chunk,
    check_declared_length,
    decode_image,
    read_cells,
)

LIMITS = Limits(max_body_bytes=1000, max_rows=2, max_pixels=10_000, deadline_s=1.0, max_in_flight=4, retry_after_s=1)


def photos(real_data: Path, count: int) -> list[Path]:
    return sorted((real_data / "Images").glob("*.jpg"))[:count]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def refusal(call, *args) -> Refused:
    with pytest.raises(Refused) as caught:
        call(*args)
    return caught.value


def test_both_request_formats_give_the_image_cells_in_order() -> None:
    records = json.dumps({"dataframe_records": [{"image": "a"}, {"image": "b", "other": 1}]}).encode()
    split = json.dumps({"dataframe_split": {"columns": ["other", "image"], "data": [[1, "a"], [2, "b"]]}}).encode()
    assert read_cells(records, LIMITS) == ["a", "b"]
    assert read_cells(split, LIMITS) == ["a", "b"]


def test_rows_over_the_cap_are_413_naming_the_limit() -> None:
    body = json.dumps({"dataframe_records": [{"image": "a"}] * 3}).encode()
    refused = refusal(read_cells, body, LIMITS)
    assert (refused.status, refused.message) == (413, "3 rows exceed serve.max_rows 2")
    split = json.dumps({"dataframe_split": {"columns": ["image"], "data": [["a"]] * 5}}).encode()
    assert refusal(read_cells, split, LIMITS).message == "5 rows exceed serve.max_rows 2"


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "the body is not JSON"),
    (b"[1, 2]", "the body must be a JSON object with dataframe_records or dataframe_split"),
    (b'{"instances": []}', "the body needs dataframe_records or dataframe_split (mlflow models serve's format)"),
    (b'{"dataframe_records": [{"img": "a"}]}', "every record needs a column named 'image'"),
    (b'{"dataframe_records": []}', "the request has no rows"),
    (b'{"dataframe_split": {"columns": ["image"], "data": [["a", "b"]]}}', "every dataframe_split row needs 1 values"),
])
def test_malformed_requests_are_400_saying_what_is_wrong(body: bytes, message: str) -> None:
    refused = refusal(read_cells, body, LIMITS)
    assert refused.status == 400
    assert refused.message.startswith(message)


def test_the_body_cap_refuses_from_the_header_and_while_streaming() -> None:
    assert check_declared_length("1000", LIMITS) is None
    refused = refusal(check_declared_length, "40000000", LIMITS)
    assert (refused.status, refused.message) == (413, "body of 40000000 bytes exceeds serve.max_body_bytes 1000")
    assert refusal(check_declared_length, "forty", LIMITS).status == 400
    body = bytearray()
    add_chunk(body, b"x" * 600, LIMITS)
    add_chunk(body, b"x" * 400, LIMITS)  # exactly at the cap: accepted
    refused = refusal(add_chunk, body, b"x", LIMITS)
    assert (refused.status, refused.message) == (413, "body exceeds serve.max_body_bytes 1000 (over 1001 bytes read)")


def test_a_request_image_decodes_exactly_as_its_file(real_data: Path) -> None:
    for path in photos(real_data, 3):
        decoded = decode_image(b64(path.read_bytes()), max_pixels=100_000_000)
        assert decoded.mode == "RGB"
        assert np.array_equal(np.asarray(decoded), np.asarray(load_rgb(path)))


def test_an_image_over_the_pixel_cap_is_refused_before_decoding(real_data: Path) -> None:
    path = photos(real_data, 1)[0]
    with Image.open(path) as image:
        width, height = image.size
    cell = b64(path.read_bytes())
    assert decode_image(cell, max_pixels=width * height).size == (width, height)  # at the cap: decoded
    with pytest.raises(ImageLoadError) as caught:
        decode_image(cell, max_pixels=width * height - 1)
    assert str(caught.value) == (f"image of {width}x{height} = {width * height} pixels exceeds serve.max_pixels "
                                 f"{width * height - 1}")
    # A 12,000 x 12,000 PNG is ~100 kB on the wire and 432 MB decoded as RGB (under Pillow's own bomb limit):
    # the header alone refuses it.
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < 1_000_000
    with pytest.raises(ImageLoadError, match="image of 12000x12000 = 144000000 pixels exceeds serve.max_pixels"):
        decode_image(b64(bomb.getvalue()), max_pixels=40_000_000)


@pytest.mark.parametrize(("cell", "message"), [
    ("not base64!", "not valid base64"),
    (None, "not valid base64"),
    ("", "empty file (0 bytes)"),
    (b64(b"plain text, not an image"), "not an image (format not recognised)"),
])
def test_unreadable_cells_get_the_predict_paths_messages(cell: object, message: str) -> None:
    with pytest.raises(ImageLoadError) as caught:
        decode_image(cell, max_pixels=10_000)
    assert str(caught.value) == message
