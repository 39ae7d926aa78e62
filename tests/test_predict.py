"""``catalog-classifier predict``: calibrated confidences, review flags, a review queue and the precision the
auto-labels reached; unreadable files get a reason and the batch goes on.

First on a stub network whose calibrated probabilities are known by construction (fast), then with the registered
champion of the tiny pipeline on real images, which must give the evaluate stage's answers (slow).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO
from PIL import Image
from registry_helpers import (
    calibrated,
    cli,
    cli_args,
    eval_predictions,
    midpoint_threshold,
    promote,
    split_images,
    write_autolabel,
)

from catalog_classifier.modeling.batch_prediction import margin, review_queue
from catalog_classifier.modeling.prediction import (
    Calibration,
    ImageClassifier,
    InferenceSettings,
    parse_top3,
    write_classifier_dir,
)

COLUMNS = ["image", "label", "confidence", "top3", "needs_review", "prediction_set", "error"]

# --- a stub network with known calibrated probabilities ---------------------------------------------------------

STUB_CLASSES = ["Baby Care", "Watches", "Computers"]
STUB_TEMPERATURE = 2.0
STUB_THRESHOLD = 0.6
STUB_SET_QUANTILE = 0.68  # a conformal set holds every class with 1 - p <= 0.68, i.e. p >= 0.32
# Red value of a solid-colour image -> its calibrated class probabilities; the stub's logits are T * log(p), so
# softmax(logits / T) = p exactly, while the uncalibrated softmax(logits) would be p^2 renormalised.
STUB_PROBABILITIES = {
    10: (0.7, 0.2, 0.1),     # a: Baby Care 0.7 >= 0.6: auto-labelled
    20: (0.3, 0.5, 0.2),     # b: Watches 0.5, margin 0.2: review
    30: (0.05, 0.45, 0.5),   # c: Computers 0.5, margin 0.05: review, before b
    40: (0.05, 0.9, 0.05),   # d: Watches 0.9: auto-labelled
    50: (0.35, 0.25, 0.4),   # e: Computers 0.4: review, first
}


class StubNetwork(torch.nn.Module):
    """Logits T * log(p) for the image's red value; records every batch size it is run on."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(len(images))
        reds = (images[:, 0, 0, 0] * 255).round().long().tolist()
        return torch.tensor([[STUB_TEMPERATURE * math.log(p) for p in STUB_PROBABILITIES[red]] for red in reds])


def stub_classifier(batch_size: int = 2) -> ImageClassifier:
    config = {"classes": STUB_CLASSES, "input_size": [4, 4], "interpolation": "bilinear", "model_name": "stub"}
    settings = InferenceSettings(batch_size=batch_size, channels_last=False, bf16=False)
    calibration = Calibration(temperature=STUB_TEMPERATURE, threshold=STUB_THRESHOLD, target_precision=0.9,
                              set_quantile=STUB_SET_QUANTILE, set_alpha=0.05)
    return ImageClassifier(StubNetwork(), config, settings, calibration)  # type: ignore[arg-type]


def write_stub_images(folder: Path) -> None:
    """a..e as solid PNGs (lossless, so the red value survives), a corrupt file; no missing.png on purpose."""
    (folder / "photos").mkdir(parents=True)
    for name, red in zip("abcde", STUB_PROBABILITIES, strict=True):
        Image.new("RGB", (8, 8), (red, 0, 0)).save(folder / "photos" / f"{name}.png")
    (folder / "photos" / "corrupt.png").write_bytes(b"\x89PNG but not really")


# CSV rows (image relative to the CSV's folder, true label); e has no label, missing.png does not exist.
STUB_ROWS = [("photos/a.png", "Baby Care"), ("photos/missing.png", "Watches"), ("photos/b.png", "Watches"),
             ("photos/corrupt.png", "Computers"), ("photos/c.png", "Baby Care"), ("photos/d.png", "Computers"),
             ("photos/e.png", "")]


@pytest.fixture
def stub_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The CLI's predict with the stub classifier in place of a registered model; returns what it needs."""
    import catalog_classifier.registry.model_access as model_access
    import catalog_classifier.stages.predict as predict_stage

    classifier = stub_classifier()
    monkeypatch.setattr(model_access, "load_model_or_classify",
                        lambda uri, tracking_uri, scratch: model_access.LoadedModel(classifier, tmp_path / "photos"))
    monkeypatch.setattr(predict_stage, "setup_mlflow", lambda *args: None)
    write_stub_images(tmp_path)
    csv = tmp_path / "todo.csv"
    pd.DataFrame(STUB_ROWS, columns=["image", "label"]).to_csv(csv, index=False)
    return SimpleNamespace(classifier=classifier, csv=csv, output=tmp_path / "out" / "predictions.csv",
                           args=["--params", str(REPO / "params.yaml"), "--set", "batch_predict.runtime=torch"])


def test_a_csv_with_unreadable_rows_gets_their_reasons_and_the_rest_predicted(
        stub_run: SimpleNamespace, capsys: pytest.CaptureFixture) -> None:
    assert cli(["predict", "--input", str(stub_run.csv), "--output", str(stub_run.output), *stub_run.args]) == 0
    frame = pd.read_csv(stub_run.output, keep_default_na=False)
    assert list(frame.columns) == COLUMNS
    assert list(frame["image"]) == [name for name, _ in STUB_ROWS]  # one row per input, in order, as written
    assert list(frame["error"]) == ["", "missing file", "", "not an image (format not recognised)", "", "", ""]
    assert list(frame["label"]) == ["Baby Care", "", "Watches", "", "Computers", "Watches", "Computers"]
    readable = frame[frame["error"] == ""]
    assert readable["confidence"].astype(float).tolist() == pytest.approx([0.7, 0.5, 0.5, 0.9, 0.4], abs=1e-6)
    assert list(frame["needs_review"]) == [False, True, True, True, True, False, True]
    assert frame.loc[frame["error"] != "", "confidence"].tolist() == ["", ""]
    assert readable["top3"].iloc[0] == "Baby Care:0.700000;Watches:0.200000;Computers:0.100000"
    # Five readable images in full batches of two (the classifier's batch_size): the missing and the corrupt rows
    # between them take no place in a batch.
    assert stub_run.classifier.model.batch_sizes == [2, 2, 1]
    assert "auto-labelled 2/7" in capsys.readouterr().out


def test_the_review_queue_is_most_uncertain_first(stub_run: SimpleNamespace) -> None:
    assert cli(["predict", "--input", str(stub_run.csv), "--output", str(stub_run.output), *stub_run.args]) == 0
    queue = pd.read_csv(stub_run.output.with_name("predictions_review.csv"), keep_default_na=False)
    # e (0.4), then c and b at 0.5: c's runner-up is closer (margin 0.05 < 0.2); unreadable rows last.
    assert list(queue["image"]) == ["photos/e.png", "photos/c.png", "photos/b.png", "photos/missing.png",
                                    "photos/corrupt.png"]
    assert list(queue.columns) == COLUMNS and queue["needs_review"].all()


def test_every_review_row_carries_its_conformal_prediction_set(stub_run: SimpleNamespace) -> None:
    assert cli(["predict", "--input", str(stub_run.csv), "--output", str(stub_run.output), *stub_run.args]) == 0
    frame = pd.read_csv(stub_run.output, keep_default_na=False).set_index("image")
    # p >= 0.32, most probable first: a (0.7 0.2 0.1), b (0.3 0.5 0.2), c (0.05 0.45 0.5), d (0.05 0.9 0.05),
    # e (0.35 0.25 0.4); an unreadable row has none.
    expected = {"photos/a.png": "Baby Care", "photos/b.png": "Watches", "photos/c.png": "Computers|Watches",
                "photos/d.png": "Watches", "photos/e.png": "Computers|Baby Care", "photos/missing.png": "",
                "photos/corrupt.png": ""}
    assert frame["prediction_set"].to_dict() == expected
    queue = pd.read_csv(stub_run.output.with_name("predictions_review.csv"), keep_default_na=False)
    assert dict(zip(queue["image"], queue["prediction_set"], strict=True)) == {
        name: expected[name] for name in ("photos/e.png", "photos/c.png", "photos/b.png", "photos/missing.png",
                                          "photos/corrupt.png")}


def test_the_served_model_answers_prediction_sets_as_lists(tmp_path: Path) -> None:
    import base64

    from catalog_classifier.registry.pyfunc_model import CatalogClassifierModel

    write_stub_images(tmp_path)
    served = CatalogClassifierModel.__new__(CatalogClassifierModel)  # the wrapper around the stub (no folder)
    served.classifier = stub_classifier()
    cells = [base64.b64encode((tmp_path / "photos" / f"{name}.png").read_bytes()).decode() for name in "ce"]
    answer = served.predict(pd.DataFrame({"image": [*cells, "not base64!"]}))
    assert answer["prediction_set"].tolist() == [["Computers", "Watches"], ["Computers", "Baby Care"], []]
    assert json.loads(answer.to_json(orient="records"))[0]["prediction_set"] == ["Computers", "Watches"]


def test_the_conformal_quantile_is_read_with_the_calibration() -> None:
    payload = {"model": "m", "temperature": 1.5, "target_precision": 0.98, "reachable": True, "threshold": 0.9,
               "test": {"coverage": 0.7}, "conformal": {"alpha": 0.05, "quantile": 0.8125}}
    calibration = Calibration.from_autolabel(payload, "autolabel.json")
    assert calibration.set_quantile == 0.8125 and calibration.set_alpha == 0.05
    with pytest.raises(Exception, match="conformal quantile must be in"):
        Calibration.from_autolabel({**payload, "conformal": {"alpha": 0.05, "quantile": 1.5}}, "autolabel.json")


def test_precision_and_coverage_against_a_label_column_are_the_hand_computed_ones(
        stub_run: SimpleNamespace, capsys: pytest.CaptureFixture) -> None:
    assert cli(["predict", "--input", str(stub_run.csv), "--output", str(stub_run.output), *stub_run.args]) == 0
    summary = json.loads(stub_run.output.with_name("predictions_summary.json").read_text())
    # Labelled rows: all but e (6). Auto-labelled among them: a (right) and d (Watches, truly Computers).
    assert summary["n_labelled"] == 6 and summary["n_auto_labelled_with_label"] == 2
    assert summary["precision"] == 0.5
    assert summary["coverage"] == round(2 / 6, 6)
    assert summary["n_images"] == 7 and summary["n_unreadable"] == 2 and summary["n_review"] == 5
    assert summary["temperature"] == STUB_TEMPERATURE and summary["threshold"] == STUB_THRESHOLD
    assert "precision on auto-labelled rows 50.0% (1/2 right, target 90.0%)" in capsys.readouterr().out


def test_a_csv_without_an_image_column_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv = tmp_path / "todo.csv"
    csv.write_text("path,label\na.png,Watches\n", encoding="utf-8")
    assert cli(["predict", "--input", str(csv), "--output", str(tmp_path / "out.csv"),
                "--params", str(REPO / "params.yaml")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"catalog-classifier predict: error: {csv} has no 'image' column (columns: path, label)")
    assert len(error.splitlines()) == 1
    assert not (tmp_path / "out.csv").exists()


def test_review_order_breaks_confidence_ties_by_the_top_two_margin() -> None:
    frame = pd.DataFrame({
        "image": ["p", "q", "r", "s", "t"], "label": ["x", "x", "", "y", "x"],
        "confidence": [0.5, 0.5, np.nan, 0.45, 0.95],
        "top3": ["x:0.5;y:0.4;z:0.1", "x:0.5;y:0.49;z:0.01", "", "y:0.45;x:0.45;z:0.1", "x:0.95;y:0.05"],
        "needs_review": [True, True, True, True, False], "error": ["", "", "missing file", "", ""]})
    assert list(review_queue(frame)["image"]) == ["s", "q", "p", "r"]
    assert margin("x:0.5;y:0.4;z:0.1") == pytest.approx(0.1)
    assert parse_top3("Home Decor & Festive Needs:0.600000;Watches:0.400000") == [
        ("Home Decor & Festive Needs", 0.6), ("Watches", 0.4)]


def test_an_unreachable_target_sends_every_row_to_review() -> None:
    payload = {"model": "m", "temperature": 1.5, "target_precision": 0.99, "reachable": False, "threshold": 0.97,
               "test": {"coverage": 0.0, "precision": None}}
    calibration = Calibration.from_autolabel(payload, "autolabel.json")
    assert calibration == Calibration(temperature=1.5, threshold=None, target_precision=0.99, test_coverage=0.0)
    assert calibration.needs_review(0.999999)
    assert not Calibration(threshold=0.8).needs_review(0.8) and Calibration(threshold=0.8).needs_review(0.79)


# --- the registered champion on real images (slow) -------------------------------------------------------------

NAME = "predict"
TEMPERATURE = 0.5  # sharpening: the hand computation from the 6-decimal probabilities stays accurate


@pytest.fixture(scope="module")
def champion(tiny_pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The tiny project's best model registered as champion of NAME with a hand-made calibration."""
    project = tiny_pipeline
    model = json.loads((project / "artifacts/comparison.json").read_text())["selected"]
    classes = yaml.safe_load((project / "params.yaml").read_text())["data"]["classes"]
    evaluated = eval_predictions(project, model).set_index("image")
    probabilities = calibrated(evaluated, classes, TEMPERATURE)
    threshold = midpoint_threshold(list(probabilities.max(1)))
    folder = tmp_path_factory.mktemp("predict")
    write_autolabel(folder / "eval", model, TEMPERATURE, threshold)
    report = promote(project, NAME, folder / "promotion.json", "--set", f"evaluate.out_dir={folder / 'eval'}")
    assert report["promote"] and report["version"] == "1" and report["source_model"] == model
    return SimpleNamespace(project=project, model=model, evaluated=evaluated, probabilities=probabilities,
                           threshold=threshold)


def predict(project: Path, paths: list[Path | str], output: Path, *extra: str) -> pd.DataFrame:
    assert cli(["predict", *map(str, paths), "--output", str(output), *extra, *cli_args(project, NAME)]) == 0
    return pd.read_csv(output, keep_default_na=False)


@pytest.mark.slow
def test_predict_with_the_champion_agrees_with_the_evaluate_stage(champion: SimpleNamespace, tmp_path: Path) -> None:
    images = split_images(champion.project)
    # A different image size in params must not matter: preprocessing comes from the model's stored config.
    frame = predict(champion.project, images, tmp_path / "out.csv", "--set", "train.image_size=48")
    assert list(frame.columns) == COLUMNS
    assert list(frame["image"]) == [str(path) for path in images]
    names = [path.name for path in images]
    expected = champion.evaluated.loc[names]
    probabilities = champion.probabilities.loc[names]
    assert list(frame["label"]) == list(expected["pred_label"])  # calibration never changes the label
    confidence = probabilities.max(1).to_numpy()
    assert frame["confidence"].astype(float).tolist() == pytest.approx(confidence.tolist(), abs=1e-5)
    assert list(frame["needs_review"]) == list(confidence < champion.threshold)
    assert 0 < frame["needs_review"].sum() < len(frame)  # the threshold splits them
    assert (frame["error"] == "").all()
    for row, (_, calibrated_row) in zip(frame.itertuples(), probabilities.iterrows(), strict=True):
        top3 = parse_top3(row.top3)
        assert top3[0][0] == row.label and len(top3) == 3
        assert [p for _, p in top3] == sorted((p for _, p in top3), reverse=True)
        for label, probability in top3:  # every top-3 probability is the calibrated one for that class
            assert probability == pytest.approx(calibrated_row[label], abs=1e-5)


@pytest.mark.slow
def test_a_labelled_csv_reports_the_precision_of_the_champions_auto_labels(champion: SimpleNamespace,
                                                                           tmp_path: Path) -> None:
    images = split_images(champion.project)
    csv = tmp_path / "batch.csv"
    truth = champion.evaluated.loc[[path.name for path in images], "true_label"]
    pd.DataFrame({"image": [str(path) for path in images], "label": list(truth)}).to_csv(csv, index=False)
    assert cli(["predict", "--input", str(csv), "--output", str(tmp_path / "p.csv"),
                *cli_args(champion.project, NAME)]) == 0
    summary = json.loads((tmp_path / "p_summary.json").read_text())
    confidence = champion.probabilities.loc[truth.index].max(1)
    auto = confidence >= champion.threshold
    right = champion.evaluated.loc[truth.index, "correct"].astype(bool)
    assert summary["coverage"] == round(auto.sum() / len(images), 6)
    assert summary["precision"] == round((auto & right).sum() / auto.sum(), 6)
    queue = pd.read_csv(tmp_path / "p_review.csv", keep_default_na=False)
    assert queue["confidence"].tolist() == sorted(queue["confidence"].tolist())
    assert len(queue) == int((~auto).sum())


@pytest.mark.slow
def test_a_classifier_without_calibration_still_loads_and_sends_everything_to_review(
        champion: SimpleNamespace, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A version registered before calibration: its folder has no autolabel.json.
    from catalog_classifier.config.layout import Project
    from catalog_classifier.modeling.prediction import pipeline_inference_settings

    project = Project.load(champion.project / "params.yaml")
    folder = write_classifier_dir(project.weights(champion.model), tmp_path / "classifier",
                                  pipeline_inference_settings(project.params))
    with caplog.at_level(logging.INFO):
        classifier = ImageClassifier.from_dir(folder)
    assert "has no autolabel.json" in caplog.text
    assert classifier.calibration == Calibration()
    images = split_images(champion.project)[:5]
    frame = classifier.predict_files(images)
    assert frame["needs_review"].all()
    expected = champion.evaluated.loc[[path.name for path in images], "confidence"]
    assert frame["confidence"].tolist() == pytest.approx(expected.tolist(), abs=1e-5)  # temperature 1


@pytest.mark.slow
def test_unreadable_images_get_a_reason_and_the_batch_goes_on(champion: SimpleNamespace, tmp_path: Path) -> None:
    good = split_images(champion.project)[:2]
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(good[0], folder / good[0].name)
    shutil.copy(good[1], folder / "nested" / good[1].name)
    (folder / "broken.jpg").write_text("this is not a JPEG", encoding="utf-8")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("ignored: not an image name", encoding="utf-8")
    missing = tmp_path / "gone.jpg"
    frame = predict(champion.project, [folder, missing], tmp_path / "out.csv").set_index("image")

    assert sorted(frame.index) == sorted([str(folder / "broken.jpg"), str(folder / "empty.png"),
                                          str(folder / good[0].name), str(folder / "nested" / good[1].name),
                                          str(missing)])
    assert frame.loc[str(folder / "broken.jpg"), "error"] == "not an image (format not recognised)"
    assert frame.loc[str(folder / "empty.png"), "error"] == "empty file (0 bytes)"
    assert frame.loc[str(missing), "error"] == "missing file"
    assert (frame.loc[frame["error"] != "", "label"] == "").all()
    assert frame.loc[frame["error"] != "", "needs_review"].all()
    evaluated = champion.evaluated["pred_label"]
    assert frame.loc[str(folder / good[0].name), "label"] == evaluated[good[0].name]
    assert frame.loc[str(folder / "nested" / good[1].name), "label"] == evaluated[good[1].name]


@pytest.mark.slow
def test_any_version_can_be_asked_for(champion: SimpleNamespace, tmp_path: Path) -> None:
    project = champion.project
    images = split_images(project)[:3]
    by_alias = predict(project, images, tmp_path / "champion.csv")
    by_version = predict(project, images, tmp_path / "v1.csv", "--version", "1")
    by_uri = predict(project, images, tmp_path / "uri.csv", "--model-uri", f"models:/{NAME}@challenger")
    pd.testing.assert_frame_equal(by_alias, by_version)
    pd.testing.assert_frame_equal(by_alias, by_uri)


@pytest.mark.slow
def test_an_unknown_version_is_one_clear_error(champion: SimpleNamespace, capsys: pytest.CaptureFixture) -> None:
    project = champion.project
    capsys.readouterr()
    code = cli(["predict", str(split_images(project)[0]), "--version", "99", *cli_args(project, NAME)])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("catalog-classifier predict: error: cannot load models:/predict/99")
    assert len(error.splitlines()) == 1
