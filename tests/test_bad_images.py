"""Images in any state: each awkward one loads with the right pixels, each broken one is excluded with its reason.

Every file is generated here, at test time: zero bytes, truncated JPEG, text named .jpg, alpha, palette, CMYK,
grayscale, 16-bit, EXIF orientations, a ~100-megapixel JPEG, a decompression bomb, paths and symlinks that
escape the images folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from badinput_support import (
    BLUE,
    EXCLUDED,
    LOADED,
    QUADRANT_GRID,
    RED,
    make_image_zoo,
    pixel_at,
    quadrant_colours,
    quadrants,
    save_with_orientation,
    write_png16,
)
from PIL import Image

from catalog_classifier.data.images import ImageLoadError, file_sha256, load_rgb
from catalog_classifier.data.quality import audit_catalogue, check_image, format_report

CLASSES = ["A", "B"]
# Lossless formats must match exactly; JPEG may drift a little (chroma subsampling, rounding).
TOLERANCE = {".png": 1, ".jpg": 12}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images = tmp_path_factory.mktemp("zoo") / "Images"
    make_image_zoo(images)
    return images


def assert_rgb_close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int) -> None:
    assert len(actual) == 3
    assert np.abs(np.array(actual) - np.array(expected)).max() <= tolerance, (actual, expected)


@pytest.mark.parametrize("name", sorted(LOADED))
def test_awkward_image_loads_as_rgb_with_the_right_pixels(zoo: Path, name: str) -> None:
    expected, where = LOADED[name]
    image = load_rgb(zoo / name)
    assert image.mode == "RGB"
    assert_rgb_close(pixel_at(image, where), expected, TOLERANCE[Path(name).suffix])
    assert check_image(zoo, name) == file_sha256((zoo / name).resolve())


@pytest.mark.parametrize("name", sorted(EXCLUDED))
def test_broken_image_is_refused_with_a_specific_reason(zoo: Path, name: str) -> None:
    reason = EXCLUDED[name] or "missing file"
    with pytest.raises(ImageLoadError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_image(zoo, name)


def test_exif_rotated_photo_comes_out_upright_with_swapped_dimensions(zoo: Path) -> None:
    stored = Image.open(zoo / "exif_rotated.jpg")
    assert stored.size == (64, 32)
    upright = load_rgb(zoo / "exif_rotated.jpg")
    assert upright.size == (32, 64)
    # Turned 90 degrees clockwise: the left column (red over blue) becomes the top row (blue, red).
    assert quadrant_colours(upright).tolist() == [["blue", "red"], ["yellow", "green"]]


# What a viewer shows for each EXIF orientation, as numpy operations on the stored 2x2 grid (EXIF 2.3, table 6).
ORIENTATIONS = {
    1: lambda grid: grid,
    2: np.fliplr,
    3: lambda grid: np.rot90(grid, 2),
    4: np.flipud,
    5: lambda grid: grid.T,
    6: lambda grid: np.rot90(grid, -1),
    7: lambda grid: np.rot90(grid, 2).T,
    8: lambda grid: np.rot90(grid, 1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_every_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    path = tmp_path / f"orientation{orientation}.jpg"
    save_with_orientation(quadrants(80, 40), path, orientation)
    image = load_rgb(path)
    assert image.size == ((40, 80) if orientation >= 5 else (80, 40))
    assert quadrant_colours(image).tolist() == ORIENTATIONS[orientation](QUADRANT_GRID).tolist()


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits(tmp_path: Path) -> None:
    values = np.array([[0, 257, 25700, 32896, 65535]], dtype=np.uint16)  # 0, 1, 100, 128, 255 in 8 bits
    for suffix in (".png", ".tif"):
        path = tmp_path / f"gray16{suffix}"
        Image.fromarray(values).save(path)
        assert Image.open(path).mode == "I;16"
        row = np.asarray(load_rgb(path))[0]
        assert row[:, 0].tolist() == [0, 1, 100, 128, 255]
        assert (row == row[:, :1]).all()  # gray stays gray


def test_sixteen_bit_rgb_and_rgba_keep_their_colour(tmp_path: Path) -> None:
    rgb = np.array([[[65535, 0, 0], [0, 32896, 65535]]], dtype=np.uint16)
    write_png16(tmp_path / "rgb16.png", rgb)
    assert np.asarray(load_rgb(tmp_path / "rgb16.png")).tolist() == [[[255, 0, 0], [0, 128, 255]]]
    rgba = np.array([[[65535, 0, 0, 65535], [0, 0, 65535, 0]]], dtype=np.uint16)  # opaque red, clear blue
    write_png16(tmp_path / "rgba16.png", rgba)
    assert np.asarray(load_rgb(tmp_path / "rgba16.png")).tolist() == [[[255, 0, 0], [255, 255, 255]]]


def test_dark_sixteen_bit_image_is_scaled_by_its_bit_depth_not_its_content(tmp_path: Path) -> None:
    # A night shot: nothing brighter than 255/65535. Its 8-bit rendering is black, not a mid-grey to white.
    dark = np.array([[0, 128, 255]], dtype=np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    assert np.asarray(load_rgb(tmp_path / "dark16.png")).max() <= 1


@pytest.mark.parametrize(
    ("cmyk", "rgb"),
    [((0, 255, 255, 0), RED), ((255, 0, 0, 0), (0, 255, 255)), ((255, 255, 0, 0), BLUE),
     ((0, 0, 0, 0), (255, 255, 255)), ((0, 0, 0, 255), (0, 0, 0)), ((0, 0, 0, 128), (127, 127, 127))],
)
def test_cmyk_jpeg_converts_to_the_right_rgb(tmp_path: Path, cmyk: tuple[int, ...], rgb: tuple[int, ...]) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), cmyk).save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    assert_rgb_close(load_rgb(path).getpixel((8, 8)), rgb, 6)


def test_grayscale_and_one_bit_images_become_equal_rgb_channels(tmp_path: Path) -> None:
    Image.new("L", (16, 16), 77).save(tmp_path / "gray.jpg", quality=95)
    gray = np.asarray(load_rgb(tmp_path / "gray.jpg"))
    assert gray.shape == (16, 16, 3) and abs(int(gray[8, 8, 0]) - 77) <= 1
    assert (gray == gray[..., :1]).all()
    bits = Image.new("1", (16, 16), 0)
    bits.putpixel((3, 3), 1)
    bits.save(tmp_path / "bits.png")
    one_bit = np.asarray(load_rgb(tmp_path / "bits.png"))
    assert one_bit[3, 3].tolist() == [255, 255, 255] and one_bit[0, 0].tolist() == [0, 0, 0]


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 255), (0, 0, 255, 0), (0, 0, 0, 51)])  # opaque red, clear blue, 20 % black
    rgba.save(tmp_path / "rgba.png")
    assert np.asarray(load_rgb(tmp_path / "rgba.png")).tolist() == [[[255, 0, 0], [255, 255, 255], [204, 204, 204]]]
    Image.new("LA", (2, 2), (0, 0)).save(tmp_path / "la.png")  # fully transparent black
    assert load_rgb(tmp_path / "la.png").getpixel((0, 0)) == (255, 255, 255)


def test_a_header_claiming_four_hundred_megapixels_is_refused_as_a_bomb(zoo: Path) -> None:
    assert (zoo / "bomb.jpg").stat().st_size < 2000
    with pytest.raises(ImageLoadError, match=r"decompression bomb refused: Image size \(400000000 pixels\)"):
        load_rgb(zoo / "bomb.jpg")


def test_symlinks_inside_load_and_count_as_copies_outside_are_refused(zoo: Path) -> None:
    assert (zoo / "link_inside.png").is_symlink()
    assert check_image(zoo, "link_inside.png") == check_image(zoo, "gray.png")
    outside = (zoo.parent / "outside.jpg").resolve()
    assert load_rgb(outside).size == (16, 16)  # a good image: refused for where it is, not what it is
    for name in ("link_outside.jpg", "../outside.jpg", str(outside), "sub/../../outside.jpg"):
        with pytest.raises(ImageLoadError, match="path escapes the images folder"):
            check_image(zoo, name)


def test_audit_excludes_each_broken_image_with_its_reason_and_keeps_the_rest(zoo: Path) -> None:
    names = sorted([*LOADED, *EXCLUDED])
    catalogue = pd.DataFrame({"image": names, "label": [CLASSES[i % 2] for i in range(len(names))]})
    catalogue["label_id"] = catalogue["label"].map(CLASSES.index)
    audit = audit_catalogue(catalogue, zoo, CLASSES)
    report = audit.report

    assert sorted(audit.usable["image"]) == sorted(LOADED)
    assert report["rows"] == len(names) and report["usable_images"] == len(LOADED)
    assert report["excluded"] == len(EXCLUDED)
    assert report["missing_files"] == ["dangling.jpg", "missing.jpg"]
    reasons = {item["image"]: item["reason"] for item in report["unreadable_files"]}
    assert sorted(reasons) == sorted(name for name, reason in EXCLUDED.items() if reason)
    for name, reason in reasons.items():
        assert EXCLUDED[name] in reason, (name, reason)
    assert report["duplicate_groups"] == [["gray.png", "link_inside.png"]]
    expected_counts = catalogue[catalogue["image"].isin(list(LOADED))]["label"].value_counts().to_dict()
    assert report["class_counts"] == {name: expected_counts.get(name, 0) for name in CLASSES}
    text = format_report(report)
    assert f"usable images:          {len(LOADED)}" in text
    assert "  unreadable: text.jpg: not an image (format not recognised)" in text
    assert "  missing: dangling.jpg" in text
    json.dumps(report)  # the split stage writes it as quality.json


def test_usable_awkward_images_decode_into_training_tensors(zoo: Path) -> None:
    from catalog_classifier.data.imageset import DataConfig, decode_manifest

    names = sorted(LOADED)
    manifest = pd.DataFrame({"image": names, "label": "A", "label_id": 0})
    config = DataConfig(input_size=(32, 32), interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    images = decode_manifest(manifest, zoo, config)
    assert tuple(images.pixels.shape) == (len(names), 3, 32, 32)
    for index, name in enumerate(names):
        expected, (fx, fy) = LOADED[name]
        pixel = images.pixels[index, :, int(32 * fy), int(32 * fx)].tolist()
        assert_rgb_close(tuple(pixel), expected, TOLERANCE[Path(name).suffix])


# Loads a ~100-megapixel JPEG in a fresh interpreter and reports how much the peak RSS grew while doing it.
_MEASURE = """
import json, resource, sys
from catalog_classifier.data.images import load_rgb
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = load_rgb(sys.argv[1])
grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
w, h = image.size
points = {"top": (w // 2, h // 4), "bottom": (w // 2, 3 * h // 4)}
print(json.dumps({"size": [w, h], "grown_mib": grown_kib / 1024,
                  "pixels": {k: image.getpixel(v) for k, v in points.items()}}))
"""


@pytest.fixture(scope="module")
def hundred_megapixel_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12,000 x 8,000 (96 MP, 288 MB as decoded RGB) phone photo stored sideways: EXIF orientation 6."""
    path = tmp_path_factory.mktemp("big") / "huge.jpg"
    width, height = 12000, 8000
    image = Image.new("RGB", (width, height), RED)
    image.paste(BLUE, (width // 2, 0, width, height))  # left half red, right half blue
    save_with_orientation(image, path, 6, quality=30)
    del image
    return path


def test_hundred_megapixel_jpeg_loads_reduced_with_bounded_memory(hundred_megapixel_jpeg: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(hundred_megapixel_jpeg) as stored:
            assert stored.size == (12000, 8000) and stored.width * stored.height > Image.MAX_IMAGE_PIXELS
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(hundred_megapixel_jpeg)], capture_output=True,
                            text=True, check=True)
    measured = json.loads(result.stdout)
    # DCT scaling at 1/4 (the largest that keeps both sides >= 1024 px: 3000 x 2000), then the EXIF quarter turn.
    assert measured["size"] == [2000, 3000]
    full_decode_mib = 12000 * 8000 * 3 / 2**20
    assert measured["grown_mib"] < full_decode_mib / 5, measured  # ~275 MiB full; reduced decoding needs a few
    # Turned clockwise, the left (red) half is on top.
    assert_rgb_close(tuple(measured["pixels"]["top"]), RED, 12)
    assert_rgb_close(tuple(measured["pixels"]["bottom"]), BLUE, 12)
    assert "DecompressionBomb" not in result.stderr
