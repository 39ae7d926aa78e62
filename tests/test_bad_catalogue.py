"""Broken catalogue CSVs: a specific message naming the row or column, exit status 2, no traceback, no output."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from badinput_support import run_cli, write_params
from conftest import tiny_params

from catalog_classifier.cli import main
from catalog_classifier.data.catalogue import CatalogueError, read_catalogue

CLASSES = tiny_params()["data"]["classes"]
BABY, WATCHES = CLASSES[0], CLASSES[-1]


def flipkart(*trees: str) -> str:
    """A Flipkart-format CSV: one row per category tree, images p0.jpg, p1.jpg, ..."""
    rows = "".join(f'p{i}.jpg,"{tree.replace(chr(34), chr(34) * 2)}"\n' for i, tree in enumerate(trees))
    return "image,product_category_tree\n" + rows


# name -> (file content, fragment the message must contain). Row numbers count the header as row 1.
CASES: dict[str, tuple[str | bytes, str]] = {
    "missing_label_column": ("image,labl\na.jpg,Watches\n",
                             "lacks column(s) product_category_tree (Flipkart format) or label (plain"),
    "missing_image_column": (f"picture,label\na.jpg,{WATCHES}\n", "lacks column(s) image"),
    "unknown_category_plain": (f"image,label\na.jpg,{WATCHES}\nb.jpg,Toys\nc.jpg,Toys\n",
                               "row 3: unknown category 'Toys' (2 row(s) in all)"),
    "unknown_category_tree": (flipkart(f'["{BABY} >> Bibs"]', '["Garden >> Hoses >> Green"]'),
                              "row 3: unknown category 'Garden'"),
    "tree_not_a_list": (flipkart(f'["{BABY} >> Bibs"]', "Garden >> Hoses"),
                        "row 3: malformed product_category_tree 'Garden >> Hoses'"),
    "tree_empty_list": (flipkart(f'["{BABY} >> Bibs"]', f'["{BABY} >> Bibs"]', "[]"),
                        "row 4: malformed product_category_tree '[]'"),
    "tree_unclosed": (flipkart(f'["{BABY} >> Bibs"'), "row 2: malformed product_category_tree"),
    "tree_empty_first_level": (flipkart(f'["{BABY} >> Bibs"]', '[" >> Bibs"]'),
                               "row 3: empty first level in product_category_tree"),
    "tree_of_numbers": (flipkart("[1, 2]"), "row 2: malformed product_category_tree '[1, 2]'"),
    "duplicated_row": (f"image,label\na.jpg,{BABY}\nb.jpg,{WATCHES}\na.jpg,{BABY}\n",
                       "row 4: image 'a.jpg' is listed more than once"),
    "same_image_two_labels": (f"image,label\na.jpg,{BABY}\na.jpg,{WATCHES}\n",
                              "row 3: image 'a.jpg' is listed more than once"),
    "empty_image_name": (f"image,label\na.jpg,{BABY}\n  ,{WATCHES}\n", "row 3: empty image name"),
    "empty_file": ("", "is empty"),
    "header_only": ("image,label\n", "has a header but no rows"),
    "blank_lines_only": ("\n\n\n", "cannot be parsed as CSV"),
    "ragged_row": (f"image,label\na.jpg,{BABY}\nb.jpg,{WATCHES},extra\n", "Expected 2 fields in line 3, saw 3"),
    "latin1": (f"image,label\na.jpg,{BABY}\ncaf\u00e9.jpg,{WATCHES}\n".encode("latin-1"), "is not UTF-8"),
}


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_reader_names_the_row_or_column(tmp_path: Path, case: str) -> None:
    content, fragment = CASES[case]
    path = write(tmp_path / f"{case}.csv", content)
    with pytest.raises(CatalogueError) as raised:
        read_catalogue(path, CLASSES)
    assert fragment in str(raised.value)


def test_a_good_catalogue_in_either_format_reads_the_same(tmp_path: Path) -> None:
    plain = write(tmp_path / "plain.csv", f"image,label\na.jpg, {WATCHES} \nb.jpg,{BABY}\n")
    tree = write(tmp_path / "tree.csv", flipkart(f'["{WATCHES} >> Wrist >> Men"]', f'["{BABY} >> Bibs"]')
                 .replace("p0.jpg", "a.jpg").replace("p1.jpg", "b.jpg"))
    for path in (plain, tree):
        frame = read_catalogue(path, CLASSES)
        assert frame.to_dict("records") == [
            {"image": "a.jpg", "label": WATCHES, "label_id": len(CLASSES) - 1},
            {"image": "b.jpg", "label": BABY, "label_id": 0},
        ]


def test_non_utf8_catalogue_names_the_offending_line(tmp_path: Path) -> None:
    # 40,000 good rows first: the bad byte is ~640 kB in, well past pandas' first read buffer.
    rows = "".join(f"img{i:05d}.jpg,{BABY}\n" for i in range(40000))
    content = f"image,label\n{rows}caf\u00e9.jpg,{WATCHES}\n".encode("latin-1")
    path = write(tmp_path / "big_latin1.csv", content)
    with pytest.raises(CatalogueError, match="not UTF-8") as raised:
        read_catalogue(path, CLASSES)
    assert "line 40002" in str(raised.value)


@pytest.fixture()
def project(tmp_path: Path) -> Iterator[Path]:
    """Tiny params whose catalogue is ``data/catalogue.csv``; restores the SIGTERM handler ``main`` installs."""
    params = tiny_params()
    params["data"]["catalogue"] = "data/catalogue.csv"
    (tmp_path / "data" / "Images").mkdir(parents=True)
    write_params(tmp_path / "params.yaml", params)
    handler = signal.getsignal(signal.SIGTERM)
    yield tmp_path
    signal.signal(signal.SIGTERM, handler)


@pytest.mark.parametrize("case", sorted(CASES))
def test_split_reports_one_line_exits_2_and_writes_nothing(
    project: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    content, fragment = CASES[case]
    write(project / "data" / "catalogue.csv", content)
    assert main(["split", "--params", str(project / "params.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("catalog-classifier split: error: ") and "\n" not in err
    assert fragment in err
    assert not (project / "artifacts").exists()


def test_command_line_exit_status_and_no_traceback(project: Path) -> None:
    # One real process (the in-process cases above cover the rest): exit status and stderr as a shell sees them.
    content, fragment = CASES["unknown_category_tree"]
    write(project / "data" / "catalogue.csv", content)
    result = run_cli(["split", "--params", str(project / "params.yaml")], cwd=project)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr
    assert not (project / "artifacts").exists()


def test_check_data_on_a_broken_catalogue_exits_2(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    content, fragment = CASES["unknown_category_plain"]
    write(project / "data" / "catalogue.csv", content)
    assert main(["check-data", str(project / "data"), "--params", str(project / "params.yaml")]) == 2
    assert fragment in capsys.readouterr().err
