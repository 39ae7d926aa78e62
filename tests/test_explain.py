"""Explanations: Grad-CAM and SHAP must point at what a model uses, and the figures and metrics must be right.

A tiny resnet10t is trained for a few seconds on synthetic grey-noise images holding one coloured square:
the square's colour decides the class and it sits anywhere, so a heatmap must find *where the square sits*
in each image to pass (a fixed-place or image-blind heatmap cannot). Wired to the wrong target class, with
gradients that never reach the layer, or with a stale SHAP masker, these tests fail.

Why colour and not the quadrant decides the class: a network with global pooling can read the quadrant
from its distance to the padded border, so its evidence for "top-left" need not sit on the square at all;
trained that way, the tiny model was right on every image while Grad-CAM's peak hit the square on a third
of them. With colour classes the square is the only evidence there is.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import real_params
from PIL import Image

from catalog_classifier.data.imageset import ImageSet
from catalog_classifier.explanations import drawing as draw
from catalog_classifier.explanations import explainers as expl
from catalog_classifier.explanations import faithfulness as faithful
from catalog_classifier.explanations import heatmap_summary as heat
from catalog_classifier.explanations import image_choice as pick
from catalog_classifier.modeling.fit_loop import FitSettings, fit
from catalog_classifier.modeling.models import create_classifier
from catalog_classifier.modeling.torch_setup import Runtime, seed_everything

SIZE, SQUARE, CLASSES = 64, 16, 4
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


COLOURS = np.array([[230, 30, 30], [30, 200, 30], [30, 30, 230], [230, 200, 30]], dtype=np.uint8)
# At 64 px, layer4 of resnet10t is a 2x2 map: too coarse to place a 16-px square. layer2 (8x8) can; that the
# default layers resolve for each family is tested separately below.
LAYER = "backbone.layer2.-1"


def square_images(count: int, seed: int) -> tuple[ImageSet, list[tuple[int, int]]]:
    """Grey-noise images with one square anywhere; its colour is the class. Returns the images and corners."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 166, size=(count, 3, SIZE, SIZE), dtype=np.uint8)
    labels, corners = np.arange(count) % CLASSES, []
    for index, label in enumerate(labels):
        top, left = (int(v) for v in rng.integers(0, SIZE - SQUARE + 1, size=2))
        pixels[index, :, top : top + SQUARE, left : left + SQUARE] = COLOURS[label][:, None, None]
        corners.append((top, left))
    names = [f"square_{seed}_{i}.png" for i in range(count)]
    return ImageSet(torch.from_numpy(pixels), torch.from_numpy(labels.astype(np.int64)), names), corners


@pytest.fixture(scope="module")
def trained() -> dict:
    generator = seed_everything(0)
    train, _ = square_images(96, seed=1)
    val, corners = square_images(32, seed=2)
    model, _ = create_classifier("resnet10t", CLASSES, weights="none", image_size=SIZE)
    settings = FitSettings(max_epochs=2, patience=2, batch_size=16, optimizer="adamw", lr=0.003, weight_decay=0.0)
    runtime = Runtime(threads=torch.get_num_threads(), channels_last=False, bf16=False)
    fit(model, train, val, settings, runtime, generator, CLASSES)
    model.eval()
    images = val.pixels.float() / 255
    scorer = expl.make_scorer(model, batch_size=64)
    accuracy = float((scorer(images).argmax(1) == val.labels.numpy()).mean())
    layer = expl.resolve_layer(model, LAYER)
    return {"model": model, "layer": layer, "images": images, "labels": val.labels.numpy(), "corners": corners,
            "scorer": scorer, "accuracy": accuracy}


def on_square(row: int, col: int, corner: tuple[int, int], margin: int = 2) -> bool:
    top, left = corner
    return top - margin <= row < top + SQUARE + margin and left - margin <= col < left + SQUARE + margin


def test_the_tiny_model_learned_the_task(trained: dict) -> None:
    # Precondition of the tests below: a model that has not learned the rule has nothing to explain.
    assert trained["accuracy"] >= 0.9


def test_gradcam_peak_falls_on_the_square(trained: dict) -> None:
    cams = expl.gradcam_maps(trained["model"], trained["layer"], trained["images"], trained["labels"].tolist(), 8)
    hits = [on_square(*np.unravel_index(cam.argmax(), cam.shape), corner)
            for cam, corner in zip(cams, trained["corners"], strict=True)]
    assert np.mean(hits) >= 0.9, hits
    for cam, (top, left) in zip(cams, trained["corners"], strict=True):
        square = np.zeros(cam.shape, bool)
        square[top : top + SQUARE, left : left + SQUARE] = True
        assert cam[square].mean() > 3 * cam[~square].mean()


def test_heatmaps_have_the_input_shape_and_change_with_the_target_class(trained: dict) -> None:
    images = trained["images"][:4]
    own = expl.gradcam_maps(trained["model"], trained["layer"], images, trained["labels"][:4].tolist(), 4)
    other = expl.gradcam_maps(trained["model"], trained["layer"], images, ((trained["labels"][:4] + 1) % 4).tolist(), 4)
    assert own.shape == other.shape == (4, SIZE, SIZE)
    assert own.min() >= 0 and own.max() <= 1
    for mine, theirs in zip(own, other, strict=True):
        assert np.abs(mine - theirs).max() > 0.25


def test_gradcam_leaves_the_model_as_it_found_it(trained: dict) -> None:
    model = trained["model"]
    flags = [param.requires_grad for param in model.parameters()]
    before = trained["scorer"](trained["images"][:4])
    expl.gradcam_maps(model, trained["layer"], trained["images"][:4], [0, 1, 2, 3], 4)
    assert [param.requires_grad for param in model.parameters()] == flags
    assert all(param.grad is None for param in model.parameters())  # backward started at the layer only
    np.testing.assert_allclose(trained["scorer"](trained["images"][:4]), before, atol=1e-6)


def test_a_target_class_out_of_range_raises_instead_of_dropping_maps(trained: dict) -> None:
    with pytest.raises(IndexError):
        expl.gradcam_maps(trained["model"], trained["layer"], trained["images"][:2], [0, CLASSES], 2)
    assert not trained["layer"]._forward_hooks  # every hook released even so


def test_gradcam_deletion_auc_beats_random(trained: dict) -> None:
    images, targets = trained["images"][:16], trained["labels"][:16].tolist()
    rng = np.random.default_rng(0)
    saliencies = {
        "gradcam": expl.gradcam_maps(trained["model"], trained["layer"], images, targets, 8),
        "random": np.stack([faithful.random_saliency((SIZE, SIZE), 8, rng) for _ in targets]),
    }
    result = faithful.faithfulness_curves(trained["scorer"], images, saliencies, targets, steps=8,
                                          baseline="image_mean", seed=0)
    summary = result.summary()
    assert summary["gradcam"]["deletion_auc"] < summary["random"]["deletion_auc"] - 0.05, summary
    assert summary["gradcam"]["insertion_auc"] > summary["random"]["insertion_auc"], summary
    # Step 0 of deletion is the untouched image.
    np.testing.assert_allclose(result.deletion["gradcam"][:, 0],
                               trained["scorer"](images)[np.arange(16), targets], atol=1e-5)


def test_shap_puts_the_evidence_on_the_square(trained: dict) -> None:
    explainer = expl.ShapExplainer(trained["scorer"], (SIZE, SIZE), max_evals=64, kernel=16, batch_size=64, seed=0)
    inside = []
    for index in range(4):
        values = explainer.explain(trained["images"][index], int(trained["labels"][index]))
        assert values.shape == (SIZE, SIZE)
        top, left = trained["corners"][index]
        mask = np.zeros((SIZE, SIZE), bool)
        mask[top : top + SQUARE, left : left + SQUARE] = True
        # Mean evidence per pixel on the square exceeds the mean elsewhere.
        inside.append(values[mask].mean() > values[~mask].mean())
    assert all(inside)


def test_shap_is_reproducible_and_not_fooled_by_a_recycled_array(trained: dict) -> None:
    explainer = expl.ShapExplainer(trained["scorer"], (SIZE, SIZE), max_evals=64, kernel=16, batch_size=64, seed=0)
    first = explainer.explain(trained["images"][0].clone(), 0)
    explainer.explain(trained["images"][1].clone(), 1)
    np.testing.assert_allclose(explainer.explain(trained["images"][0].clone(), 0), first)


def test_default_target_layers_resolve_for_both_families() -> None:
    layers = real_params()["explain"]["target_layers"]
    assert expl.target_layer_path("resnet50", layers) == "backbone.layer4.-1"
    assert expl.target_layer_path("mobilevitv2_100", layers) == "backbone.stages.-1.-1"
    for name in ("resnet10t", "mobilevitv2_050"):
        model, _ = create_classifier(name, 3, weights="none", image_size=64)
        layer = expl.resolve_layer(model, expl.target_layer_path(name, layers))
        assert layer is (model.backbone.layer4[-1] if name.startswith("resnet") else model.backbone.stages[-1][-1])
        images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        assert expl.gradcam_maps(model.eval(), layer, images, [0, 2], 2).shape == (2, 64, 64)


def test_target_layer_settings_fail_with_a_clear_message() -> None:
    assert expl.target_layer_path("resnet50", {"resnet": "a", "resnet50": "b"}) == "b"  # most specific key wins
    with pytest.raises(expl.ExplainError, match="no Grad-CAM target layer for convnext_tiny"):
        expl.target_layer_path("convnext_tiny", {"resnet": "backbone.layer4.-1"})
    model, _ = create_classifier("resnet10t", 3, weights="none", image_size=32)
    with pytest.raises(expl.ExplainError, match="failed at 'layer9'"):
        expl.resolve_layer(model, "backbone.layer9.-1")


def test_perturbation_series_and_auc_by_hand() -> None:
    image = torch.full((3, 2, 2), 0.8)
    baseline = torch.full((3, 2, 2), 0.2)
    ranks = faithful.pixel_ranks(np.array([[0.9, 0.1], [0.5, 0.7]]), np.random.default_rng(0))
    assert ranks.tolist() == [[0, 3], [2, 1]]
    deletion, insertion = faithful.perturbation_series(image, ranks, 4, baseline)
    # After 1 of 4 steps the top pixel (0, 0) is the baseline in deletion and restored in insertion.
    np.testing.assert_allclose(deletion[1, 0].numpy(), [[0.2, 0.8], [0.8, 0.8]])
    np.testing.assert_allclose(insertion[1, 0].numpy(), [[0.8, 0.2], [0.2, 0.2]])
    # One baseline for both curves: deletion ends where insertion starts.
    assert deletion[0].eq(image).all() and deletion[4].eq(baseline).all()
    assert insertion[0].eq(baseline).all() and insertion[4].eq(image).all()
    assert faithful.auc(np.array([1.0, 0.0, 0.0])) == pytest.approx(0.25)
    assert faithful.auc(np.array([1.0, 1.0, 1.0, 1.0, 1.0])) == pytest.approx(1.0)


def test_ties_are_broken_at_random_not_in_raster_order() -> None:
    ranks = faithful.pixel_ranks(np.zeros((20, 20)), np.random.default_rng(0))
    assert sorted(ranks.ravel().tolist()) == list(range(400))
    assert ranks[:10].mean() == pytest.approx(200, abs=40)  # raster order would give the top rows ranks < 200


def test_local_images_named_then_most_confident_correct_and_wrong() -> None:
    predictions = pd.DataFrame({
        "image": ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"],
        "confidence": [0.9, 0.6, 0.95, 0.8, 0.99, 0.7],
        "correct": [True, True, True, False, False, False],
    })
    manifests = {"test": predictions[["image"]], "val": pd.DataFrame({"image": ["v.jpg"]}),
                 "train": pd.DataFrame({"image": ["t.jpg"]})}
    choices, missing = pick.select_local_images(predictions, ["v.jpg", "c.jpg", "nowhere.jpg", "v.jpg"], manifests,
                                              n_correct=2, n_wrong=2)
    assert [(c.image, c.kind, c.split) for c in choices] == [
        ("v.jpg", "named", "val"), ("c.jpg", "named", "test"),
        ("a.jpg", "correct", "test"), ("b.jpg", "correct", "test"),
        ("e.jpg", "wrong", "test"), ("d.jpg", "wrong", "test"),
    ]
    assert missing == ["nowhere.jpg"]


def test_class_means_and_heat_statistics() -> None:
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0, 0, 0], maps[1, 0, 0], maps[2, 3, 3] = 1.0, 0.5, 1.0
    means = heat.class_mean_maps(maps, np.array([0, 0, 2]), 3)
    assert sorted(means) == [0, 2] and means[0][0, 0] == pytest.approx(0.75)
    assert heat.heat_centre(maps[2]) == (1.0, 1.0)
    assert heat.heat_centre(np.ones((5, 5))) == (0.5, 0.5)
    assert heat.top_share(np.ones((10, 10))) == pytest.approx(0.2)
    assert heat.top_share(maps[0]) == pytest.approx(1.0)


def test_figures_are_valid_pngs(tmp_path, trained: dict) -> None:
    images, labels = trained["images"][:4], trained["labels"][:4]
    cams = expl.gradcam_maps(trained["model"], trained["layer"], images, labels.tolist(), 4)
    shap_values = np.random.default_rng(0).normal(size=(4, SIZE, SIZE)).astype(np.float32)
    draw.plot_local(images[0], shap_values[0], cams[0], "true: 0 | predicted: 0 (p = 0.99)", tmp_path / "local.png")
    draw.plot_class_means(heat.class_mean_maps(cams, labels, CLASSES), {0: 1, 1: 1, 2: 1, 3: 1}, list("abcd"), "means",
                        tmp_path / "means.png")
    draw.plot_shap_summary(images, shap_values, ["a", "b", "c", "d"], np.abs(shap_values).mean(0), "shap",
                         tmp_path / "shap.png")
    curves = {"gradcam": np.linspace(1, 0, 5)[None].repeat(2, 0), "random": np.ones((2, 5))}
    draw.plot_faithfulness(faithful.Faithfulness(curves, curves), "faith", tmp_path / "faith.png")
    for name in ("local.png", "means.png", "shap.png", "faith.png"):
        path = tmp_path / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as picture:
            picture.verify()
            assert picture.size[0] > 300 and picture.size[1] > 200
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_the_faithfulness_baseline_does_not_depend_on_the_shap_blur() -> None:
    """Deletion and insertion share one baseline fixed by explain.faithfulness, never by SHAP's masker."""
    from conftest import tiny_params

    from catalog_classifier.config.params import parse_params

    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []

    def scorer(batch: torch.Tensor) -> np.ndarray:
        seen.append(batch.clone())
        return np.full((len(batch), 2), 0.5, np.float32)

    recorded = []
    for blur_fraction in (0.1, 0.9):
        raw = tiny_params()
        raw["explain"]["shap"]["blur_fraction"] = blur_fraction
        settings = parse_params(raw).explain.faithfulness
        assert settings.baseline == "image_mean"
        seen.clear()
        saliencies = {"gradcam": np.random.default_rng(1).random((3, 8, 8)).astype(np.float32)}
        faithful.faithfulness_curves(scorer, images, saliencies, [0, 1, 0], 4, settings.baseline, 0)
        recorded.append(torch.stack([batch[[4, 5]] for batch in seen]))  # deletion's last, insertion's first
    assert torch.equal(recorded[0], recorded[1])
    mean_colour = images.mean((2, 3), keepdim=True).expand_as(images)
    for index, frames in enumerate(recorded[0]):
        torch.testing.assert_close(frames[0], mean_colour[index])
        torch.testing.assert_close(frames[1], mean_colour[index])
    assert faithful.perturbation_baseline(images, "grey").eq(0.5).all()


def test_better_than_random_only_when_the_bootstrap_interval_excludes_zero() -> None:
    rng = np.random.default_rng(0)
    random_auc = rng.uniform(0.3, 0.6, 30)
    noise = rng.normal(0, 0.05, 30)
    cases = {"clear win": random_auc - 0.15 + noise * 0.1, "tie within noise": random_auc + noise,
             "loss": random_auc + 0.15 + noise * 0.1}
    decisions = {}
    for name, method_auc in cases.items():
        result = faithful.paired_bootstrap(method_auc, random_auc, n_resamples=2000, seed=7)
        assert result["ci95_low"] <= result["mean_diff"] <= result["ci95_high"]
        assert result["mean_diff"] == pytest.approx(float((method_auc - random_auc).mean()), abs=1e-4)
        decisions[name] = (faithful.better_than_random(result, "deletion"),
                           faithful.better_than_random(result, "insertion"))
    # Deletion: lower is better (the interval must lie below 0); insertion: higher is better (above 0).
    assert decisions == {"clear win": (True, False), "tie within noise": (False, False), "loss": (False, True)}
    tie = faithful.paired_bootstrap(cases["tie within noise"], random_auc, n_resamples=2000, seed=7)
    # Its insertion mean is above random's, yet the interval straddles 0: a better mean alone is not enough.
    assert tie["ci95_low"] < 0 < tie["ci95_high"] and tie["mean_diff"] > 0
    assert faithful.paired_bootstrap(cases["tie within noise"], random_auc, n_resamples=2000, seed=7) == tie  # seeded
