"""Robust image decoding: any size, mode or orientation in, an RGB picture of bounded memory out.

Memory is bounded before any pixel is decoded: the header gives the canvas, JPEGs are set to decode at a reduced
scale (draft), and a canvas that would still decode to more than :data:`MAX_DECODED_PIXELS` is refused, whatever
the format (a 100 KB PNG or TIFF can declare a 120-megapixel canvas of zeros). 16-bit images are brought to 8 bits
in integer arithmetic, a block of rows at a time, never as a full-size float copy.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Decode large JPEGs at a reduced scale (libjpeg DCT scaling): a 100-megapixel photo then costs a few MB.
DRAFT_EDGE = 1024
# The most pixels decoded for one image (after draft scaling): 40 MP is 120 MB as RGB, 160 MB as RGBA; far above
# a product photo, far below what a crafted header can claim. Pillow's own bomb error (2 x 89 MP) stays in force.
MAX_DECODED_PIXELS = 40_000_000
# Rows converted at a time from 16 to 8 bits: a bounded temporary, whatever the image's height.
_ROW_BLOCK = 256
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageLoadError(ValueError):
    """An image cannot be used; the message is the reason recorded in the quality report."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        # Already a decoded copy (exif_transpose's): converting would copy it again, 0.8 ms of a 12 ms prediction.
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparency on white, as product photos are shown on a white page.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return sixteen_to_eight_bits(image).convert("RGB")
    return image.convert("RGB")


def sixteen_to_eight_bits(image: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit ``I``) grey image as 8-bit ``L``, scaled by the mode's bit depth, never by the content:
    a dark 16-bit night shot must stay dark. Mode ``I`` is how PIL hands over 16-bit data from several formats, so
    it gets 16 bits too. round(v * 255 / 65535) in integers, a block of rows at a time: no full-size float copy
    (v / 257 never ends in exactly .5, so this rounding equals every other)."""
    array = np.asarray(image)
    out = np.empty(array.shape, dtype=np.uint8)
    for start in range(0, array.shape[0], _ROW_BLOCK):
        block = np.clip(array[start:start + _ROW_BLOCK], 0, 65535).astype(np.uint32)
        out[start:start + _ROW_BLOCK] = (block * 255 + 32767) // 65535
    return Image.fromarray(out, "L")


def check_canvas(image: Image.Image, max_pixels: int) -> None:
    """Refuse, before decoding, a canvas that would decode to more than ``max_pixels`` (after any draft scaling)."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(f"image too large: {image.format or 'image'} of {width} x {height} = "
                             f"{width * height / 1e6:.1f} megapixels to decode, over the cap of "
                             f"{max_pixels / 1e6:g} (refused before decoding)")


def load_rgb(path: Path | str, max_pixels: int = MAX_DECODED_PIXELS) -> Image.Image:
    """Open, orient (EXIF) and convert an image to RGB, decoding huge JPEGs at reduced scale and refusing any
    canvas over ``max_pixels`` before it is decoded (only the first frame of an animation or multi-page file)."""
    path = Path(path)
    if not path.exists():
        raise ImageLoadError("missing file")
    if path.stat().st_size == 0:
        raise ImageLoadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # A large but legitimate photo is decoded in draft mode below, so the bomb *warning* is moot.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.draft("RGB", (DRAFT_EDGE, DRAFT_EDGE))
                check_canvas(image, max_pixels)
                image.load()
                oriented = ImageOps.exif_transpose(image)
                return _to_rgb(oriented)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError("not an image (format not recognised)") from None
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"decompression bomb refused: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"unreadable image: {err}") from None


def resize_to_array(image: Image.Image, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Resize to (height, width) and return a CHW uint8 array: the form kept in memory for training."""
    height, width = size
    resized = image.resize((width, height), INTERPOLATIONS.get(interpolation, Image.Resampling.BICUBIC))
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))
