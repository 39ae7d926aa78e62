"""The report's pictures: matplotlib charts drawn from the collected inputs, and every image made a data URI.

Why data URIs: the page is one file that opens from disk, an MLflow artifact view or a mail attachment with no
server and no network. Images are downscaled to ``max_width`` and become JPEG only when that is lighter than PNG
(photographic figures), so the page stays a few megabytes. Nothing here writes a file or knows about HTML.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from catalog_classifier.reporting.collector import ModelInputs

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class EmbedSettings:
    """How images are embedded (params ``report``): the widest image, and when a PNG is heavy enough for JPEG."""

    max_width: int = 960
    png_max_kb: int = 120
    jpeg_quality: int = 82


@dataclass(frozen=True)
class Embedded:
    """An image as the page carries it: its data URI and the pixel size its ``<img>`` tag announces."""

    uri: str
    width: int
    height: int
    n_bytes: int


def embed_image(source: Path | bytes, settings: EmbedSettings) -> Embedded:
    """A data URI of the image, no wider than ``max_width``; JPEG when the PNG would be too heavy (photos)."""
    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
        image = opened.convert("RGBA") if opened.mode in ("P", "LA", "RGBA") else opened.convert("RGB")
    if image.mode == "RGBA":  # figures have white backgrounds: flatten, so JPEG and PNG look the same
        flat = Image.new("RGB", image.size, "white")
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    if image.width > settings.max_width:
        height = max(1, round(image.height * settings.max_width / image.width))
        image = image.resize((settings.max_width, height), Image.Resampling.LANCZOS)
    encoded, kind = io.BytesIO(), "png"
    image.save(encoded, format="PNG", optimize=True)
    if encoded.tell() > settings.png_max_kb * 1024:
        jpeg = io.BytesIO()
        image.save(jpeg, format="JPEG", quality=settings.jpeg_quality, optimize=True, progressive=True)
        if jpeg.tell() < encoded.tell():
            encoded, kind = jpeg, "jpeg"
    payload = encoded.getvalue()
    uri = f"data:image/{kind};base64,{base64.b64encode(payload).decode('ascii')}"
    return Embedded(uri, image.width, image.height, len(payload))


def _figure_png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def learning_curves_png(models: list[ModelInputs]) -> bytes | None:
    """Loss and macro-F1 per epoch, every model on the same axes (train dashed, validation solid, best epoch
    starred): the models' convergence is compared at a glance, not figure by figure."""
    from matplotlib.figure import Figure

    drawn = [model for model in models if model.history]
    if not drawn:
        return None
    figure = Figure(figsize=(11, 3.9))
    loss_axes, f1_axes = figure.subplots(1, 2)
    for index, model in enumerate(drawn):
        frame = pd.DataFrame(model.history)
        colour = f"C{index}"
        best = model.trained.get("best_epoch")
        for axes, metric in ((loss_axes, "loss"), (f1_axes, "f1_macro")):
            if f"val_{metric}" not in frame:
                continue
            if f"train_{metric}" in frame:
                axes.plot(frame["epoch"], frame[f"train_{metric}"], "--", color=colour, alpha=0.7,
                          label=f"{model.name} train")
            axes.plot(frame["epoch"], frame[f"val_{metric}"], "-o", color=colour, markersize=3,
                      label=f"{model.name} val")
            at_best = frame[frame["epoch"] == best]
            if not at_best.empty:
                axes.plot(at_best["epoch"], at_best[f"val_{metric}"], "*", color=colour, markersize=13,
                          markeredgecolor="black", markeredgewidth=0.6)
    loss_axes.set(title="loss (cross-entropy)", xlabel="epoch")
    f1_axes.set(title="macro-F1", xlabel="epoch", ylim=(0, 1))
    for axes in (loss_axes, f1_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    f1_axes.legend(fontsize=8, loc="best")
    return _figure_png(figure)


def per_class_f1_png(models: list[ModelInputs], classes: list[str], floor: float | None) -> bytes:
    """Test F1 per class, models side by side, with the promotion gate's class floor."""
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 0.5 * len(classes) + 1.3))
    axes = figure.subplots()
    height = 0.8 / len(models)
    positions = np.arange(len(classes))
    for index, model in enumerate(models):
        per_class = model.evaluated["test"].get("per_class", {})
        values = [per_class.get(name, {}).get("f1", 0.0) for name in classes]
        offset = (index - (len(models) - 1) / 2) * height
        bars = axes.barh(positions + offset, values, height=height * 0.95, color=f"C{index}", label=model.name)
        axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    if floor is not None:
        axes.axvline(floor, color="#cf222e", linestyle="--", linewidth=1, label=f"gate floor {floor:g}")
    axes.set_yticks(positions, labels=classes)
    axes.invert_yaxis()
    axes.set(xlim=(0, 1.08), xlabel="test F1")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return _figure_png(figure)


def precision_coverage_png(model: ModelInputs) -> bytes | None:
    """The chart of :func:`precision_coverage_figure` as PNG bytes; None when the model has no curve."""
    figure = precision_coverage_figure(model)
    return None if figure is None else _figure_png(figure)


def precision_coverage_figure(model: ModelInputs) -> Figure | None:
    """Precision of the auto-labelled images against the share auto-labelled, one line per split (val chose the
    threshold, test measures it), the target precision as a horizontal line and the chosen threshold's test point
    marked: how much labelling the threshold saves, and what a stricter or looser one would have given."""
    from matplotlib.figure import Figure

    if not model.precision_coverage:
        return None
    frame = pd.DataFrame(model.precision_coverage)
    summary = model.autolabel or {}
    figure = Figure(figsize=(7.5, 4.2))
    axes = figure.subplots()
    for split, colour in (("val", "C0"), ("test", "C1")):
        rows = frame[frame["split"] == split].sort_values("coverage")
        if not rows.empty:
            axes.plot(rows["coverage"], rows["precision"], "-", color=colour, linewidth=1.4, label=split)
    target = summary.get("target_precision")
    if target is not None:
        axes.axhline(target, color="#cf222e", linestyle="--", linewidth=1, label=f"target precision {target:g}")
    test = summary.get("test") or {}
    if summary.get("reachable") and test.get("precision") is not None:
        axes.plot([test["coverage"]], [test["precision"]], "*", color="C1", markersize=15, markeredgecolor="black",
                  markeredgewidth=0.6, label=f"threshold {summary['threshold']:.4f} on test")
    axes.set(xlim=(0, 1.02), xlabel="coverage (share auto-labelled)", ylabel="precision of the auto-labelled",
             title=f"{model.name}: precision against coverage (calibrated confidence)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    return figure


THUMBNAIL = 96  # px: each image of a near-duplicate pair in the data section's sheet
SHEET_COLUMNS = 4  # pairs per row


def near_duplicates_png(pairs: list[dict[str, Any]], images_dir: Path | None) -> bytes | None:
    """One sheet of thumbnails, a pair per cell (first | second) with its hash distances, so a reader can check
    the threshold by eye. None when there is no pair or no image folder; an unreadable image is left grey."""
    from PIL import Image, ImageDraw

    if not pairs or images_dir is None:
        return None
    cell_w, cell_h = 2 * THUMBNAIL + 12, THUMBNAIL + 16
    rows = -(-len(pairs) // SHEET_COLUMNS)
    sheet = Image.new("RGB", (SHEET_COLUMNS * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for index, pair in enumerate(pairs):
        left, top = (index % SHEET_COLUMNS) * cell_w, (index // SHEET_COLUMNS) * cell_h
        for offset, name in enumerate((pair["first"], pair["second"])):
            sheet.paste(_thumbnail(images_dir / name), (left + offset * THUMBNAIL, top))
        mirrored = " mirrored" if pair.get("mirrored") else ""
        draw.text((left, top + THUMBNAIL + 2), f"{pair['first'][:6]}/{pair['second'][:6]} "
                  f"d{pair['dhash_bits']} p{pair['phash_bits']}{mirrored}", fill="black")
    encoded = io.BytesIO()
    sheet.save(encoded, format="PNG", optimize=True)
    return encoded.getvalue()


def _thumbnail(path: Path) -> Any:
    from PIL import Image

    tile = Image.new("RGB", (THUMBNAIL, THUMBNAIL), "#dddddd")
    try:
        with Image.open(path) as opened:
            opened.draft("RGB", (THUMBNAIL * 2, THUMBNAIL * 2))
            image = opened.convert("RGB")
    except (OSError, ValueError):
        return tile
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    tile.paste(image, ((THUMBNAIL - image.width) // 2, (THUMBNAIL - image.height) // 2))
    return tile
