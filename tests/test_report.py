"""The HTML report (catalog_classifier.reporting): values come from the stages' files, missing inputs are said or
named, images are embedded, and the pipeline's report stage attaches the page to every model's MLflow run."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import yaml
from conftest import TINY_MODELS, tiny_params
from PIL import Image

from catalog_classifier.config.layout import Project
from catalog_classifier.reporting.charts import EmbedSettings, embed_image, precision_coverage_figure
from catalog_classifier.reporting.collector import RegistryState, ReportInputMissing, VersionRecord, collect
from catalog_classifier.reporting.page import UNREACHABLE, calibration_cell, render_html
from catalog_classifier.stages.report import registry_state, write_report

CLASSES = tiny_params()["data"]["classes"]
FULL, BARE = TINY_MODELS  # FULL has every optional input, BARE only the required ones


class Page(HTMLParser):
    """Text of the elements carrying an id, a class or a data-model, and every <img>: enough to read a report."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.cells: dict[tuple[str, str], str] = {}  # (data-model of the row, class of the cell) -> text
        self.by_id: dict[str, str] = {}
        self._row: str | None = None
        self._open: list[tuple[str, str | None, str | None]] = []  # (tag, id, cell class)
        self._text: dict[int, list[str]] = {}
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "img":
            self.images.append({key: value or "" for key, value in attributes.items()})
            return
        if tag in ("br", "meta", "input"):
            return
        if tag == "tr":
            self._row = attributes.get("data-model")
        self._open.append((tag, attributes.get("id"), attributes.get("class") if tag == "td" else None))
        self._text[len(self._open)] = []

    def handle_endtag(self, tag: str) -> None:
        if not self._open or self._open[-1][0] != tag:
            return
        _, element_id, cell_class = self._open.pop()
        text = " ".join("".join(self._text.pop(len(self._open) + 1)).split())
        if self._open:
            self._text[len(self._open)].append(text + " ")
        if element_id:
            self.by_id[element_id] = text
        if cell_class and self._row:
            self.cells[(self._row, cell_class)] = text

    def handle_data(self, data: str) -> None:
        if self._open:
            self._text[len(self._open)].append(data)


def png_bytes(width: int, height: int, noise: bool = False) -> bytes:
    rng = np.random.default_rng(0)
    pixels = (rng.integers(0, 256, (height, width, 3)) if noise
              else np.full((height, width, 3), 200)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        path.write_text(payload if isinstance(payload, str) else json.dumps(payload), encoding="utf-8")
    return path


def eval_metrics(f1: float, latency: dict[str, float] | None, val_f1: float = 0.25) -> dict[str, Any]:
    per_class = {name: {"f1": round(0.1 + 0.1 * i, 3), "precision": 0.5, "recall": 0.5, "support": 2}
                 for i, name in enumerate(CLASSES)}
    metrics = {"model": "m", "inference_images_per_s": 123.456,
               "test": {"f1_macro": f1, "accuracy": 0.5, "per_class": per_class},
               "val": {"f1_macro": val_f1, "accuracy": 0.3, "per_class": per_class}}
    if latency:
        metrics["latency_ms"] = latency
    return metrics


def autolabel_summary(reachable: bool = True) -> dict[str, Any]:
    """An autolabel.json as the evaluate stage writes it (7 test images; hand-picked figures)."""
    per_class = {name: 1.0 for name in CLASSES}
    per_class.update({CLASSES[0]: None, CLASSES[1]: 0.0, CLASSES[2]: 0.0})  # absent class; a tie for the weakest
    test = {"coverage": 0.571429, "precision": 1.0, "precision_interval": [0.510109, 1.0],
            "coverage_interval": [0.250465, 0.841837], "n_auto": 4, "n": 7, "per_class_coverage": per_class}
    if not reachable:
        test.update(coverage=0.0, precision=None, precision_interval=None, coverage_interval=[0.0, 0.354317],
                    n_auto=0, per_class_coverage=dict.fromkeys(CLASSES, 0.0))
    return {"model": FULL, "temperature": 1.23456, "target_precision": 0.98, "reachable": reachable,
            "threshold": 0.971234 if reachable else None, "interval_confidence": 0.95,
            "val": {"coverage": 0.6 if reachable else 0.0, "precision": 1.0 if reachable else None,
                    "n_auto": 4 if reachable else 0, "n": 7},
            "test": test, "ece": {"val_before": 0.2, "val_after": 0.03, "test_before": 0.1234,
                                  "test_after": 0.0456, "bins": 15}}


PRECISION_COVERAGE = ("split,threshold,coverage,precision\nval,0.99,0.2,1.0\nval,0.9,0.6,0.95\nval,0.5,1.0,0.8\n"
                      "test,0.99,0.285714,1.0\ntest,0.97,0.571429,1.0\ntest,0.5,1.0,0.714286\n")


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A project folder with hand-written stage outputs: FULL has everything, BARE lacks every optional input."""
    root = tmp_path / "project"
    write(root / "params.yaml", yaml.safe_dump(tiny_params(), sort_keys=False))
    write(root / "artifacts/splits/quality.json", {
        "rows": 44, "usable_images": 42, "missing_files": ["gone.jpg"], "unreadable_files": ["bad.jpg"],
        "duplicate_group_count": 0, "images_in_duplicate_groups": 0, "excluded": 2,
        "class_counts": dict.fromkeys(CLASSES, 6), "split_counts": {"train": 28, "val": 7, "test": 7},
        "split_class_counts": {"train": dict.fromkeys(CLASSES, 4), "val": dict.fromkeys(CLASSES, 1),
                               "test": dict.fromkeys(CLASSES, 1)}})
    # FULL leads on test, BARE on validation: the page must select BARE (selection never looks at test).
    for model, f1, val_f1, latency in ((FULL, 0.6123456, 0.25, {"p50": 12.345, "p95": 20.06}),
                                       (BARE, 0.4876543, 0.375, None)):
        write(root / f"artifacts/models/{model}/train_metrics.json", {
            "fit_time_s": 75.5, "fit_cpu_time_s": 140.0, "epochs_run": 4, "best_epoch": 2, "n_params": 4_900_000,
            "weights_used": "random"})
        write(root / f"artifacts/eval/{model}/metrics.json", eval_metrics(f1, latency, val_f1))
    write(root / f"artifacts/models/{FULL}/run.json", {"run_id": "abc", "experiment_id": "1"})
    write(root / f"artifacts/history/{FULL}.csv",
          "epoch,train_loss,train_f1_macro,val_loss,val_f1_macro,elapsed_s\n1,2.0,0.2,2.1,0.15,1\n2,1.5,0.4,1.8,0.3,2\n")
    write(root / f"artifacts/eval/{FULL}/confusion.png", png_bytes(300, 260))
    write(root / f"artifacts/eval/{FULL}/autolabel.json", autolabel_summary())
    write(root / f"artifacts/eval/{FULL}/precision_coverage.csv", PRECISION_COVERAGE)
    write(root / f"artifacts/eval/{FULL}/reliability.png", png_bytes(600, 250))
    explain = root / f"artifacts/explain/{FULL}"
    write(explain / "metrics.json", {
        "n_images": 4, "gradcam": {"deletion_auc": 0.2, "deletion_auc_se": 0.01, "insertion_auc": 0.5,
                                   "insertion_auc_se": 0.02},
        "random": {"deletion_auc": 0.3, "deletion_auc_se": 0.01, "insertion_auc": 0.4, "insertion_auc_se": 0.02},
        "gradcam_beats_random": {"deletion": True, "insertion": True}})
    write(explain / "summary.json", {"named_missing": [], "local": [
        {"figure": "figures/local/01_named_x.png", "image": "x.jpg", "kind": "named", "split": "test",
         "true": CLASSES[0], "predicted": CLASSES[1], "probability": 0.8125}]})
    write(explain / "figures/local/01_named_x.png", png_bytes(1200, 440, noise=True))
    for name in ("gradcam_class_means.png", "shap_summary.png", "faithfulness.png"):
        write(explain / "figures" / name, png_bytes(400, 300))
    return Project.load(root / "params.yaml")


def registry_with_champion() -> RegistryState:
    versions = [
        VersionRecord("3", "2026-01-03 10:00 UTC", "run3" * 4, {
            "decision": "rejected", "reason": "does not beat champion v2 by 0.01", "source_model": BARE,
            "challenger_f1_macro": "0.48", "compared_with": "2", "temperature": "1.0",
            "autolabel_threshold": "none", "autolabel_target_precision": "0.98", "autolabel_coverage": "0.0"},
            ("challenger",)),
        VersionRecord("2", "2026-01-02 10:00 UTC", "run2" * 4, {
            "decision": "promoted", "reason": "beats champion v1 by 0.05", "source_model": FULL,
            "challenger_f1_macro": "0.61", "decided_at": "2026-01-02T10:00:00+00:00", "previous_champion": "1",
            "temperature": "1.23456", "autolabel_threshold": "0.971234", "autolabel_target_precision": "0.98",
            "autolabel_coverage": "0.571429"},
            ("champion",)),
        VersionRecord("1", "2026-01-01 10:00 UTC", "run1" * 4, {"decision": "promoted", "reason": "first model"}),
    ]
    return RegistryState("catalog-classifier", registered=True, aliases={"champion": "2", "challenger": "3"},
                         champion_history=["1", "2"], last_event="2026-01-02 promote: champion 1 -> 2",
                         versions=versions)


def render(project: Project, registry: RegistryState | None = None) -> tuple[str, Page]:
    text = render_html(collect(project, registry or registry_with_champion(), "now"), EmbedSettings())
    return text, Page(text)


def test_comparison_cells_are_the_metrics_files_values(project: Project) -> None:
    text, page = render(project)
    assert page.cells[(FULL, "f1-test")] == "0.6123" and page.cells[(BARE, "f1-test")] == "0.4877"
    assert page.cells[(FULL, "f1-val")] == "0.2500"
    assert page.cells[(FULL, "latency")] == "12.3 / 20.1"  # p50 / p95 ms from metrics.json latency_ms
    assert page.cells[(BARE, "latency")] == "—"  # not measured: a dash, never 0
    assert page.cells[(FULL, "fit-time")] == "1 min 16 s" and page.cells[(FULL, "epochs")] == "4 (2)"
    assert page.cells[(FULL, "params")] == "4.90" and page.cells[(FULL, "throughput")] == "123.5"
    # No comparison.json: the page applies the selection rule itself, on validation macro-F1, not test.
    assert page.cells[(BARE, "model")] == f"{BARE} selected" and page.cells[(FULL, "model")] == FULL
    assert "selected on validation macro-F1 (0.3750 against 0.2500" in page.by_id["overview"]
    assert "it scores 0.4877 against 0.6123 (-0.1247)" in page.by_id["overview"]
    assert page.by_id["split-counts"].endswith("all classes 28 7 7 42")


def test_missing_optional_inputs_are_said_and_the_page_still_renders(project: Project) -> None:
    text, page = render(project)
    root = project.root
    assert f"Explanations of {BARE} are missing ({root}/artifacts/explain/{BARE}/metrics.json" in page.by_id[
        "explanations"]
    assert f"{BARE}: {root}/artifacts/eval/{BARE}/confusion.png is missing" in page.by_id["confusion"]
    assert f"No learning curve for {BARE}: {root}/artifacts/history/{BARE}.csv is missing" in page.by_id["curves"]
    assert "No promotion decision recorded for this run" in page.by_id["registry"]
    # FULL's figures are there: its confusion matrix and its one local explanation.
    assert [image.get("data-model") for image in page.images if image.get("class") == "confusion"] == [FULL]
    local = [image for image in page.images if image.get("class") == "local"]
    assert len(local) == 1 and "true Baby Care → predicted Beauty and Personal Care (p = 0.81)" in page.by_id[
        "explanations"]


def test_the_page_is_self_contained(project: Project) -> None:
    text, page = render(project)
    assert page.images and all(image["src"].startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
                               for image in page.images)
    lowered = text.lower()
    assert "<script" not in lowered and "<link" not in lowered and "url(" not in lowered
    assert "http://" not in lowered and "https://" not in lowered
    for image in page.images:  # every data URI decodes to the image size the tag announces
        payload = base64.b64decode(image["src"].split(",", 1)[1])
        with Image.open(io.BytesIO(payload)) as decoded:
            assert decoded.size == (int(image["width"]), int(image["height"]))


def test_registry_section_shows_champion_aliases_and_every_decision(project: Project) -> None:
    write(project.promotion_report(), {
        "registered_model": "catalog-classifier", "version": "3", "decision": "rejected", "promote": False,
        "reason": "does not beat champion v2 by 0.01", "champion_before": "2", "champion_after": "2",
        "source_model": BARE, "figures": {"n_images": 7, "n_excluded": 0, "challenger_f1_macro": 0.48,
                                          "champion_f1_macro": 0.61, "delta": -0.13, "min_delta": 0.0,
                                          "delta_interval": [-0.41, 0.12], "challenger_f1_macro_interval": [0.2, 0.7],
                                          "min_coverage": 0.5, "challenger_coverage": 0.0,
                                          "challenger_autolabel_threshold": None,
                                          "challenger_autolabel_precision": None,
                                          "challenger_autolabel_target_precision": 0.98}})
    _, page = render(project)
    assert page.by_id["champion"] == (
        f"Champion: catalog-classifier v2 ({FULL}, macro-F1 0.61 when promoted 2026-01-02 10:00 UTC).")
    assert page.by_id["champion-card"] == f"registry champion v2 {FULL}"
    section = page.by_id["registry"]
    assert "challenger → v3, champion → v2" in section and "(oldest first): v1 → v2" in section
    assert page.by_id["decision"].startswith(
        f"rejected catalog-classifier v3 ({BARE}) — does not beat champion v2 by 0.01")
    assert "champion before: v2, after: v2" in page.by_id["decision"]
    assert "challenger macro-F1 0.4800 [0.200, 0.700] on 7 images" in page.by_id["decision"]
    assert ("champion macro-F1 0.6100 (difference -0.1300, paired interval [-0.4100, +0.1200]; its lower end must "
            "exceed 0)") in page.by_id["decision"]
    assert ("auto-label coverage 0.000 at no threshold (the precision bound never reached the target) "
            "(precision —, target 0.98; minimum 0.5)") in page.by_id["decision"]
    assert page.by_id["champion-calibration"] == (
        "The champion serves with temperature 1.235, auto-labels at calibrated confidence ≥ 0.9712 (target "
        "precision 0.98), 0.571 of the gate's test images auto-labelled.")
    versions = page.by_id["versions"]
    assert versions.index("v3 challenger") < versions.index("v2 champion") < versions.index("v1 ")
    assert "beats champion v1 by 0.05 (replaced v1)" in versions
    assert "T 1.000, no threshold, coverage 0.000" in versions and "T 1.235, ≥ 0.9712, coverage 0.571" in versions
    assert calibration_cell({"decision": "promoted"}) == "—"  # a version registered before calibration


def test_unreachable_registry_is_said_on_the_page(project: Project) -> None:
    state = registry_state(project)  # no mlflow.db in this project: nothing tracked, nothing created
    assert state.error and "no MLflow store" in state.error
    assert not (project.root / "mlruns" / "mlflow.db").exists()
    _, page = render(project, state)
    assert page.by_id["registry-error"].startswith(f"Registry unreachable: {state.error}")
    assert page.by_id["champion-card"] == "registry champion unknown registry unreachable"
    # Which registry was read: a clone's local store, told apart from the team's server (issue #30).
    assert state.location == f"sqlite:///{project.root / 'mlruns' / 'mlflow.db'}"
    location = page.by_id["registry-location"]
    assert location.startswith(f"Registry read: {state.location} . A champion lives in one registry")
    assert "serves and promotes into the team's MLflow server it names" in location
    assert location.endswith("is a separate, local registry.")


def test_missing_required_input_names_the_file(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    from catalog_classifier.cli import main

    metrics = project.eval_metrics(BARE)
    metrics.unlink()
    with pytest.raises(ReportInputMissing, match=f"{metrics} \\(test metrics of {BARE}\\)"):
        collect(project, RegistryState("x"))
    assert main(["report", "--params", str(project.root / "params.yaml"), "--no-log"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"catalog-classifier report: error: the report needs {metrics} (test metrics of {BARE}); "
        f"run `dvc repro evaluate@{BARE}` first")
    assert not project.report_page().exists()


def test_write_report_writes_one_page_without_temp_files(project: Project) -> None:
    page = write_report(project, registry_with_champion())
    assert page == project.root / "artifacts/report/index.html"
    assert [path.name for path in page.parent.iterdir()] == ["index.html"]
    assert Page(page.read_text(encoding="utf-8")).cells[(FULL, "f1-test")] == "0.6123"


def test_images_are_downscaled_and_photos_become_jpeg() -> None:
    settings = EmbedSettings(max_width=600, png_max_kb=50, jpeg_quality=80)
    chart = embed_image(png_bytes(1200, 400), settings)
    assert (chart.width, chart.height) == (600, 200) and chart.uri.startswith("data:image/png;base64,")
    photo = embed_image(png_bytes(1200, 440, noise=True), settings)
    assert (photo.width, photo.height) == (600, 220) and photo.uri.startswith("data:image/jpeg;base64,")
    assert photo.n_bytes == len(base64.b64decode(photo.uri.split(",", 1)[1]))
    small = embed_image(png_bytes(100, 50), settings)
    assert (small.width, small.height) == (100, 50)  # never upscaled


@pytest.mark.slow
def test_pipeline_report_stage_wrote_the_page_and_attached_it_to_every_run(tiny_pipeline: Path,
                                                                          tmp_path: Path) -> None:
    page = tiny_pipeline / "artifacts/report/index.html"
    parsed = Page(page.read_text(encoding="utf-8"))
    store = f"sqlite:///{tiny_pipeline}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    for model in TINY_MODELS:
        evaluated = json.loads((tiny_pipeline / f"artifacts/eval/{model}/metrics.json").read_text())
        interval = evaluated["test"]["f1_macro_interval"]
        assert parsed.cells[(model, "f1-test")] == (f"{evaluated['test']['f1_macro']:.4f} "
                                                    f"[{interval['low']:.3f}, {interval['high']:.3f}]")
        run_id = json.loads((tiny_pipeline / f"artifacts/models/{model}/run.json").read_text())["run_id"]
        assert [item.path for item in client.list_artifacts(run_id, "report")] == ["report/index.html"]
        assert client.get_run(run_id).info.status == "FINISHED"
        attached = client.download_artifacts(run_id, "report/index.html", str(tmp_path / model))
        assert Path(attached).read_bytes() == page.read_bytes()
    lock = yaml.safe_load((tiny_pipeline / "dvc.lock").read_text())["stages"]["report"]
    assert [out["path"] for out in lock["outs"]] == ["artifacts/report/index.html"]


def test_the_seed_spread_stands_next_to_the_comparison(project: Project) -> None:
    write(project.spread(FULL), {"n_seeds": 5, "seeds": [42, 43, 44, 45, 46],
                                 "val": {"mean": 0.88, "std": 0.006, "min": 0.87, "max": 0.89},
                                 "test": {"mean": 0.9, "std": 0.01, "min": 0.89, "max": 0.91}})
    _, page = render(project)
    spread = page.by_id["spread"]
    assert f"{FULL}: test 0.9000 ± 0.0100 [0.8900, 0.9100], val 0.8800 ± 0.0060 over 5 seeds" in spread
    assert f"{BARE}: not measured" in spread


def test_the_study_example_is_shown_for_the_champion(project: Project) -> None:
    _, page = render(project)  # no promotion: the selected model (BARE, by validation) has no explanation
    assert f"No explanation of a named example image for {BARE}." in page.by_id["explanations"]
    write(project.promotion_report(), {"version": "2", "champion_after": "2", "source_model": FULL,
                                       "decision": "promoted", "registered_model": "catalog-classifier"})
    _, page = render(project)
    example = page.by_id["study-example"]
    assert f"The study's example image, explained by the champion ({FULL})" in example
    assert any(image["alt"] == "x.jpg: image, SHAP, Grad-CAM" and image.get("data-model") == FULL
               for image in page.images)


def test_autolabel_section_shows_the_evaluate_figures(project: Project) -> None:
    write(project.comparison(), {"selected": FULL})  # the selected model's curve and reliability diagram are shown
    text, page = render(project)
    assert page.cells[(FULL, "al-temperature")] == "1.235"
    assert page.cells[(FULL, "al-ece")] == "0.123 → 0.046"
    assert page.cells[(FULL, "al-target")] == "0.98" and page.cells[(FULL, "al-threshold")] == "0.9712"
    assert page.cells[(FULL, "al-coverage")] == "0.571 (4/7) [0.250, 0.842]"
    assert page.cells[(FULL, "al-precision")] == "1.000 [0.510, 1.000]"
    assert page.cells[(FULL, "al-weakest")] == f"{CLASSES[1]} 0.000"  # None (no test image) is no candidate
    section = page.by_id["autolabel"]
    assert "Intervals: Wilson, 95%; ECE over 15 bins." in section
    # BARE's evaluate predates calibration: said, with the file and the stage to run; no row for it.
    assert (f"Auto-labelling of {BARE} is not recorded: {project.autolabel(BARE)} is missing (an evaluate run "
            f"from before calibration): run dvc repro evaluate@{BARE}") in section
    assert (BARE, "al-temperature") not in page.cells
    charts = {image.get("id"): image for image in page.images if image.get("id") in (
        "precision-coverage-chart", "reliability-chart")}
    assert set(charts) == {"precision-coverage-chart", "reliability-chart"}
    assert (charts["reliability-chart"]["width"], charts["reliability-chart"]["height"]) == ("600", "250")
    assert f"<code>artifacts/eval/{FULL}/autolabel.json</code>" in text  # listed among the files read


def test_prediction_sets_are_shown_with_their_test_coverage_overall_and_per_class(project: Project) -> None:
    per_class = {name: {"n": 0, "coverage": None, "mean_set_size": None} for name in CLASSES}
    per_class.update({CLASSES[1]: {"n": 4, "coverage": 0.75, "mean_set_size": 1.5},
                      CLASSES[2]: {"n": 3, "coverage": 1.0, "mean_set_size": 2.0}})
    conformal = {"score": "lac", "alpha": 0.05, "quantile": 0.812345, "calibration": "val", "n_calibration": 175,
                 "test": {"n": 7, "coverage": 0.857143, "coverage_interval": [0.486903, 0.974315],
                          "mean_set_size": 1.714286, "size_counts": {"1": 3, "2": 3, "3": 1}, "per_class": per_class}}
    write(project.autolabel(FULL), {**autolabel_summary(), "conformal": conformal})
    write(project.comparison(), {"selected": FULL})
    _, page = render(project)
    assert page.cells[(FULL, "ps-alpha")] == "0.05" and page.cells[(FULL, "ps-quantile")] == "0.8123 (val)"
    assert page.cells[(FULL, "ps-coverage")] == "0.857 [0.487, 0.974]"
    assert page.cells[(FULL, "ps-size")] == "1.71" and page.cells[(FULL, "ps-sizes")] == "1: 3, 2: 3, 3: 1"
    assert page.cells[(FULL, "ps-lowest")] == f"{CLASSES[1]} 0.750 (1.50)"  # classes without test images skipped
    per_class_text = page.by_id["prediction-sets-per-class"]
    assert f"{CLASSES[1]} 0.750 (1.50, 4); {CLASSES[2]} 1.000 (2.00, 3)" in per_class_text
    assert (BARE, "ps-alpha") not in page.cells  # no autolabel.json, no row


def test_autolabel_section_of_a_selected_model_without_files(project: Project) -> None:
    _, page = render(project)  # BARE is selected (validation) and has no auto-labelling files
    section = page.by_id["autolabel"]
    assert f"{BARE} (selected model)" in section
    assert (f"No precision–coverage curve for {BARE}: {project.eval_dir(BARE)}/precision_coverage.csv is missing."
            in section)
    assert f"No reliability diagram for {BARE}: {project.eval_dir(BARE)}/reliability.png is missing." in section
    assert not [image for image in page.images if image.get("id") in ("precision-coverage-chart", "reliability-chart")]


def test_an_unreachable_target_says_nothing_is_auto_labelled(project: Project) -> None:
    write(project.autolabel(FULL), autolabel_summary(reachable=False))
    _, page = render(project)
    assert page.cells[(FULL, "al-threshold")] == UNREACHABLE == (
        "no threshold: the precision bound never reaches the target; nothing auto-labelled")
    assert page.cells[(FULL, "al-coverage")] == "0.000 (0/7) [0.000, 0.354]"
    assert page.cells[(FULL, "al-precision")] == "—"


def test_precision_coverage_chart_draws_the_csv(project: Project) -> None:
    model = collect(project, RegistryState("x")).models[0]
    axes = precision_coverage_figure(model).axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert list(lines) == ["val", "test", "target precision 0.98", "threshold 0.9712 on test"]
    assert list(lines["val"].get_xdata()) == [0.2, 0.6, 1.0]
    assert list(lines["test"].get_ydata()) == [1.0, 1.0, 0.714286]
    assert list(lines["target precision 0.98"].get_ydata()) == [0.98, 0.98]
    assert (list(lines["threshold 0.9712 on test"].get_xdata()), list(lines["threshold 0.9712 on test"].get_ydata())
            ) == ([0.571429], [1.0])
    write(project.autolabel(FULL), autolabel_summary(reachable=False))  # no threshold: no point marked
    model = collect(project, RegistryState("x")).models[0]
    assert [line.get_label() for line in precision_coverage_figure(model).axes[0].get_lines()] == [
        "val", "test", "target precision 0.98"]


def test_a_run_missing_from_the_store_is_skipped_and_said(project: Project, caplog: pytest.LogCaptureFixture) -> None:
    """run.json from another store (a clone's earlier mlruns/) must not crash the report: the page is attached to
    the runs that exist and the missing one is named."""
    from catalog_classifier.registry.tracking import setup_mlflow
    from catalog_classifier.stages.report import log_report

    setup_mlflow(project.params.mlflow, project.root)
    with mlflow.start_run() as run:
        real = run.info.run_id
    write(project.run_record(BARE), {"run_id": real, "experiment_id": "1"})  # FULL's run.json says "abc"
    page = write_report(project, registry_with_champion())
    with caplog.at_level("WARNING"):
        assert log_report(project, page) == [real]
    assert f"{FULL}'s run abc (run.json) is not in this MLflow store" in caplog.text
    store = f"sqlite:///{project.root}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=store)
    assert [item.path for item in client.list_artifacts(real, "report")] == ["report/index.html"]
