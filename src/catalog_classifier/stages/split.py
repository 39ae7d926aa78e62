"""Split stage: audit the catalogue, write stratified manifests and the quality report."""

from __future__ import annotations

from typing import Any

import pandas as pd

from catalog_classifier.catalogue import read_catalogue
from catalog_classifier.io import write_csv, write_json
from catalog_classifier.layout import Project
from catalog_classifier.quality import audit_catalogue, format_report
from catalog_classifier.split import split_catalogue


def run_split(project: Project) -> dict[str, Any]:
    """Audit the catalogue, split it, write manifests and the quality report; return the report."""
    params = project.params
    catalogue = read_catalogue(project.path(params.data.catalogue), params.data.classes)
    audit = audit_catalogue(catalogue, project.path(params.data.images_dir), params.data.classes)
    splits = split_catalogue(audit.usable, params.split.fractions.model_dump(), params.split.seed)
    report = {
        **audit.report,
        "split_counts": {name: int(len(frame)) for name, frame in splits.items()},
        "split_class_counts": {
            name: {label: int((frame["label"] == label).sum()) for label in params.data.classes}
            for name, frame in splits.items()
        },
    }
    for name, frame in splits.items():
        write_csv(project.manifest(name), frame)
    write_json(project.quality_report(), report)
    print(format_report(report))
    print("split: " + ", ".join(f"{name} {count}" for name, count in report["split_counts"].items()))
    return report


def read_manifest(project: Project, split: str) -> pd.DataFrame:
    return pd.read_csv(project.manifest(split), dtype={"image": str, "label": str, "sha256": str})
