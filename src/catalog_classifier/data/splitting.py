"""Stratified, seeded train/val/test split of near-duplicate groups, stable as the catalogue grows.

Groups: byte-identical copies and near-duplicates (:mod:`catalog_classifier.data.near_duplicates`: the same listing
photo re-encoded, re-framed, mirrored or in another shade) form one group, and a group never straddles two splits:
a copy in train and its twin in test would flatter the test score. Groups are split class by class (a group's class
is its majority label), biggest first, each to the split furthest below its target, so each class keeps the
requested fractions to within the size of its largest group.

Stable: a previous assignment (image -> split, written by the last split) is kept as long as the rule that made
it (seed, fractions, near-duplicate thresholds) is unchanged. Images that were already assigned keep their split;
only new images are assigned, a new member of an existing group joins that group's split, and new groups go, class
by class, to the split furthest below the class's target. So adding rows never moves an existing image between
train and test, and the promotion gate keeps comparing models on images neither trained on.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["image", "label", "label_id", "sha256", "group"]


class EmptyCatalogueError(ValueError):
    """No usable image at all: three empty manifests would only fail later, far from the cause."""


@dataclass(frozen=True)
class SplitResult:
    """The three manifests and how the assignment came about (kept, new, dropped images; redrawn or not)."""

    splits: dict[str, pd.DataFrame]
    assignment: dict[str, str]
    history: dict[str, Any] = field(default_factory=dict)


def class_targets(n_images: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Images per split for one class: val and test rounded, train takes the rest (150 → 100/25/25)."""
    val = round(n_images * fractions["val"])
    test = round(n_images * fractions["test"])
    return {"train": n_images - val - test, "val": val, "test": test}


def _assign_class(groups: list[list[int]], targets: dict[str, int], filled: dict[str, int]) -> dict[int, str]:
    """Greedy: biggest groups first, each to the split that is furthest below its target (``filled`` counts what
    the class already holds, e.g. its images kept from a previous split)."""
    filled = dict(filled)
    assignment: dict[int, str] = {}
    for members in sorted(groups, key=len, reverse=True):  # stable: keeps the seeded shuffle among equals
        split = max(SPLITS, key=lambda name: (targets[name] - filled[name], -SPLITS.index(name)))
        filled[split] += len(members)
        for row in members:
            assignment[row] = split
    return assignment


def _group_keys(frame: pd.DataFrame) -> pd.Series:
    """Each row's group key: the ``group`` column when present, else its content hash (byte copies only)."""
    return frame["group"] if "group" in frame else frame["sha256"]


def _majority(values: list[str]) -> str:
    counts = Counter(values)
    return max(SPLITS, key=lambda name: (counts.get(name, 0), -SPLITS.index(name)))


def split_catalogue(usable: pd.DataFrame, fractions: Mapping[str, float], seed: int,
                    previous: Mapping[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """Split rows with columns image, label, label_id, sha256 (and group) into sorted train/val/test manifests."""
    return assign_splits(usable, fractions, seed, previous).splits


def assign_splits(usable: pd.DataFrame, fractions: Mapping[str, float], seed: int,
                  previous: Mapping[str, str] | None = None) -> SplitResult:
    """The split of ``usable``, keeping every image of ``previous`` (image -> split) that is still in it."""
    if usable.empty:
        raise EmptyCatalogueError("no usable image in the catalogue: nothing to split")
    previous = dict(previous or {})
    rng = np.random.default_rng(seed)
    frame = usable.sort_values("image").reset_index(drop=True)
    frame["group"] = _group_keys(frame).astype(str)
    kept = frame["image"].map(previous)
    assignment: dict[int, str] = {row: split for row, split in kept.dropna().items()}
    # A group's class is its majority label, so copies labelled differently still move together.
    group_label = frame.groupby("group")["label_id"].agg(lambda ids: ids.mode().iloc[0])
    rows_of = {key: list(rows) for key, rows in frame.groupby("group").groups.items()}
    spanning = []
    for members in rows_of.values():
        old = [assignment[row] for row in members if row in assignment]
        if not old:
            continue
        home = _majority(old)
        if len(set(old)) > 1:
            spanning.append(sorted(frame.loc[members, "image"]))
        for row in members:
            assignment.setdefault(row, home)  # a new member joins its group's split; kept images never move
    class_of_row = frame["group"].map(group_label)
    for label_id in sorted(group_label.unique()):
        in_class = frame.index[class_of_row == label_id]
        filled = Counter(assignment[row] for row in in_class if row in assignment)
        new_keys = sorted({frame.at[row, "group"] for row in in_class if row not in assignment})
        rng.shuffle(new_keys)
        groups = [rows_of[key] for key in new_keys]
        targets = class_targets(len(in_class), fractions)
        assignment.update(_assign_class(groups, targets, {name: filled.get(name, 0) for name in SPLITS}))
    frame["split"] = frame.index.map(assignment)
    splits = {name: frame.loc[frame["split"] == name, MANIFEST_COLUMNS].sort_values("image").reset_index(drop=True)
              for name in SPLITS}
    n_kept = int(kept.notna().sum())
    history = {"kept": n_kept, "new": int(len(frame) - n_kept),
               "dropped": len(set(previous) - set(frame["image"])),
               "groups_spanning_splits": sorted(spanning)}
    if spanning:
        log.warning("%d near-duplicate group(s) hold images kept in different splits (new images joined them); "
                    "kept images never move: %s", len(spanning), spanning)
    return SplitResult(splits=splits, assignment=dict(zip(frame["image"], frame["split"], strict=True)),
                       history=history)


def previous_assignment(document: Mapping[str, Any] | None, rule: Mapping[str, Any]) -> tuple[dict[str, str], str]:
    """The image -> split map to keep from the last split's assignment document, and why (or why not).

    A document made under another rule (seed, fractions or near-duplicate thresholds changed) is not kept: changing
    the rule is asking for a new draw. No document (first split, or a deleted file): a fresh draw.
    """
    if not document:
        return {}, "fresh draw: no previous assignment"
    if document.get("rule") != dict(rule):
        return {}, f"fresh draw: the split rule changed ({document.get('rule')} -> {dict(rule)})"
    images = document.get("images") or {}
    unknown = sorted({split for split in images.values() if split not in SPLITS})
    if unknown:
        raise ValueError(f"previous assignment names unknown split(s) {unknown}")
    return dict(images), f"kept the previous assignment of {len(images)} image(s)"


def assignment_document(assignment: Mapping[str, str], rule: Mapping[str, Any]) -> dict[str, Any]:
    """What the split stage keeps for the next split: the rule and every image's split, sorted by name."""
    return {"rule": dict(rule), "images": dict(sorted(assignment.items()))}


def split_report(audit_report: dict[str, Any], splits: dict[str, pd.DataFrame], classes: list[str],
                 fractions: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The quality audit's report plus how many images, and of which class, each split received, and (with
    ``fractions``) each class's largest distance from its target count."""
    report = {
        **audit_report,
        "split_counts": {name: int(len(frame)) for name, frame in splits.items()},
        "split_class_counts": {
            name: {label: int((frame["label"] == label).sum()) for label in classes}
            for name, frame in splits.items()
        },
    }
    if fractions is not None:
        report["split_class_deviation"] = class_deviation(report["split_class_counts"], fractions)
    return report


def class_deviation(split_class_counts: Mapping[str, Mapping[str, int]],
                    fractions: Mapping[str, float]) -> dict[str, int]:
    """Per class, the largest |images in a split - that split's target| over the three splits."""
    classes = next(iter(split_class_counts.values())).keys()
    deviation = {}
    for label in classes:
        counts = {name: split_class_counts[name][label] for name in SPLITS}
        targets = class_targets(sum(counts.values()), fractions)
        deviation[label] = max(abs(counts[name] - targets[name]) for name in SPLITS)
    return deviation
