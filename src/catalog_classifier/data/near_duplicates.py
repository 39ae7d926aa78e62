"""Near-duplicate groups: the same listing photo re-encoded, re-framed, mirrored or in another shade.

Byte-identical copies are found by content hash (:mod:`catalog_classifier.data.quality`); this module finds the
copies a byte hash misses. Each image gets two 64-bit perceptual hashes from ``imagehash`` (maintained, pure Python):
a difference hash (gradients, sensitive to layout) and a DCT hash (low frequencies, tolerant of re-encoding and
small crops), of itself and of its mirror image. Two images are near-duplicates when BOTH hashes are within their
bit thresholds, in the same orientation or mirrored. One hash alone is loose on white-background product shots
(a dHash within 8 bits pairs unrelated watches); requiring both keeps the pairs a person would call the same photo.
Groups are the connected components of the pair graph (union-find), so a chain of re-encodings stays together.

No I/O beyond reading the images; the thresholds come from params (``split.near_duplicates``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Decode at about this size: perceptual hashes look at 8x8 / 32x32 thumbnails, so JPEG draft mode (DCT scaling)
# gives the same hash at a fraction of the decode cost.
_DRAFT_SIDE = 128


@dataclass(frozen=True)
class ImageHashes:
    """The four 64-bit hashes of one image (as unsigned ints): dHash and pHash, as is and mirrored."""

    dhash: int
    phash: int
    dhash_mirrored: int
    phash_mirrored: int


@dataclass(frozen=True)
class NearDuplicatePair:
    """Two images within both thresholds, with the distances that put them together."""

    first: str
    second: str
    dhash_bits: int
    phash_bits: int
    mirrored: bool


def _as_int(hash_value: object) -> int:
    bits = np.asarray(hash_value.hash, dtype=bool).ravel()  # type: ignore[attr-defined]
    return int("".join("1" if bit else "0" for bit in bits), 2)


def image_hashes(path: Path) -> ImageHashes:
    """dHash and pHash (64 bits each) of the image and of its left-right mirror."""
    import imagehash

    with Image.open(path) as image:
        image.draft("RGB", (_DRAFT_SIDE, _DRAFT_SIDE))
        grey = ImageOps.exif_transpose(image).convert("L")
    mirrored = ImageOps.mirror(grey)
    return ImageHashes(dhash=_as_int(imagehash.dhash(grey)), phash=_as_int(imagehash.phash(grey)),
                       dhash_mirrored=_as_int(imagehash.dhash(mirrored)),
                       phash_mirrored=_as_int(imagehash.phash(mirrored)))


def _bit_distances(values: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Hamming distances between every value and every other (uint64 arrays) as an (n, m) int matrix."""
    xor = values[:, None] ^ others[None, :]
    return np.unpackbits(xor.view(np.uint8).reshape(*xor.shape, 8), axis=-1).sum(-1)


def near_duplicate_pairs(names: list[str], hashes: list[ImageHashes], max_dhash_bits: int,
                         max_phash_bits: int) -> list[NearDuplicatePair]:
    """Every pair (first < second by name) whose dHash AND pHash distances are within the thresholds, as is or
    with one image mirrored (the closer orientation is reported)."""
    if len(names) != len(hashes):
        raise ValueError(f"{len(names)} names but {len(hashes)} hashes")
    if not names:
        return []
    column = {field: np.array([getattr(item, field) for item in hashes], dtype=np.uint64)
              for field in ("dhash", "phash", "dhash_mirrored", "phash_mirrored")}
    same_d, same_p = _bit_distances(column["dhash"], column["dhash"]), _bit_distances(column["phash"], column["phash"])
    flip_d = _bit_distances(column["dhash"], column["dhash_mirrored"])
    flip_p = _bit_distances(column["phash"], column["phash_mirrored"])
    same = (same_d <= max_dhash_bits) & (same_p <= max_phash_bits)
    flipped = (flip_d <= max_dhash_bits) & (flip_p <= max_phash_bits)
    pairs = []
    for i, j in zip(*np.nonzero(np.triu(same | flipped, k=1)), strict=True):
        use_flip = not same[i, j] or (flipped[i, j] and flip_d[i, j] + flip_p[i, j] < same_d[i, j] + same_p[i, j])
        d_bits, p_bits = (flip_d[i, j], flip_p[i, j]) if use_flip else (same_d[i, j], same_p[i, j])
        first, second = sorted((names[i], names[j]))
        pairs.append(NearDuplicatePair(first, second, int(d_bits), int(p_bits), bool(use_flip)))
    return sorted(pairs, key=lambda pair: (pair.first, pair.second))


def connected_groups(names: Iterable[str], edges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Each name's group key: the smallest name of its connected component (a stable key that only changes when a
    smaller name joins the group). Names without an edge are their own group."""
    parent = {name: name for name in names}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for first, second in edges:
        a, b = root(first), root(second)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {name: root(name) for name in parent}


def group_listing(group_of: dict[str, str]) -> list[list[str]]:
    """Groups with more than one member, each sorted, in a stable order."""
    members: dict[str, list[str]] = {}
    for name, key in group_of.items():
        members.setdefault(key, []).append(name)
    return sorted(sorted(group) for group in members.values() if len(group) > 1)
