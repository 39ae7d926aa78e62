"""Split stage: audit the catalogue, group near-duplicates, keep the previous assignment, write the manifests,
the quality report and the assignment the next split keeps."""

from __future__ import annotations

from typing import Any

from catalog_classifier.config.layout import Project
from catalog_classifier.data.catalogue import read_catalogue
from catalog_classifier.data.quality import audit_catalogue, format_report, group_near_duplicates
from catalog_classifier.data.splitting import (
    assign_splits,
    assignment_document,
    previous_assignment,
    split_report,
)
from catalog_classifier.ops.exits import InputError
from catalog_classifier.ops.io import read_json, write_csv, write_json


def run_split(project: Project) -> dict[str, Any]:
    """Audit the catalogue, split it (keeping every image's previous split), write manifests and reports."""
    params = project.params
    catalogue = read_catalogue(project.path(params.data.catalogue), params.data.classes)
    images_dir = project.path(params.data.images_dir)
    audit = audit_catalogue(catalogue, images_dir, params.data.classes)
    if audit.usable.empty:
        raise InputError(f"no usable image: {audit.report['rows']} row(s), {len(audit.report['missing_files'])} "
                         f"missing file(s), {len(audit.report['unreadable_files'])} unreadable; nothing to split")
    rule = params.split.rule()
    near = params.split.near_duplicates
    grouped = group_near_duplicates(audit.usable, images_dir, near.max_dhash_bits, near.max_phash_bits)
    assignment_file = project.split_assignment()
    previous, how = previous_assignment(read_json(assignment_file) if assignment_file.is_file() else None, rule)
    result = assign_splits(grouped.usable, params.split.fractions.model_dump(), params.split.seed, previous)
    report = split_report({**audit.report, **grouped.report}, result.splits, params.data.classes,
                          params.split.fractions.model_dump())
    report["split_assignment"] = {"how": how, **result.history}
    for name, frame in result.splits.items():
        write_csv(project.manifest(name), frame)
    write_json(project.quality_report(), report)
    write_json(assignment_file, assignment_document(result.assignment, rule))
    print(format_report(report))
    print(f"split: {how}; {result.history['kept']} kept, {result.history['new']} new, "
          f"{result.history['dropped']} no longer in the catalogue")
    print("split: " + ", ".join(f"{name} {count}" for name, count in report["split_counts"].items()))
    return report
