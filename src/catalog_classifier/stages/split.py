"""Split stage: audit the catalogue, write stratified manifests and the quality report."""

from __future__ import annotations

from typing import Any

from catalog_classifier.config.layout import Project
from catalog_classifier.data.catalogue import read_catalogue
from catalog_classifier.data.quality import audit_catalogue, format_report
from catalog_classifier.data.splitting import split_catalogue, split_report
from catalog_classifier.ops.io import write_csv, write_json


def run_split(project: Project) -> dict[str, Any]:
    """Audit the catalogue, split it, write manifests and the quality report; return the report."""
    params = project.params
    catalogue = read_catalogue(project.path(params.data.catalogue), params.data.classes)
    audit = audit_catalogue(catalogue, project.path(params.data.images_dir), params.data.classes)
    splits = split_catalogue(audit.usable, params.split.fractions.model_dump(), params.split.seed)
    report = split_report(audit.report, splits, params.data.classes)
    for name, frame in splits.items():
        write_csv(project.manifest(name), frame)
    write_json(project.quality_report(), report)
    print(format_report(report))
    print("split: " + ", ".join(f"{name} {count}" for name, count in report["split_counts"].items()))
    return report

