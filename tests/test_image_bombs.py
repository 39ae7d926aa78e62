"""Hostile images: a tiny file declaring a huge canvas (PNG, TIFF, WebP, GIF) is refused before any pixel is
decoded, with a reason in its own row, and the process's peak memory barely moves; 16-bit images convert without
a full-size float copy and to the same bytes as the float formula."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalog_classifier.data.images import MAX_DECODED_PIXELS, ImageLoadError, load_rgb, sixteen_to_eight_bits

# 12,000 x 10,000: 120 MP, over the cap (40 MP) yet under Pillow's own bomb error (2 x 89 MP), which the old
# loader silenced to a warning: it decoded such a canvas in full (120 MB grey, 360 MB as RGB).
WIDTH, HEIGHT = 12_000, 10_000


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def write_huge_png(path: Path, width: int, height: int) -> None:
    """A valid 8-bit grey PNG of zeros: every row a filter byte and ``width`` zero bytes, deflated."""
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def write_tiff_bomb(path: Path, width: int, height: int) -> None:
    """A valid little-endian grey TIFF: one deflate-compressed strip of zeros (``width * height`` bytes decoded)."""
    compressor = zlib.compressobj(9)
    row = bytes(width)
    strip = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    short, long_ = 3, 4
    entries = [(256, long_, width), (257, long_, height), (258, short, 8), (259, short, 8), (262, short, 1),
               (273, long_, 0), (277, short, 1), (278, long_, height), (279, long_, len(strip))]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    body = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == short else struct.pack("<I", value)
        body += struct.pack("<HHI", tag, kind, 1) + packed
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + body + struct.pack("<I", 0) + strip)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    write_huge_png(folder / "canvas.png", WIDTH, HEIGHT)
    write_tiff_bomb(folder / "bomb.tif", WIDTH, HEIGHT)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / "small.png")
    return {path.name: path for path in folder.iterdir()}


def test_the_bombs_are_tiny_files_that_really_hold_a_huge_canvas(bombs: dict[str, Path]) -> None:
    assert WIDTH * HEIGHT > MAX_DECODED_PIXELS and WIDTH * HEIGHT < 2 * Image.MAX_IMAGE_PIXELS
    for name in ("canvas.png", "bomb.tif"):
        assert bombs[name].stat().st_size < 300_000, name
        with Image.open(bombs[name]) as image:
            assert image.size == (WIDTH, HEIGHT)
    # A lower cap does not apply: each file is a real image that Pillow decodes (here only its first rows).
    with Image.open(bombs["bomb.tif"]) as image:
        assert image.crop((0, 0, 4, 2)).tobytes() == bytes(8)


@pytest.mark.parametrize("name", ["canvas.png", "bomb.tif"])
def test_a_huge_canvas_is_refused_before_decoding(bombs: dict[str, Path], name: str) -> None:
    with pytest.raises(ImageLoadError, match=r"image too large: (PNG|TIFF) of 12000 x 10000 = 120.0 megapixels to "
                                             r"decode, over the cap of 40 \(refused before decoding\)"):
        load_rgb(bombs[name])


@pytest.mark.parametrize("extension", ["webp", "gif", "jpg"])
def test_the_cap_holds_for_webp_gif_and_jpeg_after_draft(tmp_path: Path, extension: str) -> None:
    # A 4800 x 3200 picture against a 5-megapixel cap: refused as WebP and GIF; a JPEG decodes at 1/2 (2400 x 1600,
    # 3.8 MP: the largest DCT scaling that keeps both sides >= 1024 px), so it passes.
    path = tmp_path / f"picture.{extension}"
    Image.new("RGB", (4800, 3200), (200, 30, 30)).save(path)
    if extension == "jpg":
        assert load_rgb(path, max_pixels=5_000_000).size == (2400, 1600)
        return
    with pytest.raises(ImageLoadError, match=r"of 4800 x 3200 = 15.4 megapixels to decode, over the cap of 5 "):
        load_rgb(path, max_pixels=5_000_000)


_MEASURE = """
import json, resource, sys
from catalog_classifier.data.images import ImageLoadError, load_rgb
load_rgb(sys.argv[2])  # warm: imports and decoder set-up are not the bomb's doing
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_rgb(sys.argv[1])
    error = ""
except ImageLoadError as err:
    error = str(err)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"error": error, "peak_mib": after / 1024, "grown_mib": (after - before) / 1024}))
"""


@pytest.mark.parametrize("name", ["canvas.png", "bomb.tif"])
def test_refusing_a_bomb_keeps_peak_memory_flat(bombs: dict[str, Path], name: str) -> None:
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(bombs[name]), str(bombs["small.png"])],
                          capture_output=True, text=True, check=True)
    measured = json.loads(done.stdout)
    print(f"{name}: peak RSS {measured['peak_mib']:.1f} MiB, grown {measured['grown_mib']:.1f} MiB")
    assert measured["error"].startswith("image too large")
    # Decoding would need 114 MiB for the grey canvas alone; refusing it costs (almost) nothing.
    assert measured["grown_mib"] < 10, measured


def test_each_bomb_is_a_row_with_its_reason_and_the_batch_goes_on(bombs: dict[str, Path]) -> None:
    from catalog_classifier.modeling.models import create_classifier
    from catalog_classifier.modeling.prediction import ImageClassifier, InferenceSettings

    model, _ = create_classifier("resnet10t", 2, image_size=32)
    config = {"model_name": "resnet10t", "classes": ["A", "B"], **model.data_config.to_dict()}
    classifier = ImageClassifier(model.eval(), config, InferenceSettings(batch_size=4, bf16=False,
                                                                         channels_last=False))
    frame = classifier.predict_files([bombs["canvas.png"], bombs["small.png"], bombs["bomb.tif"]])
    assert frame["error"].str.startswith("image too large").tolist() == [True, False, True]
    assert frame["label"].tolist()[1] in ("A", "B") and frame["needs_review"].tolist() == [True, True, True]


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit_conversion_equals_the_float_formula_without_a_float_copy(mode: str) -> None:
    values = np.array([[0, 1, 128, 129, 256, 257, 385, 386], [32767, 32768, 65278, 65279, 65534, 65535, 0, 0]])
    if mode == "I":
        values[1, 6:] = [-5, 70_000]  # out of 16-bit range: clipped
    image = Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.int32))
    assert image.mode == mode
    expected = np.clip(np.clip(values, 0, 65535) * 255.0 / 65535.0, 0, 255).round().astype(np.uint8)
    assert np.asarray(sixteen_to_eight_bits(image)).tolist() == expected.tolist()
    # Every 16-bit value, against the float formula the loader used before.
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    assert np.array_equal(np.asarray(sixteen_to_eight_bits(Image.fromarray(every))),
                          (every * 255.0 / 65535.0).round().astype(np.uint8))
