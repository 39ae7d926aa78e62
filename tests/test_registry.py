"""Promotion: the gate's rule on constructed cases, then alias moves, rollback, dry runs and racing promotes
in a real sqlite registry holding really trained tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TINY_MODELS
from registry_helpers import (
    calibrated,
    cli,
    cli_args,
    client,
    eval_f1,
    eval_predictions,
    isolated_mlflow_env,
    midpoint_threshold,
    promote,
    repro_promotion,
    write_autolabel,
)
from sklearn.metrics import f1_score

from catalog_classifier.config.params import UncertaintyParams
from catalog_classifier.registry.descriptions import version_description
from catalog_classifier.registry.gate import AutolabelPromise, autolabel_figures, score, shared_test_images
from catalog_classifier.registry.gate import decide as gate_decide
from catalog_classifier.registry.selection import weights_label

CLASSES = ["a", "b", "c"]
TRUTH = ["a", "a", "b", "b", "c", "c"]
GOOD = ["a", "a", "b", "b", "c", "a"]  # F1 a 4/5, b 1, c 2/3: macro 37/45 = 0.822222
FAIR = ["a", "b", "b", "b", "c", "a"]  # F1 a 1/2, b 4/5, c 2/3: macro 59/90 = 0.655556


# --- the rule, on constructed cases -------------------------------------------------------------------------


def test_scores_are_the_hand_computed_f1() -> None:
    good = score(TRUTH, GOOD, CLASSES)
    assert good.per_class == pytest.approx({"a": 0.8, "b": 1.0, "c": 2 / 3})
    assert good.f1_macro == pytest.approx(37 / 45)
    assert score(TRUTH, FAIR, CLASSES).f1_macro == pytest.approx(59 / 90)


UNCERTAINTY = UncertaintyParams(confidence=0.95, bootstrap_resamples=2000, seed=0)


def decide(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - the gate with the pipeline's statistics
    return gate_decide(*args, uncertainty=UNCERTAINTY, **kwargs)


def test_better_challenger_is_promoted_when_the_paired_interval_clears_zero() -> None:
    # GOOD beats FAIR on one image in six; over 30 copies of the six the paired bootstrap cannot explain it away.
    truth, good, fair = TRUTH * 30, GOOD * 30, FAIR * 30
    decision = decide(truth, good, fair, CLASSES, min_delta=0.0, class_f1_floor=0.5)
    assert decision.promote
    assert decision.figures["challenger_f1_macro"] == pytest.approx(0.822222)
    assert decision.figures["champion_f1_macro"] == pytest.approx(0.655556)
    assert decision.figures["delta"] == pytest.approx(1 / 6, abs=1e-6)
    low, high = decision.figures["delta_interval"]
    assert 0 < low < 1 / 6 < high
    assert decision.figures["n_images"] == 180
    assert "lower end above 0" in decision.reason


def test_the_same_win_on_six_images_is_noise() -> None:
    # The point difference is the same +1/6, but on six images one resampled image decides it: kept challenger.
    decision = decide(TRUTH, GOOD, FAIR, CLASSES, min_delta=0.0, class_f1_floor=0.5)
    assert not decision.promote
    assert decision.figures["delta"] == pytest.approx(1 / 6, abs=1e-6)
    assert decision.figures["delta_interval"][0] <= 0
    assert "its lower end is not above 0" in decision.reason


def test_worse_challenger_is_rejected() -> None:
    decision = decide(TRUTH * 30, FAIR * 30, GOOD * 30, CLASSES, min_delta=0.0, class_f1_floor=0.0)
    assert not decision.promote
    assert decision.figures["delta"] == pytest.approx(-1 / 6, abs=1e-6)
    assert decision.figures["delta_interval"][1] < 0


def test_equal_challenger_is_rejected_even_with_zero_min_delta() -> None:
    decision = decide(TRUTH * 30, GOOD * 30, GOOD * 30, CLASSES, min_delta=0.0, class_f1_floor=0.0)
    assert not decision.promote
    assert decision.figures["delta"] == 0 and decision.figures["delta_interval"] == [0.0, 0.0]


def test_min_delta_is_compared_with_the_lower_end() -> None:
    truth, good, fair = TRUTH * 30, GOOD * 30, FAIR * 30
    low = decide(truth, good, fair, CLASSES, min_delta=0.0, class_f1_floor=0.0).figures["delta_interval"][0]
    assert decide(truth, good, fair, CLASSES, min_delta=low - 0.01, class_f1_floor=0.0).promote
    # The point difference (1/6) clears 0.15, the interval's lower end does not.
    assert not decide(truth, good, fair, CLASSES, min_delta=0.15, class_f1_floor=0.0).promote


def _noisy_copy(predictions: list[str], truth: list[str], fix: int, break_: int) -> list[str]:
    """``predictions`` with ``fix`` wrong ones made right and ``break_`` right ones made wrong (another seed)."""
    out = list(predictions)
    wrong = [i for i, (p, t) in enumerate(zip(out, truth, strict=True)) if p != t]
    right = [i for i, (p, t) in enumerate(zip(out, truth, strict=True)) if p == t]
    for i in wrong[:fix]:
        out[i] = truth[i]
    for i in right[-break_:] if break_ else []:
        out[i] = CLASSES[(CLASSES.index(truth[i]) + 1) % len(CLASSES)]
    return out


def test_a_retrain_with_another_seed_is_not_promoted_but_a_clearly_better_model_is() -> None:
    # 174 gate images; the champion gets 150 right. A retrain of its recipe with another seed fixes 5 of its errors
    # and makes 2 new ones: +3 images, about +0.017 macro-F1, which the old point rule (+0.01) promoted.
    truth = (CLASSES * 58)[:174]
    champion = _noisy_copy(truth, truth, 0, 24)
    retrain = _noisy_copy(champion, truth, 5, 2)
    noise = decide(truth, retrain, champion, CLASSES, min_delta=0.0, class_f1_floor=0.5)
    assert noise.figures["delta"] > 0.01
    assert not noise.promote and noise.figures["delta_interval"][0] <= 0
    # A clearly better model over a weak champion (gets 100 of 174 right): promoted.
    weak = _noisy_copy(truth, truth, 0, 74)
    clear = decide(truth, champion, weak, CLASSES, min_delta=0.0, class_f1_floor=0.5)
    assert clear.promote and clear.figures["delta_interval"][0] > 0.2


def test_one_class_under_the_floor_blocks_a_better_challenger() -> None:
    challenger = ["a", "a", "b", "b", "a", "b"]  # never says c: F1 a 0.8, b 0.8, c 0 -> macro 0.533
    champion = ["a"] * 6  # F1 a 0.5, b 0, c 0 -> macro 0.167
    decision = decide(TRUTH * 30, challenger * 30, champion * 30, CLASSES, min_delta=0.0, class_f1_floor=0.3)
    assert not decision.promote
    assert decision.figures["delta"] == pytest.approx(1.6 / 3 - 0.5 / 3, abs=1e-6)
    assert decision.figures["weakest_class"] == "c" and decision.figures["weakest_class_f1"] == 0
    assert decision.reason == "class F1 below the floor 0.3: c 0.000"


def test_first_model_needs_only_the_floor() -> None:
    passed = decide(TRUTH, GOOD, None, CLASSES, min_delta=0.5, class_f1_floor=0.6)
    assert passed.promote and "first model" in passed.reason
    assert "champion_f1_macro" not in passed.figures
    failed = decide(TRUTH, GOOD, None, CLASSES, min_delta=0.0, class_f1_floor=0.7)
    assert not failed.promote
    assert failed.reason == "first model: class F1 below the floor 0.7: c 0.667"


def test_a_challenger_auto_labelling_too_little_is_rejected_naming_both_figures() -> None:
    confidences = [0.99, 0.95, 0.7, 0.91, 0.6, 0.3]  # threshold 0.9: images 1, 2, 4 are auto-labelled
    auto = autolabel_figures(TRUTH, GOOD, confidences, 0.9)
    assert auto == {"n_auto_labelled": 3, "coverage": 0.5, "precision": 1.0}
    # a 0.99 a, a 0.95 a, b 0.91 b: all three right. GOOD passes the floor 0.5 (first model: no champion).
    rejected = decide(TRUTH, GOOD, None, CLASSES, min_delta=0.0, class_f1_floor=0.5, coverage=auto["coverage"],
                      min_coverage=0.6)
    assert not rejected.promote
    assert rejected.reason == "first model: auto-label coverage 0.500 below the minimum 0.6"
    assert rejected.figures["challenger_coverage"] == 0.5 and rejected.figures["min_coverage"] == 0.6
    at_minimum = decide(TRUTH, GOOD, None, CLASSES, min_delta=0.0, class_f1_floor=0.5, coverage=0.5,
                        min_coverage=0.5)
    assert at_minimum.promote and "auto-label coverage 0.500 >= 0.5" in at_minimum.reason
    disabled = decide(TRUTH, GOOD, None, CLASSES, min_delta=0.0, class_f1_floor=0.5, coverage=0.0,
                      min_coverage=0.0)
    assert disabled.promote
    # No threshold (target precision unreachable): nothing is auto-labelled; the first model is held to it too.
    assert autolabel_figures(TRUTH, GOOD, confidences, None) == {"n_auto_labelled": 0, "coverage": 0.0,
                                                                 "precision": None}
    first = decide(TRUTH, GOOD, None, CLASSES, min_delta=0.0, class_f1_floor=0.7, coverage=0.0, min_coverage=0.5)
    assert first.reason == ("first model: class F1 below the floor 0.7: c 0.667; "
                            "auto-label coverage 0.000 below the minimum 0.5")


def test_a_challenger_whose_precision_bound_misses_the_target_at_the_minimum_coverage_is_rejected() -> None:
    kept = {"min_delta": 0.0, "class_f1_floor": 0.5, "coverage": 0.6, "min_coverage": 0.5}
    promise = AutolabelPromise(threshold=0.9, coverage=0.62, precision_lower_bound=0.981, target_precision=0.98,
                               source="out-of-fold (5-fold on train+val, 872 images)")
    passed = decide(TRUTH, GOOD, None, CLASSES, promise=promise, **kept)
    assert passed.promote and passed.figures["calibration_precision_bound"] == 0.981
    unreachable = AutolabelPromise(threshold=None, coverage=0.0, precision_lower_bound=None, target_precision=0.98,
                                   source="val (175 images)")
    refused = decide(TRUTH, GOOD, None, CLASSES, promise=unreachable, **kept)
    assert not refused.promote
    assert refused.reason == ("first model: auto-label precision: no threshold's lower bound reaches the target "
                              "0.98 on val (175 images)")
    narrow = AutolabelPromise(threshold=0.99, coverage=0.31, precision_lower_bound=0.982, target_precision=0.98)
    assert decide(TRUTH, GOOD, None, CLASSES, promise=narrow, **kept).reason == (
        "first model: auto-label precision: the lower bound reaches 0.98 only at coverage 0.310, below the minimum 0.5")


def test_a_version_description_says_model_figures_decision_and_report() -> None:
    tags = {"source_model": "m1", "weights": "ImageNet (package w==0.1.0)", "source_run_id": "abcdef0123456789",
            "val_f1_macro": "0.880952", "test_f1_macro": "0.919048", "challenger_f1_macro": "0.9",
            "n_images": "170", "weakest_class": "Baby Care", "weakest_class_f1": "0.851064", "class_f1_floor": "0.5",
            "challenger_coverage": "0.737143", "autolabel_threshold": "0.892", "challenger_autolabel_precision":
            "0.96124", "autolabel_target_precision": "0.98", "min_coverage": "0.5", "compared_with": "2",
            "champion_f1_macro": "0.85", "delta": "0.05", "min_delta": "0", "decision": "promoted",
            "delta_interval": "[0.012, 0.091]", "challenger_f1_macro_interval": "[0.85, 0.94]",
            "val_f1_macro_interval": "[0.83, 0.92]", "test_f1_macro_interval": "[0.87, 0.95]",
            "interval_confidence": "0.95", "calibration_precision_bound": "0.9812", "calibration_coverage": "0.61",
            "calibration_source": "out-of-fold (5-fold on train+val, 872 images)",
            "reason": "macro-F1 0.9000 vs champion 0.8500: beats it", "git_commit": "0123456789abcdef-dirty",
            "git_dirty_files": "params.yaml", "data_version": "799d9136aaaa", "decided_at": "2025-01-02T03:04:05+00:00",
            "rolled_back_at": "2025-02-01T00:00:00+00:00", "rolled_back_to": "2"}
    text = version_description("reg", "3", tags, experiment_id="7")
    assert text.startswith("**m1** (ImageNet (package w==0.1.0)), version 3 of reg.")
    assert "**Gate: promoted** (became champion). Why: macro-F1 0.9000 vs champion 0.8500: beats it" in text
    assert "| macro-F1 [95% bootstrap interval] | |" in text
    assert "| validation (chose this model among the pipeline's) | 0.8810 [0.8300, 0.9200] |" in text
    assert "| test split (evaluate stage) | 0.9190 [0.8700, 0.9500] |" in text
    assert "| gate: 170 test images champion v2 never trained on | 0.9000 [0.8500, 0.9400] |" in text
    assert ("- Precision promise: lower bound 0.9812 at coverage 0.610 on out-of-fold (5-fold on train+val, "
            "872 images)") in text
    assert "- Weakest class: **Baby Care**, F1 0.851 (floor 0.5)" in text
    assert ("- Auto-label coverage: **0.737** (at threshold 0.8920, precision 0.961 (target 0.98), minimum 0.5)"
            in text)
    assert ("- Against champion v2: its macro-F1 0.8500; difference +0.0500, paired interval [+0.0120, +0.0910] "
            "on 170 images (lower end needed > 0)") in text
    assert "- 2025-02-01T00:00:00+00:00: rolled back: champion returned to v2" in text
    assert ("[report/index.html of run abcdef012345](#/experiments/7/runs/abcdef0123456789/artifactPath/"
            "report/index.html) (`runs:/abcdef0123456789/report/index.html`" in text)
    assert "Model: `models:/reg/3`." in text
    assert ("Provenance: git 0123456789ab-dirty; changed files params.yaml; data 799d9136aaaa; "
            "decided 2025-01-02T03:04:05+00:00.") in text
    # A version registered before these tags existed: what it carries, nothing invented.
    bare = version_description("reg", "1", {"decision": "promoted", "reason": "setup"})
    assert bare == "**unknown model**, version 1 of reg.\n\n**Gate: promoted** (became champion). Why: setup\n\n" \
                   "Model: `models:/reg/1`.\n"


def _test_manifest() -> pd.DataFrame:
    return pd.DataFrame({"image": [f"img{i}.jpg" for i in range(1, 7)], "label": TRUTH,
                         "sha256": [f"s{i}" for i in range(1, 7)]})


def test_images_the_champion_was_trained_on_are_left_out_by_name_or_content() -> None:
    # The champion trained on img1.jpg, and on img3.jpg's exact bytes under another name.
    champion_train = pd.DataFrame({"image": ["img1.jpg", "renamed.jpg", "x.jpg"], "label": ["a", "b", "c"],
                                   "sha256": ["s1", "s3", "zz"]})
    shared, excluded = shared_test_images(_test_manifest(), champion_train)
    assert excluded == ["img1.jpg", "img3.jpg"]
    assert list(shared["image"]) == ["img2.jpg", "img4.jpg", "img5.jpg", "img6.jpg"]
    # On the full split the champion looks perfect (it memorised img1 and img3); on the shared images it is not.
    decision = decide(list(shared["label"]), ["a", "b", "c", "c"], ["a", "b", "c", "a"], CLASSES,
                      min_delta=0.0, class_f1_floor=0.5)
    assert decision.figures["delta"] > 0  # four images are too few to promote on (the paired interval holds 0)
    assert decision.figures["n_images"] == 4
    assert decision.figures["challenger_f1_macro"] == 1.0
    assert decision.figures["champion_f1_macro"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3, abs=1e-6)


def test_a_class_left_without_test_images_is_not_judged() -> None:
    champion_train = pd.DataFrame({"image": ["img3.jpg", "img4.jpg"], "label": ["b", "b"], "sha256": ["s3", "s4"]})
    shared, _ = shared_test_images(_test_manifest(), champion_train)
    # Predicting b for an a image is still an error for a; b itself (no test image left) is not scored.
    decision = decide(list(shared["label"]), ["a", "b", "c", "c"], ["a", "a", "c", "c"], CLASSES,
                      min_delta=0.0, class_f1_floor=0.5)
    assert set(decision.figures["challenger_class_f1"]) == {"a", "c"}
    assert decision.figures["challenger_class_f1"]["a"] == pytest.approx(2 / 3, abs=1e-6)
    assert not decision.promote and "its lower end is not above 0" in decision.reason


def test_no_shared_image_means_no_promotion() -> None:
    shared, excluded = shared_test_images(_test_manifest(), _test_manifest())
    assert shared.empty and len(excluded) == 6
    decision = decide([], [], [], CLASSES, min_delta=0.0, class_f1_floor=0.0)
    assert not decision.promote and decision.figures["n_images"] == 0


# --- a real registry -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def project(tiny_pipeline: Path) -> Path:
    return tiny_pipeline


@pytest.fixture(scope="module")
def ranked(project: Path) -> tuple[str, str]:
    """(worse, better) of the two tiny models by test macro-F1; the integration tests need them to differ."""
    worse, better = sorted(TINY_MODELS, key=lambda model: eval_f1(project, model))
    assert eval_f1(project, better) - eval_f1(project, worse) >= 0.01, "tiny models scored alike: change seeds"
    return worse, better


def hand_f1(project: Path, model: str, images: list[str] | None = None) -> float:
    """macro-F1 over the classes present, from the evaluate stage's own predictions file."""
    frame = eval_predictions(project, model)
    if images is not None:
        frame = frame[frame["image"].isin(images)]
    present = sorted(set(frame["true_label"]))
    return float(f1_score(frame["true_label"], frame["pred_label"], labels=present, average="macro",
                          zero_division=0))


def aliases(project: Path, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client(project).get_registered_model(name).aliases.items()}


def history(project: Path, name: str) -> list[str]:
    return json.loads(client(project).get_registered_model(name).tags["champion_history"])


def version_tags(project: Path, name: str, version: str) -> dict[str, str]:
    return client(project).get_model_version(name, version).tags


@pytest.mark.slow
def test_the_pipeline_promote_stage_registered_and_judged_the_best_model(project: Path) -> None:
    report = repro_promotion(project)
    best = json.loads((project / "artifacts/comparison.json").read_text())["selected"]
    assert report["source_model"] == best and report["version"] == "1" and report["champion_before"] is None
    assert report["figures"]["challenger_f1_macro"] == pytest.approx(hand_f1(project, best), abs=1e-6)
    weakest = min(report["figures"]["challenger_class_f1"].values())
    assert report["promote"] == (weakest >= 0.5)  # params.yaml's floor, applied to the first model
    tags = version_tags(project, "catalog-classifier", "1")
    assert tags["decision"] == report["decision"] and tags["reason"] == report["reason"]
    assert tags["data_version"] == "untracked" and len(tags["git_commit"]) >= 40
    assert tags["challenger_f1_macro"] == str(report["figures"]["challenger_f1_macro"])
    expected = {"challenger": "1", **({"champion": "1"} if report["promote"] else {})}
    assert aliases(project, "catalog-classifier") == expected

    # The description a reviewer reads in the registry UI, with the computed figures.
    evaluated = json.loads((project / f"artifacts/eval/{best}/metrics.json").read_text())
    weights = weights_label(json.loads((project / f"artifacts/models/{best}/train_metrics.json").read_text()))
    figures = report["figures"]
    assert tags["val_f1_macro"] == str(round(evaluated["val"]["f1_macro"], 6)) and tags["weights"] == weights
    assert report["test_f1_macro"] == round(evaluated["test"]["f1_macro"], 6)
    version = client(project).get_model_version("catalog-classifier", "1")
    text = version.description
    assert text.startswith(f"**{best}** ({weights}), version 1 of catalog-classifier.")
    assert f"**Gate: {report['decision']}**" in text and f"Why: {report['reason']}" in text
    def shown(value: float, pair: list[float]) -> str:
        return f"{value:.4f} [{pair[0]:.4f}, {pair[1]:.4f}]"

    val, test = evaluated["val"], evaluated["test"]
    val_ci = [val["f1_macro_interval"]["low"], val["f1_macro_interval"]["high"]]
    test_ci = [test["f1_macro_interval"]["low"], test["f1_macro_interval"]["high"]]
    assert f"| validation (chose this model among the pipeline's) | {shown(val['f1_macro'], val_ci)} |" in text
    assert f"| test split (evaluate stage) | {shown(test['f1_macro'], test_ci)} |" in text
    gate = shown(figures["challenger_f1_macro"], figures["challenger_f1_macro_interval"])
    assert f"| gate: {figures['n_images']} test images | {gate} |" in text
    assert f"Weakest class: **{figures['weakest_class']}**, F1 {figures['weakest_class_f1']:.3f} (floor 0.5)" in text
    assert f"Auto-label coverage: **{figures['challenger_coverage']:.3f}**" in text
    run_id = report["source_run_id"]
    experiment = client(project).get_run(run_id).info.experiment_id
    assert f"(#/experiments/{experiment}/runs/{run_id}/artifactPath/report/index.html)" in text
    assert "Model: `models:/catalog-classifier/1`." in text
    # The link points at a real artifact: the report stage attached the page to the run after promote.
    assert "report/index.html" in {item.path for item in client(project).list_artifacts(run_id, "report")}


@pytest.mark.slow
def test_min_coverage_rejects_a_challenger_that_auto_labels_too_little(
        project: Path, ranked: tuple[str, str], capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    _, better = ranked
    name = "coverage"
    classes = yaml.safe_load((project / "params.yaml").read_text())["data"]["classes"]
    evaluated = eval_predictions(project, better)
    confidence = calibrated(evaluated, classes, 0.5).max(1)
    threshold = midpoint_threshold(list(confidence))
    auto = confidence >= threshold
    coverage = float(auto.mean())
    precision = float((auto & evaluated["correct"].astype(bool)).sum() / auto.sum())
    write_autolabel(tmp_path / "eval", better, 0.5, threshold, target_precision=0.9)
    calibration = ["--set", f"evaluate.out_dir={tmp_path / 'eval'}", "--model", better]

    # The first model, judged on the whole test split: one image more than it auto-labels would be needed.
    minimum = round(coverage + 0.5 / len(evaluated), 4)
    report = promote(project, name, tmp_path / "promotion.json", *calibration,
                     "--set", f"registry.min_coverage={minimum}")
    assert not report["promote"] and report["champion_after"] is None
    assert report["reason"] == f"first model: auto-label coverage {coverage:.3f} below the minimum {minimum:g}"
    figures = report["figures"]
    assert figures["challenger_coverage"] == pytest.approx(coverage, abs=1e-6)
    assert figures["challenger_autolabel_precision"] == pytest.approx(precision, abs=1e-6)
    tags = version_tags(project, name, "1")
    assert tags["decision"] == "rejected" and tags["temperature"] == "0.5"
    assert float(tags["autolabel_threshold"]) == threshold and tags["autolabel_target_precision"] == "0.9"
    assert float(tags["autolabel_coverage"]) == pytest.approx(coverage, abs=1e-6)
    assert aliases(project, name) == {"challenger": "1"}

    # Exactly the coverage it reaches is enough (a dry run: the registry is left as it is).
    capsys.readouterr()
    assert cli(["promote", "--dry-run", *calibration,
                *cli_args(project, name, registry__class_f1_floor=0, registry__min_coverage=repr(coverage),
                          registry__out_json=tmp_path / "dry.json")]) == 0
    assert "would become champion" in capsys.readouterr().out
    assert aliases(project, name) == {"challenger": "1"}


@pytest.mark.slow
def test_aliases_move_by_the_rule_and_rollback_restores_the_previous_champion(
        project: Path, ranked: tuple[str, str], capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    worse, better = ranked
    name = "moves"
    report = tmp_path / "promotion.json"
    first = promote(project, name, report, "--model", worse)
    assert first["promote"] and first["version"] == "1" and first["champion_after"] == "1"
    assert aliases(project, name) == {"champion": "1", "challenger": "1"}

    second = promote(project, name, report, "--model", better)
    assert second["promote"] and second["champion_before"] == "1" and second["champion_after"] == "2"
    assert second["figures"]["delta"] == pytest.approx(hand_f1(project, better) - hand_f1(project, worse), abs=2e-6)
    assert aliases(project, name) == {"champion": "2", "challenger": "2"}
    assert history(project, name) == ["1", "2"]
    tags = version_tags(project, name, "2")
    assert tags["decision"] == "promoted" and tags["compared_with"] == "1" and tags["previous_champion"] == "1"

    third = promote(project, name, report, "--model", better)  # the same weights again: equal is not better
    assert not third["promote"] and third["figures"]["delta"] == 0 and third["champion_after"] == "2"
    assert aliases(project, name) == {"champion": "2", "challenger": "3"}
    assert version_tags(project, name, "3")["decision"] == "rejected"

    capsys.readouterr()
    assert cli(["rollback", *cli_args(project, name)]) == 0
    assert "from v2 back to v1" in capsys.readouterr().out
    assert aliases(project, name) == {"champion": "1", "challenger": "3"}
    assert history(project, name) == ["1"]
    assert version_tags(project, name, "2")["rolled_back_to"] == "1"
    # Both descriptions now tell the rollback; v2's still has its own decision and figures.
    described = {version: client(project).get_model_version(name, version).description for version in ("1", "2")}
    assert "rolled back: champion returned to v1" in described["2"]
    assert (f"- Against champion v1: its macro-F1 {second['figures']['champion_f1_macro']:.4f}; difference "
            f"{second['figures']['delta']:+.4f}, paired interval") in described["2"]
    assert "champion again (restored by a rollback)" in described["1"]
    assert "No champion yet" in described["1"] and "**Gate: promoted**" in described["1"]

    assert cli(["rollback", *cli_args(project, name)]) == 2  # v1 was the first champion
    assert "no previous champion" in capsys.readouterr().err
    assert aliases(project, name)["champion"] == "1"

    fourth = promote(project, name, report, "--model", better)  # judged against the restored champion again
    assert fourth["promote"] and fourth["champion_before"] == "1"
    assert history(project, name) == ["1", "4"]


@pytest.mark.slow
def test_dry_run_prints_the_decision_and_changes_nothing(
        project: Path, ranked: tuple[str, str], capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    worse, better = ranked
    name = "dry"
    report = tmp_path / "promotion.json"
    promote(project, name, report, "--model", worse)
    registry = client(project)
    experiment = registry.get_experiment_by_name("catalog-classifier").experiment_id

    def snapshot() -> tuple:
        versions = registry.search_model_versions(f"name='{name}'")
        logged = registry.search_logged_models(experiment_ids=[experiment], max_results=1000)
        return (sorted((v.version, tuple(sorted(v.tags.items()))) for v in versions),
                registry.get_registered_model(name).aliases, len(logged),
                report.read_bytes())

    before = snapshot()
    capsys.readouterr()
    args = ["promote", "--dry-run", "--model", better,
            *cli_args(project, name, registry__class_f1_floor=0, registry__out_json=report)]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "dry run: nothing changed" in printed and "would become champion" in printed
    assert f"{hand_f1(project, better):.4f} vs champion {hand_f1(project, worse):.4f}" in printed
    assert snapshot() == before


@pytest.mark.slow
def test_the_champion_is_not_judged_on_images_it_was_trained_on(project: Path, ranked: tuple[str, str],
                                                                tmp_path: Path) -> None:
    import mlflow

    from catalog_classifier.config.layout import Project
    from catalog_classifier.modeling.prediction import pipeline_inference_settings, write_classifier_dir
    from catalog_classifier.registry.artifact import TRAIN_MANIFEST, log_classifier_folder, registration_tags
    from catalog_classifier.registry.tracking import setup_mlflow
    from catalog_classifier.registry.versions import record_decision, register_challenger

    worse, better = ranked
    name = "overlap"
    test = pd.read_csv(project / "artifacts/splits/test.csv")
    seen = sorted(test["image"].head(3))
    with isolated_mlflow_env():
        # A champion whose training manifest holds 3 of today's test images (as after a re-split).
        proj = Project.load(project / "params.yaml", {"registry.model_name": name})
        setup_mlflow(proj.params.mlflow, proj.root)
        folder = write_classifier_dir(proj.weights(worse), tmp_path / "classifier",
                                      pipeline_inference_settings(proj.params))
        train = pd.read_csv(project / "artifacts/splits/train.csv")
        pd.concat([train, test.head(3)]).to_csv(folder / TRAIN_MANIFEST, index=False)
        run_id = json.loads((project / f"artifacts/models/{worse}/run.json").read_text())["run_id"]
        with mlflow.start_run(run_id=run_id):
            source, hashes = log_classifier_folder(folder)
        version = register_challenger(client(project), name, source, run_id, registration_tags(hashes)).version
        record_decision(client(project), name, str(version), True, {"decision": "promoted", "reason": "setup"})

    report = promote(project, name, tmp_path / "promotion.json", "--model", better)
    rest = sorted(set(test["image"]) - set(seen))
    assert report["excluded_images"] == seen
    assert report["figures"]["n_excluded"] == 3 and report["figures"]["n_images"] == len(rest) == 4
    assert report["figures"]["challenger_f1_macro"] == pytest.approx(hand_f1(project, better, rest), abs=1e-6)
    assert report["figures"]["champion_f1_macro"] == pytest.approx(hand_f1(project, worse, rest), abs=1e-6)
    assert version_tags(project, name, report["version"])["n_excluded"] == "3"


@pytest.mark.slow
def test_two_racing_promotes_leave_exactly_one_champion(project: Path, ranked: tuple[str, str],
                                                       tmp_path: Path) -> None:
    name = "race"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    racers = [
        subprocess.Popen([sys.executable, "-m", "catalog_classifier", "promote", "--model", ranked[1],
                          *cli_args(project, name, registry__class_f1_floor=0,
                                    registry__out_json=tmp_path / f"promotion-{racer}.json")],
                         cwd=project, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for racer in range(2)
    ]
    outputs = [racer.communicate(timeout=900)[0] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs

    registry = client(project)
    versions = {str(v.version): v.tags for v in registry.search_model_versions(f"name='{name}'")}
    assert sorted(versions) == ["1", "2"]
    # Whoever took the lock first registered v1 and became champion; the other was judged against it.
    assert aliases(project, name) == {"champion": "1", "challenger": "2"}
    assert history(project, name) == ["1"]
    assert versions["1"]["decision"] == "promoted" and versions["1"]["compared_with"] == "none"
    assert versions["2"]["decision"] == "rejected" and versions["2"]["compared_with"] == "1"
    assert versions["2"]["delta"] == "0.0"
