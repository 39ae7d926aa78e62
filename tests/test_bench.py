"""The bench: its report is complete and internally consistent, frozen-backbone training is exact, compile
attempts are bounded. No timing is asserted: only how the figures relate to each other."""

from __future__ import annotations

import math
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_params, write_tiny_catalogue

from catalog_classifier import cli
from catalog_classifier.benchmarks.batch_predict_speed import (
    TimedClassifier,
    batch_predict_throughput,
    predict_classifier,
    predict_paths,
)
from catalog_classifier.benchmarks.compile_speed import compile_verdict
from catalog_classifier.benchmarks.frozen_speed import frozen_versus_full
from catalog_classifier.benchmarks.isolated_call import run_bounded
from catalog_classifier.benchmarks.loop_speed import Timing, training_figures
from catalog_classifier.config.layout import Project
from catalog_classifier.data.imageset import ImageSet, to_float
from catalog_classifier.modeling.fit_loop import FitSettings, predict_logits
from catalog_classifier.modeling.frozen import UnscaledHead, extract_features, fit_frozen
from catalog_classifier.modeling.models import create_classifier, save_classifier
from catalog_classifier.modeling.prediction import InferenceSettings
from catalog_classifier.modeling.torch_setup import Runtime
from catalog_classifier.ops.io import read_json, write_json
from catalog_classifier.stages.split import run_split

RECORDED_FIT_S = 120.0
RECORDED_TEST_F1 = 0.5


@pytest.fixture(scope="module")
def bench_report(tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> tuple[Path, dict]:
    """``catalog-classifier bench --quick`` on a tiny project (resnet10t, 32 px, 42 real images)."""
    root = tmp_path_factory.mktemp("bench")
    write_tiny_catalogue(root / "data", real_data, per_class=6)
    params = tiny_params()
    params["models"] = ["resnet10t"]
    with (root / "params.yaml").open("w", encoding="utf-8") as handle:
        yaml.safe_dump(params, handle, sort_keys=False)
    project = Project.load(root / "params.yaml")
    run_split(project)
    # The full fine-tuning figures the frozen comparison reads from the last pipeline run.
    write_json(project.train_metrics("resnet10t"), {"fit_time_s": RECORDED_FIT_S, "epochs_run": 3})
    write_json(project.eval_metrics("resnet10t"), {"test": {"f1_macro": RECORDED_TEST_F1}})
    code = cli.main(["bench", "--params", str(root / "params.yaml"), "--quick", "--set", "bench.matmul_size=256",
                     "--set", "bench.inference_batch_sizes=[4, 8]"])
    assert code == 0
    return root, read_json(root / "artifacts/bench/quick/bench.json")


def test_bench_report_is_internally_consistent(bench_report: tuple[Path, dict]) -> None:
    root, report = bench_report
    settings = report["settings"]
    n_train = sum(1 for _ in (root / "artifacts/splits/train.csv").open()) - 1
    assert report["quick"] is True and settings["batch_size"] == 8 and settings["n_train"] == n_train
    for peak in report["peak"].values():
        assert peak["size"] == 256
        assert peak["gflops"] == pytest.approx(2 * 256**3 / peak["best_s"] / 1e9)
    assert list(report["models"]) == ["resnet10t"]
    figures = report["models"]["resnet10t"]
    assert figures["input_size"] == [32, 32]
    assert figures["flops"]["train_gflops_per_image"] == pytest.approx(3 * figures["flops"]["forward_gflops_per_image"])

    training = figures["training"]
    project, naive = training["project"], training["naive"]
    # The arithmetic from measured seconds to these figures is checked by hand in
    # test_training_figures_by_hand; a real run can only say that something was measured.
    for loop in (project, naive):
        assert loop["images"] == settings["measure_steps"] * settings["batch_size"] == 8
        assert loop["seconds"] > 0 and loop["images_per_s"] > 0 and loop["epoch_s_extrapolated"] > 0
        assert loop["fraction_of_peak"] > 0
    assert training["ratio"] > 0 and training["epoch_images"] == n_train
    assert project["peak_dtype"] == ("bf16" if report["machine"]["bf16"] else "fp32")
    assert naive["peak_dtype"] == "fp32" and naive["num_workers"] == 0
    assert training["target_ratio"] is None and training["meets_target"] is None  # targets name real models

    batched = figures["inference"]["batched"]
    assert sorted(batched) == ["4", "8"]
    for size, timing in batched.items():
        assert timing["batch_size"] == int(size) and timing["images"] == int(size)  # 1 measured batch
    single = figures["inference"]["single_image"]
    assert single["repeats"] == 5 and single["p50_ms"] <= single["p95_ms"]
    assert figures["compile"]["status"] == "skipped"

    batch = figures["inference"]["batch_predict"]  # --quick: 16 of the 42 images, evaluate.batch_size 16, 1 thread
    assert batch["n_images"] == batch["n_requested"] == settings["predict_images_used"] == 16
    assert batch["seconds"] > 0 and batch["images_per_s"] > 0
    assert batch["decode_resize_s"] > 0 and batch["forward_s"] > 0
    assert batch["decode_resize_s"] + batch["forward_s"] + batch["other_s"] == pytest.approx(batch["seconds"])
    assert batch["batch_size"] == 16 and batch["threads"] == report["machine"]["threads"] == 1
    assert batch["errors"] == 0 and batch["weights"] == "random" and batch["weights_file"] is None
    assert batch["calibrated"] is False
    assert batch["target_img_s"] == 40 and batch["meets_target"] == (batch["images_per_s"] >= 40)

    frozen = figures["frozen"]
    manifests = {split: sum(1 for _ in (root / f"artifacts/splits/{split}.csv").open()) - 1
                 for split in ("train", "val", "test")}
    used = {split: min(24, count) for split, count in manifests.items()}  # --quick caps each split at 24
    assert frozen["n_images"] == used and manifests["train"] > 24
    assert frozen["fit_s"] == pytest.approx(frozen["feature_s"] + frozen["head_fit_s"])
    scale = (manifests["train"] + manifests["val"]) / (used["train"] + used["val"])
    assert frozen["extrapolated"]
    assert frozen["fit_s_for_speedup"] == pytest.approx(frozen["feature_s"] * scale + frozen["head_fit_s"])
    assert frozen["speedup"] == pytest.approx(RECORDED_FIT_S / frozen["fit_s_for_speedup"])
    assert frozen["full"]["test_f1_macro"] == RECORDED_TEST_F1 and frozen["full"]["fit_time_s"] == RECORDED_FIT_S
    assert frozen["full_fit_s_estimated_this_run"] == pytest.approx(
        3 * (project["epoch_s_extrapolated"] + settings["n_val"] / batched["4"]["images_per_s"]))
    assert 1 <= frozen["epochs_run"] <= 2 and 0 <= frozen["test_f1_macro"] <= 1
    assert frozen["feature_dim"] == 512 and frozen["weights_used"] == "random"

    table = (root / "artifacts/bench/quick/bench.md").read_text(encoding="utf-8")
    assert "| resnet10t |" in table and "Quick run" in table
    met = "met" if batch["meets_target"] else "not met"
    assert (f"| resnet10t | batch predict, 16 images: {batch['images_per_s']:.1f} img/s (target 40 img/s: {met}) | "
            f"{batch['seconds']:.1f} (") in table


def test_bench_is_logged_to_mlflow(bench_report: tuple[Path, dict]) -> None:
    root, report = bench_report
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["catalog-classifier"], output_format="list")
    assert [run.info.run_name for run in runs] == ["bench"]
    run = runs[0]
    assert run.data.tags["bench_mode"] == "quick" and run.data.params["bench.n_images"] == "16"
    assert run.data.metrics["resnet10t/training/ratio"] == pytest.approx(report["models"]["resnet10t"]["training"]
                                                                          ["ratio"])
    assert run.data.metrics["peak/bf16/gflops"] == pytest.approx(report["peak"]["bf16"]["gflops"])
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(run.info.run_id, "bench")}
    assert artifacts == {"bench/bench.json", "bench/bench.md"}


def test_frozen_head_trains_on_cached_features_exactly_like_the_full_model() -> None:
    torch.manual_seed(0)
    model, _ = create_classifier("mobilevitv2_050", 3, image_size=32)
    fp32 = Runtime(threads=1, channels_last=False, bf16=False)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (18, 3, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.arange(3).repeat(6)
    train = ImageSet(pixels[:12], labels[:12], [f"{i}" for i in range(12)])
    val = ImageSet(pixels[12:], labels[12:], [f"{i}" for i in range(12, 18)])
    head = model.backbone.get_classifier()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items() if not k.startswith("head")}
    head_before = head.weight.detach().clone()

    settings = FitSettings(max_epochs=3, patience=3, batch_size=4, optimizer="adamw", lr=0.05, weight_decay=0.0)
    result, train_features, _ = fit_frozen(model, train, val, settings, fp32, generator, 3)

    assert result.fit.epochs_run == 3 and result.fit_seconds == result.feature_seconds + result.head_fit_seconds
    assert train_features.pixels.shape == (12, 256) and torch.equal(train_features.labels, train.labels)
    # Only the head learned; the cached features are what the (unchanged) backbone computes.
    assert not torch.equal(head.weight, head_before)
    after = {k: v for k, v in model.backbone.state_dict().items() if not k.startswith("head")}
    assert all(torch.equal(after[k], v) for k, v in backbone_before.items())
    assert torch.equal(train_features.pixels, extract_features(model, train, 4, fp32).pixels)
    # The trained head on cached features gives the full model's logits: the model is ready to save and serve.
    with torch.no_grad():
        full = model.eval()(to_float(train.pixels, False))
    cached = predict_logits(UnscaledHead(head), train_features, 4, fp32)
    assert torch.allclose(cached, full, atol=1e-4)


def test_frozen_speedup_extrapolates_a_capped_subset_by_image_count() -> None:
    frozen = {"n_images": {"train": 10, "val": 5, "test": 5}, "feature_s": 3.0, "head_fit_s": 1.0}
    comparison = frozen_versus_full(frozen, {"fit_time_s": 140.0}, n_train=20, n_val=10, estimated_full_fit_s=70.0)
    assert comparison["extrapolated"] and comparison["fit_s_for_speedup"] == pytest.approx(3.0 * 2 + 1.0)
    assert comparison["speedup"] == pytest.approx(20.0) and comparison["meets_target"] is True
    assert comparison["speedup_vs_estimate"] == pytest.approx(10.0)
    missing = frozen_versus_full(frozen, {"fit_time_s": None}, n_train=10, n_val=5, estimated_full_fit_s=None)
    assert missing["speedup"] is None and missing["meets_target"] is None


def test_training_figures_by_hand() -> None:
    # 8 images in 2 s = 4 img/s (project, bf16) against 8 in 8 s = 1 img/s (naive, fp32); 0.5 GFLOP per train image,
    # peaks 40 GFLOP/s bf16 and 10 GFLOP/s fp32; an epoch of 100 images.
    figures = training_figures(Timing(8, 2.0), Timing(8, 8.0), {"train_gflops_per_image": 0.5},
                               {"bf16": {"gflops": 40.0}, "fp32": {"gflops": 10.0}},
                               Runtime(threads=2, channels_last=True, bf16=True), n_train=100, target=3.0)
    project, naive = figures["project"], figures["naive"]
    assert project["images_per_s"] == 4.0 and naive["images_per_s"] == 1.0
    assert project["epoch_s_extrapolated"] == 25.0 and naive["epoch_s_extrapolated"] == 100.0  # 100 / 4, 100 / 1
    assert project["achieved_gflops"] == 2.0 and naive["achieved_gflops"] == 0.5  # 4 x 0.5, 1 x 0.5
    assert project["peak_dtype"] == "bf16" and naive["peak_dtype"] == "fp32"
    assert project["fraction_of_peak"] == 0.05 and naive["fraction_of_peak"] == 0.05  # 2 / 40, 0.5 / 10
    assert figures["ratio"] == 4.0 and figures["ceiling_ratio"] == 80.0  # 4 / 1; 40 / 0.5
    assert figures["meets_target"] is True and figures["epoch_images"] == 100
    assert training_figures(Timing(8, 2.0), Timing(8, 8.0), {"train_gflops_per_image": 0.5},
                            {"bf16": {"gflops": 40.0}, "fp32": {"gflops": 10.0}},
                            Runtime(threads=2, channels_last=True, bf16=False), n_train=100,
                            target=5.0)["meets_target"] is False  # 4 < 5


def test_compile_verdict_by_hand() -> None:
    compiled = {"train": {"compile_s": 100.0, "images_per_s": 20.0},
                "inference": {"compile_s": 30.0, "images_per_s": 40.0, "batch_size": 32}}
    verdict = compile_verdict(compiled, eager_train_ips=10.0, eager_infer_ips=50.0, n_train=697, n_val=175,
                              fit_epochs=8)
    # train: 0.05 s saved per image, 8 x 697 images -> 278.8 s saved > 100 s compile; break-even at 2000 images
    assert verdict["train"]["speedup"] == pytest.approx(2.0)
    assert verdict["train"]["saved_per_fit_s"] == pytest.approx(278.8)
    assert verdict["train"]["break_even_images"] == pytest.approx(2000.0)
    assert verdict["train"]["repays_within_one_fit"] is True
    # inference got slower: never repays
    assert verdict["inference"]["speedup"] == pytest.approx(0.8) and verdict["inference"]["batch_size"] == 32
    assert verdict["inference"]["break_even_images"] is None
    assert verdict["inference"]["repays_within_one_fit"] is False


def test_run_bounded_reports_result_failure_and_timeout() -> None:
    assert run_bounded(math.sqrt, (16.0,), 120)["result"] == 4.0
    failed = run_bounded(math.sqrt, (-1.0,), 120)
    assert failed["status"] == "error" and failed["error"] == "ValueError: math domain error"
    started = time.perf_counter()
    stopped = run_bounded(time.sleep, (600,), 1.0)
    assert stopped["status"] == "timeout" and time.perf_counter() - started < 60


def test_a_frozen_pipeline_run_is_not_taken_for_full_fine_tuning(tmp_path: Path) -> None:
    import json

    import yaml
    from conftest import tiny_params

    from catalog_classifier.benchmarks.suite import recorded_full_fit
    from catalog_classifier.config.layout import Project

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()), encoding="utf-8")
    project = Project.load(tmp_path / "params.yaml")
    model = project.params.models[0]
    project.train_metrics(model).parent.mkdir(parents=True)
    project.train_metrics(model).write_text(json.dumps({"fit_time_s": 10.3, "freeze_backbone": True,
                                                        "weights_used": "imagenet"}), encoding="utf-8")
    figures = recorded_full_fit(project, model)
    assert figures["fit_time_s"] is None and "itself frozen-backbone" in figures["note"]
    comparison = frozen_versus_full({"n_images": {"train": 4, "val": 2}, "feature_s": 1.0, "head_fit_s": 1.0},
                                    figures, n_train=4, n_val=2, estimated_full_fit_s=None)
    assert comparison["speedup"] is None and comparison["meets_target"] is None  # not a 0.5x "speed-up"


def test_batch_predict_images_come_from_every_split_in_a_seeded_order(tmp_path: Path) -> None:
    manifests = [pd.DataFrame({"image": ["a.jpg", "b.jpg"]}), pd.DataFrame({"image": ["c.jpg"]}),
                 pd.DataFrame({"image": ["d.jpg", "e.jpg", "a.jpg"]})]
    everything = predict_paths(manifests, tmp_path, 10, seed=3)  # fewer than asked: all 5 distinct files
    assert sorted(path.name for path in everything) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    assert all(path.parent == tmp_path for path in everything)
    assert predict_paths(manifests, tmp_path, 10, seed=3) == everything
    assert predict_paths(manifests, tmp_path, 3, seed=3) == everything[:3]  # a cap takes a prefix of the order


def test_batch_predict_uses_the_trained_model_and_its_calibration(tmp_path: Path, real_data: Path) -> None:
    classes = ["bags", "shoes", "watches"]
    torch.manual_seed(0)
    model, _ = create_classifier("resnet10t", len(classes), image_size=32)
    weights = tmp_path / "model.pt"
    save_classifier(model, "resnet10t", classes, weights)
    autolabel = tmp_path / "autolabel.json"
    write_json(autolabel, {"temperature": 2.5, "reachable": True, "threshold": 0.9, "target_precision": 0.98})
    settings = InferenceSettings(batch_size=2, channels_last=False, bf16=False, num_threads=1)

    classifier, built_from = predict_classifier("resnet10t", ["x"], weights, autolabel, settings, 64, seed=1)
    assert built_from == "trained" and classifier.classes == classes  # the stored model, not the given shape
    assert classifier.config["input_size"] == [32, 32] and classifier.calibration.temperature == 2.5
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in classifier.model.state_dict().items())

    paths = sorted((real_data / "Images").glob("*.jpg"))[:3] + [tmp_path / "missing.jpg"]
    # Timing the two parts changes no prediction.
    pd.testing.assert_frame_equal(TimedClassifier(classifier).predict_files(paths), classifier.predict_files(paths))
    figures = batch_predict_throughput(classifier, paths, n_requested=5, target_img_s=1e9)
    assert figures["n_images"] == 4 and figures["n_requested"] == 5 and figures["errors"] == 1
    assert figures["batch_size"] == 2 and figures["threads"] == 1 and figures["meets_target"] is False

    random_model, built_from = predict_classifier("resnet10t", classes, tmp_path / "none.pt", autolabel, settings,
                                                  32, seed=1)
    assert built_from == "random" and random_model.classes == classes
    assert random_model.calibration.temperature == 1.0 and random_model.calibration.threshold is None


def test_a_child_process_peak_memory_is_its_own_not_the_forking_parents() -> None:
    """bench-predict's peak RSS of a predict child: a parent holding 800 MB must not lend it its high-water mark
    (wait4's ru_maxrss did: 2.66 GB for a child /usr/bin/time measured at 1.38 GB)."""
    import sys

    from catalog_classifier.benchmarks.prediction_runtimes import predict_run

    held = bytearray(800 * 1024 * 1024)  # touched below: resident in this (forking) process
    held[::4096] = b"\x01" * len(held[::4096])
    child = "import time; block = bytearray(200 * 1024 * 1024); block[::4096] = b'\\x01' * (len(block) // 4096); " \
            "time.sleep(0.6)"
    figures = predict_run([sys.executable, "-c", child], poll_s=0.05)
    assert 200 <= figures["peak_rss_mb"] < 500  # 200 MB block + an interpreter, nowhere near the parent's 800
    del held
