"""Which images are explained: named ones first, then the most confident correct and wrong test predictions, and
a seeded sample for the class-level views."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class LocalChoice:
    """One image to explain on its own: why it was chosen, and where it comes from."""

    image: str
    kind: str  # named | correct | wrong
    split: str


def select_local_images(
    predictions: pd.DataFrame, named: Sequence[str], manifests: dict[str, pd.DataFrame], n_correct: int,
    n_wrong: int,
) -> tuple[list[LocalChoice], list[str]]:
    """Named images (looked up in test, then val, then train), then the most confident correct and wrong
    test predictions not already chosen. Returns the choices and the named images found nowhere."""
    choices: list[LocalChoice] = []
    missing: list[str] = []
    for name in dict.fromkeys(named):
        split = next((split for split, frame in manifests.items() if name in set(frame["image"])), None)
        if split is None:
            missing.append(name)
        else:
            choices.append(LocalChoice(name, "named", split))
    taken = {choice.image for choice in choices}
    ranked = predictions.sort_values(["confidence", "image"], ascending=[False, True])
    for kind, correct, count in (("correct", True, n_correct), ("wrong", False, n_wrong)):
        rows = ranked[(ranked["correct"].astype(bool) == correct) & ~ranked["image"].isin(taken)].head(count)
        choices.extend(LocalChoice(name, kind, "test") for name in rows["image"])
        taken.update(rows["image"])
    return choices, missing


def sample_indices(count: int, size: int, seed: int) -> np.ndarray:
    """A seeded sample of ``size`` positions out of ``count`` (all of them when fewer), in ascending order."""
    if size >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))
