"""Explaining one trained model end to end: which images, Grad-CAM and SHAP maps, class means, faithfulness.

The explainers, statistics, image choice and figures are in the sibling modules (``explainers``,
``faithfulness``, ``heatmap_summary``, ``image_choice``, ``drawing``); this module runs them on a
model's test split in the order the explain stage needs, and returns what it found.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from catalog_classifier.config.layout import Project
from catalog_classifier.config.params import ExplainParams
from catalog_classifier.data.imageset import decode_manifest, to_float
from catalog_classifier.data.manifests import read_manifest
from catalog_classifier.explanations import drawing as draw
from catalog_classifier.explanations import explainers as expl
from catalog_classifier.explanations import faithfulness as faithful
from catalog_classifier.explanations import heatmap_summary as heat
from catalog_classifier.explanations import image_choice as pick
from catalog_classifier.modeling.models import load_classifier
from catalog_classifier.modeling.torch_setup import Runtime, resolve_runtime, seed_everything

log = logging.getLogger(__name__)

# Where images named in params are looked up: the test split first (never seen in training), then val, train.
LOOKUP_ORDER = ("test", "val", "train")


@dataclass
class _Explainers:
    """One model with everything needed to explain it; ``shap_cache`` avoids explaining an image twice."""

    model: torch.nn.Module
    layer: torch.nn.Module
    layer_path: str
    runtime: Runtime
    settings: ExplainParams
    classes: list[str]
    size: tuple[int, int]
    kernel: int
    scorer: expl.Scorer
    shap: expl.ShapExplainer
    shap_cache: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)

    def gradcam(self, pixels: torch.Tensor, targets: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return expl.gradcam_with_probabilities(self.model, self.layer, pixels, targets, self.settings.batch_size,
                                             self.runtime.channels_last)

    def shap_values(self, name: str, pixels: torch.Tensor, target: int) -> np.ndarray:
        key = (name, target)
        if key not in self.shap_cache:
            self.shap_cache[key] = self.shap.explain(pixels, target)
        return self.shap_cache[key]


def _load_explainers(project: Project, model_name: str) -> _Explainers:
    params = project.params
    settings = params.explain
    # Grad-CAM always runs in float32; settings.bf16 only concerns the forward-only scoring (SHAP, curves).
    runtime = resolve_runtime(params.train.channels_last, settings.bf16, params.train.num_threads)
    model, config = load_classifier(project.weights(model_name))
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    layer_path = expl.target_layer_path(model_name, settings.target_layers)
    layer = expl.resolve_layer(model, layer_path)
    size = (int(config["input_size"][0]), int(config["input_size"][1]))
    kernel = expl.blur_kernel(size, settings.shap.blur_fraction)
    scorer = expl.make_scorer(model, settings.batch_size, runtime.channels_last, runtime.bf16)
    shap = expl.ShapExplainer(scorer, size, settings.shap.max_evals, kernel, settings.batch_size, settings.seed)
    return _Explainers(model, layer, layer_path, runtime, settings, list(params.data.classes), size, kernel, scorer,
                       shap)


def _decode_outside_test(project: Project, choices: list[pick.LocalChoice], manifests: dict[str, pd.DataFrame],
                         data_config: Any) -> dict[str, tuple[torch.Tensor, int]]:
    """Pixels (float) and true label of the named images that are not in the test split."""
    images_dir = project.path(project.params.data.images_dir)
    found: dict[str, tuple[torch.Tensor, int]] = {}
    for split in LOOKUP_ORDER[1:]:
        names = [choice.image for choice in choices if choice.split == split]
        if names:
            decoded = decode_manifest(manifests[split][manifests[split]["image"].isin(names)], images_dir,
                                      data_config)
            pixels = to_float(decoded.pixels, channels_last=False)
            for index, name in enumerate(decoded.names):
                found[name] = (pixels[index], int(decoded.labels[index]))
    return found


def _local_title(choice: pick.LocalChoice, true_label: str, predicted: str, probability: float) -> str:
    where = "" if choice.split == "test" else f" [{choice.split} image]"
    return (f"{choice.image}{where} ({choice.kind})\ntrue: {true_label} | predicted: {predicted} "
            f"(p = {probability:.2f})")


def _explain_local(explainers: _Explainers, choices: list[pick.LocalChoice],
                   images: dict[str, tuple[torch.Tensor, int]], out_dir: Path) -> list[dict[str, Any]]:
    """One figure per chosen image, both maps explaining its predicted class."""
    classes, records = explainers.classes, []
    for number, choice in enumerate(choices, start=1):
        pixels, label = images[choice.image]
        probabilities = explainers.scorer(pixels[None])[0]
        predicted = int(probabilities.argmax())
        cam = explainers.gradcam(pixels[None], [predicted])[0][0]
        shap_values = explainers.shap_values(choice.image, pixels, predicted)
        figure = out_dir / "figures" / "local" / f"{number:02d}_{choice.kind}_{Path(choice.image).stem}.png"
        title = _local_title(choice, classes[label], classes[predicted], float(probabilities[predicted]))
        draw.plot_local(pixels, shap_values, cam, title, figure)
        records.append({
            "image": choice.image, "kind": choice.kind, "split": choice.split, "true": classes[label],
            "predicted": classes[predicted], "probability": round(float(probabilities[predicted]), 4),
            "figure": figure.relative_to(out_dir).as_posix(),
            "gradcam_centre": heat.heat_centre(cam), "gradcam_top20_share": heat.top_share(cam),
            "shap_positive_sum": round(float(shap_values[shap_values > 0].sum()), 4),
        })
    return records


def _metrics(model_name: str, faith: dict[str, dict[str, float]], versus: dict[str, dict[str, dict[str, Any]]],
             n_images: int, settings: ExplainParams) -> dict[str, Any]:
    """``<method>_beats_random`` is decided by the bootstrap interval (``<method>_vs_random``), not by the means."""
    decisions = {f"{method}_beats_random": {kind: bool(result["better"]) for kind, result in kinds.items()}
                 for method, kinds in versus.items()}
    return {"model": model_name, "n_images": n_images, "steps": settings.faithfulness.steps, **faith,
            "baseline": settings.faithfulness.baseline, **decisions,
            **{f"{method}_vs_random": kinds for method, kinds in versus.items()}}


def explain_model(project: Project, model_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Explain one trained model: local figures, class means, SHAP summary, faithfulness; (summary, metrics).

    Figures are written under the model's explain folder (stale ones removed first); the caller writes the rest.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    params, settings = project.params, project.params.explain
    seed_everything(settings.seed)
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    explainers = _load_explainers(project, model_name)
    classes, out_dir = explainers.classes, project.explain_dir(model_name)
    manifests = {split: read_manifest(project, split) for split in LOOKUP_ORDER}
    test = decode_manifest(manifests["test"], project.path(params.data.images_dir), explainers.model.data_config)
    test_pixels, test_labels = to_float(test.pixels, channels_last=False), test.labels.numpy()
    predictions = pd.read_csv(project.eval_predictions(model_name), dtype={"image": str})
    choices, missing = pick.select_local_images(predictions, settings.images, manifests, settings.n_correct,
                                              settings.n_wrong)
    if missing:
        log.warning("explain.images not found in any split (skipped): %s", ", ".join(missing))
    shutil.rmtree(out_dir / "figures", ignore_errors=True)  # no figure of an image no longer chosen survives
    timings["setup_s"] = time.perf_counter() - tick

    # Class-level view: Grad-CAM of every test image for its true class (same pass gives fp32 predictions).
    tick = time.perf_counter()
    true_cams, test_probabilities = explainers.gradcam(test_pixels, test_labels.tolist())
    test_predicted = test_probabilities.argmax(1)
    timings["gradcam_test_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    local_images = {name: (test_pixels[i], int(test_labels[i])) for i, name in enumerate(test.names)}
    local_images.update(_decode_outside_test(project, choices, manifests, explainers.model.data_config))
    local = _explain_local(explainers, choices, local_images, out_dir)
    timings["local_s"] = time.perf_counter() - tick

    # Faithfulness on a seeded test sample, for its predicted classes; its SHAP maps are the SHAP summary.
    tick = time.perf_counter()
    sample = pick.sample_indices(len(test), settings.faithfulness.n_images, settings.seed)
    targets = [int(test_predicted[i]) for i in sample]
    sample_shap = np.stack([explainers.shap_values(test.names[i], test_pixels[i], target)
                            for i, target in zip(sample, targets, strict=True)])
    timings["shap_sample_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    saliencies = {
        "gradcam": explainers.gradcam(test_pixels[sample], targets)[0],
        "shap": sample_shap,
        "random": np.stack([faithful.random_saliency(explainers.size, settings.faithfulness.random_grid, rng)
                            for _ in sample]),
    }
    faithfulness = faithful.faithfulness_curves(explainers.scorer, test_pixels[sample], saliencies, targets,
                                          settings.faithfulness.steps, settings.faithfulness.baseline,
                                          settings.seed)
    timings["faithfulness_curves_s"] = time.perf_counter() - tick

    counts = {k: int((test_labels == k).sum()) for k in range(len(classes))}
    means = heat.class_mean_maps(true_cams, test_labels, len(classes))
    draw.plot_class_means(means, counts, classes, f"{model_name}: mean Grad-CAM per class (test images, true class)",
                        out_dir / "figures" / "gradcam_class_means.png")
    mean_abs_shap = np.abs(sample_shap).mean(0)
    draw.plot_shap_summary(test_pixels[sample], sample_shap,
                         [f"true {classes[test_labels[i]]}\npred {classes[t]}" for i, t in zip(sample, targets,
                                                                                               strict=True)],
                         mean_abs_shap, f"{model_name}: SHAP of the predicted class, test sample",
                         out_dir / "figures" / "shap_summary.png")
    draw.plot_faithfulness(faithfulness, f"{model_name}: faithfulness on {len(sample)} test images",
                         out_dir / "figures" / "faithfulness.png")

    faith = faithfulness.summary()
    versus = faithfulness.versus_random(settings.faithfulness.bootstrap_resamples, settings.seed)
    metrics = _metrics(model_name, faith, versus, int(len(sample)), settings)
    metrics["explain_time_s"] = round(time.perf_counter() - started, 2)
    metrics["explain_cpu_time_s"] = round(time.process_time() - cpu_started, 2)
    summary = {
        "model": model_name,
        "gradcam": {"target_layer": explainers.layer_path,
                    "target": "predicted class (local, faithfulness); true class (class means)"},
        "shap": {"explainer": "Partition", "masker": f"blur({explainers.kernel},{explainers.kernel})",
                 "max_evals": settings.shap.max_evals, "output": "probability of the predicted class"},
        "input_size": list(explainers.size),
        "threads": explainers.runtime.threads,
        "bf16_scoring": explainers.runtime.bf16,
        "local": local,
        "named_missing": missing,
        "class_means": {classes[k]: {"n": counts[k], "centre": heat.heat_centre(m), "top20_share": heat.top_share(m)}
                        for k, m in means.items()},
        "shap_sample": {"n": int(len(sample)), "images": [test.names[i] for i in sample],
                        "mean_abs_centre": heat.heat_centre(mean_abs_shap)},
        "faithfulness_mean_curves": faithfulness.mean_curves(),
        "faithfulness": {"baseline": settings.faithfulness.baseline,
                         "bootstrap": {"resamples": settings.faithfulness.bootstrap_resamples, "seed": settings.seed,
                                       "interval": "95% percentile, paired over images, AUC(method) - AUC(random)"},
                         "versus_random": versus},
        "test_accuracy_fp32": round(float((test_predicted == test_labels).mean()), 4),
        "timings_s": {key: round(value, 2) for key, value in timings.items()},
    }
    return summary, metrics
