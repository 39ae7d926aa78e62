"""``catalog-classifier predict``: the registered champion on real images gives the evaluate stage's answers,
with the model's own preprocessing; unreadable files get a reason and the batch goes on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from registry_helpers import cli, cli_args, eval_predictions, promote, split_images

pytestmark = pytest.mark.slow

NAME = "predict"


@pytest.fixture(scope="module")
def champion(tiny_pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny project with the pipeline's best model registered as champion of NAME; returns (root, model)."""
    project = tiny_pipeline
    report = promote(project, NAME, tmp_path_factory.mktemp("predict") / "promotion.json")
    assert report["promote"] and report["version"] == "1"
    return project, report["source_model"]


def predict(project: Path, paths: list[Path | str], output: Path, *extra: str) -> pd.DataFrame:
    assert cli(["predict", *map(str, paths), "--output", str(output), *extra, *cli_args(project, NAME)]) == 0
    return pd.read_csv(output, keep_default_na=False)


def test_predict_with_the_champion_agrees_with_the_evaluate_stage(champion: tuple[Path, str], tmp_path: Path) -> None:
    project, model = champion
    images = split_images(project)
    # A different image size in params must not matter: preprocessing comes from the model's stored config.
    frame = predict(project, images, tmp_path / "out.csv", "--set", "train.image_size=48")
    assert list(frame.columns) == ["image", "label", "probability", "top3", "error"]
    assert list(frame["image"]) == [str(path) for path in images]
    expected = eval_predictions(project, model).set_index("image").loc[[path.name for path in images]]
    assert list(frame["label"]) == list(expected["pred_label"])
    assert frame["probability"].astype(float).tolist() == pytest.approx(expected["confidence"].tolist(), abs=1e-5)
    assert (frame["error"] == "").all()
    for row, (_, evaluated) in zip(frame.itertuples(), expected.iterrows(), strict=True):
        top3 = json.loads(row.top3)
        assert [label for label, _ in top3][0] == row.label and len(top3) == 3
        assert [p for _, p in top3] == sorted((p for _, p in top3), reverse=True)
        for label, probability in top3:  # every top-3 probability is the evaluated one for that class
            assert probability == pytest.approx(evaluated[f"p_{label}"], abs=1e-5)


def test_unreadable_images_get_a_reason_and_the_batch_goes_on(champion: tuple[Path, str], tmp_path: Path) -> None:
    project, model = champion
    good = split_images(project)[:2]
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(good[0], folder / good[0].name)
    shutil.copy(good[1], folder / "nested" / good[1].name)
    (folder / "broken.jpg").write_text("this is not a JPEG", encoding="utf-8")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("ignored: not an image name", encoding="utf-8")
    missing = tmp_path / "gone.jpg"
    frame = predict(project, [folder, missing], tmp_path / "out.csv").set_index("image")

    assert sorted(frame.index) == sorted([str(folder / "broken.jpg"), str(folder / "empty.png"),
                                          str(folder / good[0].name), str(folder / "nested" / good[1].name),
                                          str(missing)])
    assert frame.loc[str(folder / "broken.jpg"), "error"] == "not an image (format not recognised)"
    assert frame.loc[str(folder / "empty.png"), "error"] == "empty file (0 bytes)"
    assert frame.loc[str(missing), "error"] == "missing file"
    assert (frame.loc[frame["error"] != "", "label"] == "").all()
    evaluated = eval_predictions(project, model).set_index("image")["pred_label"]
    assert frame.loc[str(folder / good[0].name), "label"] == evaluated[good[0].name]
    assert frame.loc[str(folder / "nested" / good[1].name), "label"] == evaluated[good[1].name]


def test_any_version_can_be_asked_for(champion: tuple[Path, str], tmp_path: Path) -> None:
    project, _ = champion
    images = split_images(project)[:3]
    by_alias = predict(project, images, tmp_path / "champion.csv")
    by_version = predict(project, images, tmp_path / "v1.csv", "--version", "1")
    by_uri = predict(project, images, tmp_path / "uri.csv", "--model", f"models:/{NAME}@challenger")
    pd.testing.assert_frame_equal(by_alias, by_version)
    pd.testing.assert_frame_equal(by_alias, by_uri)


def test_an_unknown_version_is_one_clear_error(champion: tuple[Path, str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    project, _ = champion
    capsys.readouterr()
    code = cli(["predict", str(split_images(project)[0]), "--version", "99", *cli_args(project, NAME)])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("catalog-classifier predict: error: cannot load models:/predict/99")
    assert len(error.splitlines()) == 1
