"""Stratified, seeded train/val/test split that keeps byte-identical copies on one side.

The Flipkart sample reuses the same photo for several listings; a random split would put a copy in train and
its twin in test and flatter the test score. Images are therefore split as groups (one group per content hash),
class by class, so each class keeps the requested fractions and no copy straddles two splits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["image", "label", "label_id", "sha256"]


def class_targets(n_images: int, fractions: dict[str, float]) -> dict[str, int]:
    """Images per split for one class: val and test rounded, train takes the rest (150 → 100/25/25)."""
    val = round(n_images * fractions["val"])
    test = round(n_images * fractions["test"])
    return {"train": n_images - val - test, "val": val, "test": test}


def _assign_class(groups: list[list[int]], targets: dict[str, int]) -> dict[int, str]:
    """Greedy: biggest groups first, each to the split that is furthest below its target."""
    filled = dict.fromkeys(SPLITS, 0)
    assignment: dict[int, str] = {}
    for members in sorted(groups, key=len, reverse=True):  # stable: keeps the seeded shuffle among equals
        split = max(SPLITS, key=lambda name: (targets[name] - filled[name], -SPLITS.index(name)))
        filled[split] += len(members)
        for row in members:
            assignment[row] = split
    return assignment


def split_catalogue(usable: pd.DataFrame, fractions: dict[str, float], seed: int) -> dict[str, pd.DataFrame]:
    """Split rows with columns image, label, label_id, sha256 into sorted train/val/test manifests."""
    rng = np.random.default_rng(seed)
    frame = usable.sort_values("image").reset_index(drop=True)
    # A copy group's class is its majority label, so copies labelled differently still move together.
    group_label = frame.groupby("sha256")["label_id"].agg(lambda ids: ids.mode().iloc[0])
    assignment: dict[int, str] = {}
    for label_id in sorted(group_label.unique()):
        hashes = sorted(group_label.index[group_label == label_id])
        rng.shuffle(hashes)
        groups = [frame.index[frame["sha256"] == digest].tolist() for digest in hashes]
        n_images = sum(len(members) for members in groups)
        assignment.update(_assign_class(groups, class_targets(n_images, fractions)))
    frame["split"] = frame.index.map(assignment)
    return {
        name: frame.loc[frame["split"] == name, MANIFEST_COLUMNS].sort_values("image").reset_index(drop=True)
        for name in SPLITS
    }


def split_report(audit_report: dict[str, Any], splits: dict[str, pd.DataFrame], classes: list[str]) -> dict[str, Any]:
    """The quality audit's report plus how many images, and of which class, each split received."""
    return {
        **audit_report,
        "split_counts": {name: int(len(frame)) for name, frame in splits.items()},
        "split_class_counts": {
            name: {label: int((frame["label"] == label).sum()) for label in classes}
            for name, frame in splits.items()
        },
    }
