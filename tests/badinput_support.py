"""Builders for the bad-input and fault tests: every awkward image, catalogue and project is made at test time."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from conftest import tiny_params, write_tiny_catalogue
from PIL import Image

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
# Colour names of the four quadrants of :func:`quadrants`, as a 2x2 grid (row 0 is the top).
QUADRANT_GRID = np.array([["red", "green"], ["blue", "yellow"]])
COLOURS = {"red": RED, "green": GREEN, "blue": BLUE, "yellow": YELLOW}
EXIF_ORIENTATION = 0x0112

# Images the audit must exclude, with the reason fragment the quality report gives; ``None``: listed as missing.
EXCLUDED = {
    "empty.jpg": "empty file (0 bytes)",
    "truncated.jpg": "image file is truncated",
    "text.jpg": "not an image",
    "bomb.jpg": "decompression bomb",
    "../outside.jpg": "path escapes the images folder",
    "link_outside.jpg": "path escapes the images folder",
    "missing.jpg": None,
    "dangling.jpg": None,
}
# Images that must load: the RGB value expected at a point given as fractions of (width, height).
CENTRE = (0.5, 0.5)
LOADED = {
    "alpha.png": ((255, 127, 127), CENTRE),  # 50 % red over white
    "palette.png": ((10, 20, 30), CENTRE),
    "palette_transparent.png": ((255, 255, 255), CENTRE),  # transparent palette entry -> white
    "cmyk.jpg": (RED, CENTRE),
    "gray.png": ((77, 77, 77), CENTRE),
    "gray16.png": ((100, 100, 100), CENTRE),  # 25700 / 65535 * 255
    "rgb16.png": ((255, 128, 10), CENTRE),
    "exif_rotated.jpg": (RED, (0.75, 0.25)),  # red was top left, a 90 degree clockwise turn puts it top right
    "link_inside.png": ((77, 77, 77), CENTRE),
}


def pixel_at(image: Image.Image, where: tuple[float, float]) -> tuple[int, ...]:
    width, height = image.size
    return image.getpixel((int(width * where[0]), int(height * where[1])))


def quadrants(width: int, height: int) -> Image.Image:
    """Four flat quadrants: red (top left), green (top right), blue (bottom left), yellow (bottom right)."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    for row in range(2):
        for col in range(2):
            rows = slice(row * height // 2, (row + 1) * height // 2)
            cols = slice(col * width // 2, (col + 1) * width // 2)
            array[rows, cols] = COLOURS[QUADRANT_GRID[row, col]]
    return Image.fromarray(array)


def quadrant_colours(image: Image.Image) -> np.ndarray:
    """The 2x2 grid of colours at the centres of an image's quadrants, as the nearest colour names."""
    width, height = image.size
    names = np.empty((2, 2), dtype=object)
    for row in range(2):
        for col in range(2):
            pixel = np.array(image.getpixel((width * (2 * col + 1) // 4, height * (2 * row + 1) // 4)))
            names[row, col] = min(COLOURS, key=lambda name: np.abs(pixel - np.array(COLOURS[name])).sum())
    return names


def save_with_orientation(image: Image.Image, path: Path, orientation: int, quality: int = 95) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    image.save(path, "JPEG", quality=quality, exif=exif)


def write_png16(path: Path, array: np.ndarray) -> None:
    """A 16-bit-per-channel PNG written by hand (PIL writes 16-bit grayscale only): 1, 3 or 4 channels."""
    if array.ndim == 2:
        array = array[..., None]
    height, width, channels = array.shape
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + array[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def noise_jpeg(path: Path, size: int = 64, seed: int = 0) -> bytes:
    """A JPEG of random pixels (so every part of the file carries image data); returns its bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)
    return path.read_bytes()


def write_bomb_jpeg(path: Path, width: int, height: int) -> None:
    """A tiny JPEG whose header claims ``width`` x ``height`` pixels (a decompression bomb's calling card)."""
    Image.new("RGB", (16, 16), RED).save(path, "JPEG")
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")  # baseline frame header: marker, length(2), precision(1), height(2), width(2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))


def make_image_zoo(images_dir: Path) -> list[str]:
    """Write every awkward case of the issue under ``images_dir`` (one file beside it); return the names.

    Keys of :data:`LOADED` must load with the listed colour, keys of :data:`EXCLUDED` must be excluded.
    """
    images_dir.mkdir(parents=True, exist_ok=True)
    outside = images_dir.parent / "outside.jpg"
    Image.new("RGB", (16, 16), GREEN).save(outside)

    (images_dir / "empty.jpg").write_bytes(b"")
    noise = noise_jpeg(images_dir / "truncated.jpg")
    (images_dir / "truncated.jpg").write_bytes(noise[: len(noise) // 2])
    (images_dir / "text.jpg").write_text("product_id,price\nabc,12.50\n", encoding="utf-8")
    write_bomb_jpeg(images_dir / "bomb.jpg", 20000, 20000)
    (images_dir / "link_outside.jpg").symlink_to(outside)
    (images_dir / "dangling.jpg").symlink_to(images_dir / "gone.jpg")

    Image.new("RGBA", (16, 16), (255, 0, 0, 128)).save(images_dir / "alpha.png")
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.save(images_dir / "palette.png")
    palette.save(images_dir / "palette_transparent.png", transparency=0)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(images_dir / "cmyk.jpg", quality=95)
    Image.new("L", (16, 16), 77).save(images_dir / "gray.png")
    Image.fromarray(np.full((16, 16), 25700, dtype=np.uint16)).save(images_dir / "gray16.png")
    rgb16 = np.empty((16, 16, 3), dtype=np.uint16)
    rgb16[...] = (65535, 32896, 2570)
    write_png16(images_dir / "rgb16.png", rgb16)
    # Stored 64 wide x 32 high, shown rotated 90 degrees clockwise: 32 wide x 64 high, red top right.
    save_with_orientation(quadrants(64, 32), images_dir / "exif_rotated.jpg", 6)
    (images_dir / "link_inside.png").symlink_to(images_dir / "gray.png")
    return [*LOADED, *EXCLUDED]


def write_plain_catalogue(path: Path, rows: list[tuple[str, str]]) -> None:
    pd.DataFrame(rows, columns=["image", "label"]).to_csv(path, index=False)


def make_fault_project(root: Path, real: Path, per_class: int = 4, zoo: bool = True, **train: Any) -> Path:
    """A project (no git, no DVC) with tiny params, a few real images per class and, optionally, the zoo.

    The zoo rows join the Flipkart catalogue with a category tree of their own, spread over the classes.
    """
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    write_tiny_catalogue(data, real, per_class)
    params = tiny_params(**train)
    if zoo:
        classes = params["data"]["classes"]
        catalogue = data / Path(params["data"]["catalogue"]).name
        frame = pd.read_csv(catalogue, dtype=str, keep_default_na=False)
        names = make_image_zoo(data / "Images")
        extra = pd.DataFrame({"image": names,
                              "product_category_tree": [f'["{classes[i % len(classes)]} >> synthetic"]'
                                                        for i in range(len(names))]})
        pd.concat([frame, extra], ignore_index=True).fillna("").to_csv(catalogue, index=False)
    with (root / "params.yaml").open("w", encoding="utf-8") as handle:
        yaml.safe_dump(params, handle, sort_keys=False)
    return root


def write_params(path: Path, params: dict[str, Any]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        yaml.safe_dump(params, handle, sort_keys=False)
    return path


def cli_command() -> str:
    """The console script of the running interpreter's environment (PATH need not hold the venv)."""
    beside = Path(sys.executable).with_name("catalog-classifier")
    return str(beside) if beside.exists() else shutil.which("catalog-classifier") or "catalog-classifier"


def cli_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(HF_HUB_OFFLINE="1", **extra)
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    """Run ``catalog-classifier ARGS`` and return the result whatever its exit status."""
    return subprocess.run([cli_command(), *args], cwd=cwd, capture_output=True, text=True, env=cli_env(**env),
                          timeout=timeout)


def closed_port() -> int:
    """A local TCP port nothing listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
