"""Data-quality audit: which catalogue rows have a usable image, which do not and why, and which are copies."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from catalog_classifier.data.images import ImageLoadError, file_sha256, load_rgb
from catalog_classifier.data.near_duplicates import (
    connected_groups,
    group_listing,
    image_hashes,
    near_duplicate_pairs,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditResult:
    """Usable rows (with a ``sha256`` column) and the report that explains every exclusion."""

    usable: pd.DataFrame
    report: dict[str, Any] = field(default_factory=dict)


def resolve_inside(images_dir: Path, name: str) -> Path:
    """Path of ``name`` under ``images_dir``; refuses names that escape it (``../x.jpg``, absolute, symlinks out)."""
    root = images_dir.resolve()
    candidate = (images_dir / name).resolve()
    if not candidate.is_relative_to(root):
        raise ImageLoadError(f"path escapes the images folder ({name!r} resolves outside {images_dir})")
    return candidate


def check_image(images_dir: Path, name: str) -> str:
    """Return the image's content hash, or raise :class:`ImageLoadError` with the exclusion reason."""
    path = resolve_inside(images_dir, name)
    load_rgb(path)
    return file_sha256(path)


def duplicate_groups(usable: pd.DataFrame) -> list[list[str]]:
    """Groups (size > 1) of byte-identical images, each sorted, in a stable order."""
    groups = [sorted(group["image"]) for _, group in usable.groupby("sha256", sort=True) if len(group) > 1]
    return sorted(groups)


def audit_catalogue(catalogue: pd.DataFrame, images_dir: Path, classes: list[str]) -> AuditResult:
    """Check every row's image; exclude missing or unreadable ones with their reason, keep going."""
    hashes: list[str | None] = []
    missing: list[str] = []
    unreadable: list[dict[str, str]] = []
    for name in catalogue["image"]:
        try:
            hashes.append(check_image(images_dir, name))
        except ImageLoadError as err:
            hashes.append(None)
            if str(err) == "missing file":
                missing.append(name)
            else:
                unreadable.append({"image": name, "reason": str(err)})
    audited = catalogue.assign(sha256=hashes)
    usable = audited[audited["sha256"].notna()].reset_index(drop=True)
    groups = duplicate_groups(usable)
    counts = usable["label"].value_counts()
    report = {
        "rows": int(len(catalogue)),
        "usable_images": int(len(usable)),
        "missing_files": sorted(missing),
        "unreadable_files": sorted(unreadable, key=lambda item: item["image"]),
        "excluded": int(len(catalogue) - len(usable)),
        "duplicate_groups": groups,
        "duplicate_group_count": len(groups),
        "images_in_duplicate_groups": sum(len(group) for group in groups),
        "class_counts": {name: int(counts.get(name, 0)) for name in classes},
    }
    for name in missing:
        log.warning("excluded %s: missing file", name)
    for item in unreadable:
        log.warning("excluded %s: %s", item["image"], item["reason"])
    return AuditResult(usable=usable, report=report)


def group_near_duplicates(usable: pd.DataFrame, images_dir: Path, max_dhash_bits: int,
                          max_phash_bits: int) -> AuditResult:
    """``usable`` with a ``group`` column (byte copies and near-duplicates share a key: the group's smallest image
    name) and the report part that lists every near-duplicate pair and group."""
    names = list(usable["image"])
    hashes = [image_hashes(resolve_inside(images_dir, name)) for name in names]
    pairs = near_duplicate_pairs(names, hashes, max_dhash_bits, max_phash_bits)
    digest = dict(zip(usable["image"], usable["sha256"], strict=True))
    near = [pair for pair in pairs if digest[pair.first] != digest[pair.second]]
    copies = [(group[0], other) for group in duplicate_groups(usable) for other in group[1:]]
    group_of = connected_groups(names, [(pair.first, pair.second) for pair in near] + copies)
    groups = group_listing(group_of)
    report = {
        "near_duplicate_rule": {"max_dhash_bits": max_dhash_bits, "max_phash_bits": max_phash_bits,
                                "hashes": "imagehash dHash and pHash, 64 bits each, as is or one image mirrored"},
        "near_duplicate_pairs": [{"first": pair.first, "second": pair.second, "dhash_bits": pair.dhash_bits,
                                  "phash_bits": pair.phash_bits, "mirrored": pair.mirrored} for pair in near],
        "near_duplicate_groups": groups,
        "near_duplicate_group_count": len(groups),
        "images_in_near_duplicate_groups": sum(len(group) for group in groups),
    }
    log.info("near-duplicates: %d pairs beyond byte copies, %d groups holding %d images", len(near), len(groups),
             report["images_in_near_duplicate_groups"])
    return AuditResult(usable=usable.assign(group=usable["image"].map(group_of)), report=report)


def format_report(report: dict[str, Any]) -> str:
    """Human-readable summary printed by the split stage and ``check-data``."""
    lines = [
        f"rows in catalogue:      {report['rows']}",
        f"usable images:          {report['usable_images']}",
        f"missing files:          {len(report['missing_files'])}",
        f"unreadable files:       {len(report['unreadable_files'])}",
        f"duplicate groups:       {report['duplicate_group_count']} "
        f"({report['images_in_duplicate_groups']} images)",
    ]
    if "near_duplicate_group_count" in report:
        lines.append(f"near-duplicate groups:  {report['near_duplicate_group_count']} "
                     f"({report['images_in_near_duplicate_groups']} images, "
                     f"{len(report['near_duplicate_pairs'])} pairs beyond byte copies)")
    lines.append("class counts after exclusions:")
    lines += [f"  {name:<30} {count}" for name, count in report["class_counts"].items()]
    lines += [f"  missing: {name}" for name in report["missing_files"]]
    lines += [f"  unreadable: {item['image']}: {item['reason']}" for item in report["unreadable_files"]]
    return "\n".join(lines)
