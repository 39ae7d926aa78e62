"""Robust image decoding: any size, mode or orientation in, an RGB picture of bounded memory out."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Decode large JPEGs at a reduced scale (libjpeg DCT scaling): a 100-megapixel photo then costs a few MB.
DRAFT_EDGE = 1024
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
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparency on white, as product photos are shown on a white page.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Scale by the mode's bit depth, never by the content: a dark 16-bit night shot must stay dark.
        # Mode "I" (32-bit int) is how PIL hands over 16-bit data from several formats, so it gets 16 bits too.
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0
        return Image.fromarray(np.clip(array * scale, 0, 255).round().astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: Path | str) -> Image.Image:
    """Open, orient (EXIF) and convert an image to RGB, decoding huge JPEGs at reduced scale."""
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
                image.load()
                oriented = ImageOps.exif_transpose(image)
                return _to_rgb(oriented)
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
