"""Catalogue reading, quality audit and the grouped stratified split, on the real data and on small cases."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import REAL_CATALOGUE, REPO, real_params

from catalog_classifier.config.layout import Project
from catalog_classifier.config.params import load_params
from catalog_classifier.data.catalogue import CatalogueError, first_category, read_catalogue
from catalog_classifier.data.quality import audit_catalogue
from catalog_classifier.data.splitting import class_targets, split_catalogue
from catalog_classifier.stages.split import run_split

CLASSES = real_params()["data"]["classes"]
MISSING = ["22ac36ba254a68d7dd6173f099771147.jpg", "994f1d8ade16b9fddce3c127eb7f38ed.jpg",
           "c4ac93e194281d6d1450ffdaa52f5f99.jpg"]


def test_first_category_takes_the_first_level() -> None:
    assert first_category('["Home Furnishing >> Curtains & Accessories >> Curtains"]', 2) == "Home Furnishing"
    with pytest.raises(CatalogueError, match="row 7: malformed product_category_tree"):
        first_category("Home Furnishing >> Curtains", 7)


def test_flipkart_catalogue_has_150_rows_per_label_in_fixed_order(real_data: Path) -> None:
    catalogue = read_catalogue(REAL_CATALOGUE, CLASSES)
    assert len(catalogue) == 1050
    assert catalogue.groupby("label_id")["label"].agg(["first", "size"]).to_dict("list") == {
        "first": CLASSES, "size": [150] * 7}


def test_plain_image_label_csv_gives_the_same_frame(tmp_path: Path) -> None:
    plain = tmp_path / "other.csv"
    plain.write_text("image,label\na.jpg,Watches\nb.jpg, Baby Care\n", encoding="utf-8")
    frame = read_catalogue(plain, CLASSES)
    assert frame.to_dict("list") == {"image": ["a.jpg", "b.jpg"], "label": ["Watches", "Baby Care"],
                                     "label_id": [6, 0]}


def test_unknown_category_names_the_row(tmp_path: Path) -> None:
    plain = tmp_path / "other.csv"
    plain.write_text("image,label\na.jpg,Watches\nb.jpg,Toys\n", encoding="utf-8")
    with pytest.raises(CatalogueError, match="row 3: unknown category 'Toys'"):
        read_catalogue(plain, CLASSES)


@pytest.fixture(scope="module")
def audit(real_data: Path):
    return audit_catalogue(read_catalogue(REAL_CATALOGUE, CLASSES), real_data / "Images", CLASSES)


def test_quality_report_on_real_data(audit) -> None:
    report = audit.report
    assert report["rows"] == 1050 and report["usable_images"] == 1047
    assert report["missing_files"] == MISSING
    assert report["unreadable_files"] == []
    assert report["duplicate_group_count"] == 6 and report["images_in_duplicate_groups"] == 22
    assert sum(report["class_counts"].values()) == 1047
    for group in report["duplicate_groups"]:
        labels = set(audit.usable.set_index("image").loc[group, "label"])
        assert labels == {"Computers"}


def test_real_split_is_stratified_and_never_straddles_copies(audit) -> None:
    fractions = load_params(REPO / "params.yaml").split.fractions.model_dump()
    splits = split_catalogue(audit.usable, fractions, seed=42)
    assert {name: len(frame) for name, frame in splits.items()} == {"train": 697, "val": 175, "test": 175}
    for label, count in audit.report["class_counts"].items():
        targets = class_targets(count, fractions)
        got = {name: int((frame["label"] == label).sum()) for name, frame in splits.items()}
        assert got == targets, label
    train_hashes = set(splits["train"]["sha256"])
    for name in ("val", "test"):
        assert not train_hashes & set(splits[name]["sha256"]), f"{name} has a byte-identical copy in train"
    assert not set(splits["val"]["sha256"]) & set(splits["test"]["sha256"])
    all_images = pd.concat(splits.values())["image"]
    assert all_images.is_unique and len(all_images) == 1047


def test_split_depends_on_the_seed(audit) -> None:
    fractions = {"train": 2 / 3, "val": 1 / 6, "test": 1 / 6}
    first = split_catalogue(audit.usable, fractions, seed=1)["test"]["image"].tolist()
    assert first == split_catalogue(audit.usable, fractions, seed=1)["test"]["image"].tolist()
    assert first != split_catalogue(audit.usable, fractions, seed=2)["test"]["image"].tolist()


def test_split_stage_writes_byte_identical_manifests(tmp_path: Path, real_data: Path) -> None:
    outputs = []
    for attempt in ("a", "b"):
        overrides = {"split.out_dir": str(tmp_path / attempt),
                     "data.catalogue": str(REAL_CATALOGUE), "data.images_dir": str(real_data / "Images")}
        project = Project.load(REPO / "params.yaml", overrides)
        run_split(project)
        outputs.append({name: (tmp_path / attempt / name).read_bytes()
                        for name in ("train.csv", "val.csv", "test.csv", "quality.json")})
    assert outputs[0] == outputs[1]
    header = outputs[0]["test.csv"].split(b"\n")[0]
    assert header == b"image,label,label_id,sha256"


def test_copies_with_a_small_class_stay_together() -> None:
    usable = pd.DataFrame({
        "image": [f"{i}.jpg" for i in range(12)],
        "label": ["A"] * 12, "label_id": [0] * 12,
        "sha256": ["dup"] * 4 + [f"h{i}" for i in range(8)],
    })
    splits = split_catalogue(usable, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    holding = [name for name, frame in splits.items() if (frame["sha256"] == "dup").any()]
    assert len(holding) == 1
    assert {name: len(frame) for name, frame in splits.items()} == {"train": 6, "val": 3, "test": 3}
