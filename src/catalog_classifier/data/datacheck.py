"""``check-data``: the quality report for any data folder, before it goes anywhere near the pipeline.

A seller's or another catalogue's delivery is a folder holding a catalogue CSV and an images folder. The same
reader and audit as the split stage run on it, so what this prints is exactly what ``split`` would exclude.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catalog_classifier.config.params import DataParams
from catalog_classifier.data.catalogue import CatalogueError, read_catalogue
from catalog_classifier.data.quality import audit_catalogue


def find_catalogue(folder: Path, default_name: str) -> Path:
    """``folder/<default_name>`` if present, else the folder's only CSV; a clear error otherwise."""
    default = folder / default_name
    if default.is_file():
        return default
    candidates = sorted(path for path in folder.glob("*.csv") if path.is_file())
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(path.name for path in candidates) or "none"
    raise CatalogueError(
        f"no catalogue in {folder}: expected {default_name} or a single CSV (found: {found}); "
        "name it with --catalogue"
    )


def check_data_folder(
    folder: Path | str,
    data_params: DataParams,
    catalogue: Path | str | None = None,
    images_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Audit ``folder`` (catalogue CSV + images folder) against the project's classes; return the report."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder not found: {folder}")
    catalogue_path = Path(catalogue) if catalogue else find_catalogue(folder, data_params.catalogue.name)
    images_path = Path(images_dir) if images_dir else folder / data_params.images_dir.name
    if not images_path.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_path} (name it with --images)")
    frame = read_catalogue(catalogue_path, data_params.classes)
    report = audit_catalogue(frame, images_path, data_params.classes).report
    return {"catalogue": str(catalogue_path), "images_dir": str(images_path), **report}
