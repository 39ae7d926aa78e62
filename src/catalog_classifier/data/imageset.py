"""In-memory image tensors: every image is decoded and resized once, then batches are slices.

On a 2-core CPU, decoding JPEGs every epoch costs more than the forward pass of a small model; holding the
resized uint8 pixels (1,050 images at 256 px ≈ 200 MB) removes that cost from every epoch after the first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from catalog_classifier.data.images import load_rgb, resize_to_array
from catalog_classifier.ops.progress import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing a model expects (from timm's pretrained config): it differs per architecture."""

    input_size: tuple[int, int]  # (height, width)
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> DataConfig:
        return cls(
            input_size=tuple(payload["input_size"]),
            interpolation=payload["interpolation"],
            mean=tuple(payload["mean"]),
            std=tuple(payload["std"]),
        )


@dataclass(frozen=True)
class ImageSet:
    """Decoded images (N, 3, H, W) uint8, their labels and names, in manifest order."""

    pixels: torch.Tensor
    labels: torch.Tensor
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def decode_manifest(manifest: pd.DataFrame, images_dir: Path, data_config: DataConfig) -> ImageSet:
    """Decode and resize every image of a split manifest once."""
    height, width = data_config.input_size
    pixels = np.empty((len(manifest), 3, height, width), dtype=np.uint8)
    for index, name in enumerate(progress(manifest["image"], desc="decode", total=len(manifest))):
        pixels[index] = resize_to_array(load_rgb(images_dir / name), (height, width), data_config.interpolation)
    return ImageSet(
        pixels=torch.from_numpy(pixels),
        labels=torch.tensor(manifest["label_id"].to_numpy(dtype="int64")),
        names=list(manifest["image"]),
    )


def to_float(pixels: torch.Tensor, channels_last: bool) -> torch.Tensor:
    batch = pixels.float().div_(255.0)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


def augment_batch(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light, label-preserving augmentation (only when ``train.augment``): random flip and shift.

    Images only: on cached (B, D) feature vectors a flip would reverse the feature order and the roll would move
    rows across the batch while their targets stay put, so anything but (N, C, H, W) is refused.
    """
    if pixels.ndim != 4:
        raise ValueError(f"augment_batch expects images (N, C, H, W), got shape {tuple(pixels.shape)}")
    flip = torch.rand(len(pixels), generator=generator) < 0.5
    pixels = pixels.clone()
    pixels[flip] = pixels[flip].flip(-1)
    height, width = pixels.shape[-2:]
    max_shift = max(1, min(height, width) // 16)
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
    return torch.roll(pixels, shifts=(dy, dx), dims=(-2, -1))


def iterate_batches(
    images: ImageSet, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(images), generator=generator) if shuffle else torch.arange(len(images))
    for start in range(0, len(images), batch_size):
        index = order[start : start + batch_size]
        yield images.pixels[index], images.labels[index]
