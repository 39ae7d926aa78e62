"""The split manifests (``image,label,label_id,sha256,group`` CSVs) as every stage after ``split`` reads them."""

from __future__ import annotations

import pandas as pd

from catalog_classifier.config.layout import Project


def read_manifest(project: Project, split: str) -> pd.DataFrame:
    """One split's manifest; image names and digests stay strings (a digest of digits is not a number)."""
    return pd.read_csv(project.manifest(split), dtype={"image": str, "label": str, "sha256": str, "group": str})
