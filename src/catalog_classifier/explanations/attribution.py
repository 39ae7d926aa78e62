"""Explanations of single predictions and of a model as a whole: Grad-CAM, SHAP, and how faithful each is.

Grad-CAM (grad-cam package) gives a smooth heatmap from the last feature map of the backbone; SHAP (Partition
explainer, image blur masker) gives patch-level Owen values of the predicted probability. Which one points at
what the model really uses is measured, not argued: deletion and insertion curves (Petsiuk et al., RISE, 2018)
remove or restore pixels in the order a heatmap ranks them and follow the probability of the explained class;
both start from one baseline image set by params, independent of either explainer, and a method counts as
better than random only when a paired bootstrap interval of its AUC difference excludes 0.

Everything here takes float RGB in [0, 1] (N, 3, H, W) as the :class:`~catalog_classifier.modeling.models.Classifier`
does and never reads params: the stage passes every setting in. Grad-CAM always runs in float32 (gradients);
forward-only scoring may run under bf16 autocast (see :func:`make_scorer`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from catalog_classifier.config.params import ParamsError

log = logging.getLogger(__name__)

METHODS = ("gradcam", "shap", "random")
Scorer = Callable[[torch.Tensor], np.ndarray]


class ExplainError(ParamsError):
    """explain.target_layers does not fit the model (no key for its family, a path that does not resolve)."""


# --------------------------------------------------------------------------------------------- target layers


def target_layer_path(model_name: str, target_layers: dict[str, str]) -> str:
    """The layer path configured for the model's family: the longest key that prefixes the timm name wins.

    ``{"resnet": "backbone.layer4.-1"}`` covers resnet10t and resnet50 alike; a more specific key
    (``resnet50``) can override the family default.
    """
    matches = [prefix for prefix in target_layers if model_name.startswith(prefix)]
    if not matches:
        raise ExplainError(
            f"no Grad-CAM target layer for {model_name}: add a key prefixing it to explain.target_layers "
            f"(known prefixes: {', '.join(sorted(target_layers)) or 'none'})"
        )
    return target_layers[max(matches, key=len)]


def resolve_layer(model: nn.Module, path: str) -> nn.Module:
    """``backbone.layer4.-1`` -> ``model.backbone.layer4[-1]`` (integers index sequential containers)."""
    node: Any = model
    for part in path.split("."):
        try:
            node = node[int(part)] if part.lstrip("-").isdigit() else getattr(node, part)
        except (AttributeError, IndexError, TypeError):
            raise ExplainError(f"Grad-CAM target layer {path!r} does not exist in {type(model).__name__} "
                               f"(failed at {part!r})") from None
    if not isinstance(node, nn.Module):
        raise ExplainError(f"Grad-CAM target layer {path!r} is not a module")
    return node


@contextlib.contextmanager
def gradients_from(layer: nn.Module, model: nn.Module) -> Iterator[None]:
    """Make backward start at ``layer``'s output only: every parameter frozen, the layer output a grad leaf.

    Grad-CAM needs d(score)/d(activation) of one layer, nothing upstream; freezing the parameters and
    marking the layer output as requiring grad makes backward cost the head alone instead of a full
    backward pass (3-4x a forward on these CPUs). Parameters get their previous flags back afterwards.
    """
    flags = [(param, param.requires_grad) for param in model.parameters()]
    for param, _ in flags:
        param.requires_grad_(False)

    def _leaf(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return output if output.requires_grad else output.detach().requires_grad_(True)

    handle = layer.register_forward_hook(_leaf)  # registered before grad-cam's hooks, so it runs first
    try:
        with torch.enable_grad():
            yield
    finally:
        handle.remove()
        for param, flag in flags:
            param.requires_grad_(flag)


# --------------------------------------------------------------------------------------------- scoring


def make_scorer(model: nn.Module, batch_size: int, channels_last: bool = False, bf16: bool = False) -> Scorer:
    """Softmax probabilities (N, classes) for float images (N, 3, H, W), in batches, no grad.

    Only forward passes go through here (SHAP, deletion/insertion curves): they are the bulk of the cost,
    and ``bf16`` runs them under the same bf16 autocast the evaluate stage scores with.
    """

    @torch.inference_mode()
    def score(images: torch.Tensor) -> np.ndarray:
        model.eval()
        outputs = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].float()
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(batch)
            outputs.append(torch.softmax(logits.float(), 1))
        return torch.cat(outputs).numpy() if outputs else np.zeros((0, 0), dtype=np.float32)

    return score


# --------------------------------------------------------------------------------------------- Grad-CAM


def gradcam_with_probabilities(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: Sequence[int], batch_size: int,
    channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heatmaps (N, H, W) in [0, 1] at the input resolution for each image's target class, and the
    softmax probabilities (N, classes) of the same float32 forward pass (no second pass needed for them)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    maps, probabilities = [], []
    with gradients_from(layer, model):
        # Not GradCAM's own `with` block: its __exit__ swallows IndexError (a target class out of range), which
        # would return fewer maps than images without a word.
        cam = GradCAM(model=model, target_layers=[layer])
        try:
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size].float()
                if channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                batch_targets = [ClassifierOutputTarget(int(t)) for t in targets[start : start + batch_size]]
                maps.append(cam(input_tensor=batch, targets=batch_targets))
                probabilities.append(torch.softmax(cam.outputs.detach().float(), 1).numpy())
        finally:
            cam.activations_and_grads.release()
    if not maps:
        return np.zeros((0, *images.shape[-2:]), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(maps).astype(np.float32), np.concatenate(probabilities)


def gradcam_maps(
    model: nn.Module, layer: nn.Module, images: torch.Tensor, targets: Sequence[int], batch_size: int,
    channels_last: bool = False,
) -> np.ndarray:
    """Grad-CAM heatmaps (N, H, W) in [0, 1] at the input resolution, one per image for its target class."""
    return gradcam_with_probabilities(model, layer, images, targets, batch_size, channels_last)[0]


# --------------------------------------------------------------------------------------------- SHAP


def blur_kernel(image_size: tuple[int, int], fraction: float) -> int:
    """Box-blur side SHAP's masker uses to hide a region (SHAP only: the faithfulness baseline is separate)."""
    return max(3, round(min(image_size) * fraction))


def blur(images: torch.Tensor, kernel: int) -> torch.Tensor:
    """The box blur SHAP's image masker uses (cv2.blur), applied per image."""
    import cv2

    hwc = images.permute(0, 2, 3, 1).numpy()
    blurred = np.stack([cv2.blur(np.ascontiguousarray(image), (kernel, kernel)) for image in hwc])
    return torch.from_numpy(blurred).permute(0, 3, 1, 2).contiguous()


@dataclass
class ShapExplainer:
    """SHAP Partition explainer over one image shape, built once (the partition tree is the slow part).

    Partition with a blur masker rather than GradientExplainer: it needs no gradients and no background
    set, treats the model as a black box (so both architectures are explained by the same procedure), its
    cost is exactly ``max_evals`` forward passes per image, and its hierarchical patches give the study's
    patch-level pictures. GradientExplainer (expected gradients) would give pixel-noise maps that depend on
    a background sample. DeepExplainer breaks on these models' SiLU/GroupNorm/in-place ReLU.
    """

    scorer: Scorer
    image_shape: tuple[int, int]  # (H, W)
    max_evals: int
    kernel: int
    batch_size: int
    seed: int

    def __post_init__(self) -> None:
        import shap

        height, width = self.image_shape
        self._masker = shap.maskers.Image(f"blur({self.kernel},{self.kernel})", (height, width, 3))
        self._explainer = shap.PartitionExplainer(self._predict, self._masker)

    def _predict(self, hwc: np.ndarray) -> np.ndarray:
        images = torch.from_numpy(np.ascontiguousarray(hwc, dtype=np.float32)).permute(0, 3, 1, 2)
        return self.scorer(images)

    def explain(self, image: torch.Tensor, target: int) -> np.ndarray:
        """Signed SHAP values (H, W) of P(target) for one image (3, H, W), summed over colour channels."""
        hwc = image.permute(1, 2, 0).numpy().astype(np.float32)[None]
        # The masker caches the blurred image by id(); a new array may reuse a freed one's id.
        self._masker.last_xid = None
        np.random.seed(self.seed)  # Partition breaks priority ties with np.random
        result = self._explainer(hwc, max_evals=self.max_evals, batch_size=self.batch_size,
                                 outputs=np.array([target]), silent=True)
        return np.asarray(result.values[0, ..., 0], dtype=np.float32).sum(-1)


# --------------------------------------------------------------------------------------------- faithfulness


def random_saliency(shape: tuple[int, int], grid: int, rng: np.random.Generator) -> np.ndarray:
    """A random but smooth heatmap (uniform grid upsampled bilinearly): the baseline a method must beat.

    Random *regions*, not random pixels: deleting scattered pixels destroys an image far faster than
    deleting the same area in blobs, which would make a pixel-random baseline unfairly hard to beat.
    """
    import cv2

    coarse = rng.random((grid, grid)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def pixel_ranks(saliency: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of every pixel, 0 = most salient; ties (SHAP patches) broken at random, not in raster order."""
    flat = saliency.ravel()
    order = np.lexsort((rng.random(flat.size), -flat))
    ranks = np.empty(flat.size, dtype=np.int64)
    ranks[order] = np.arange(flat.size)
    return ranks.reshape(saliency.shape)


BASELINES = ("image_mean", "grey")


def perturbation_baseline(images: torch.Tensor, kind: str) -> torch.Tensor:
    """What a removed pixel becomes (deletion) and what insertion starts from: one image per input image.

    Fixed by ``explain.faithfulness.baseline`` alone, never by either explainer: a blurred copy would be SHAP's
    own masker (SHAP's maps are optimised against exactly that filler) and black is far outside the training
    images. ``image_mean``: each image's mean colour; ``grey``: 0.5 everywhere.
    """
    if kind == "image_mean":
        return images.mean((2, 3), keepdim=True).expand_as(images).clone()
    if kind == "grey":
        return torch.full_like(images, 0.5)
    raise ValueError(f"unknown faithfulness baseline {kind!r}; one of {', '.join(BASELINES)}")


def perturbation_series(
    image: torch.Tensor, ranks: np.ndarray, steps: int, baseline: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion series, each (steps + 1, 3, H, W).

    Deletion: the top k/steps of pixels replaced by the baseline; insertion: the top pixels pasted onto the
    baseline (RISE). The same baseline for both, so deletion ends where insertion starts.
    """
    total = ranks.size
    counts = np.round(np.linspace(0, total, steps + 1)).astype(np.int64)
    shown = torch.from_numpy(ranks[None] < counts[:, None, None]).unsqueeze(1)  # (S, 1, H, W): revealed first k
    deletion = torch.where(shown, baseline.unsqueeze(0), image.unsqueeze(0))
    insertion = torch.where(shown, image.unsqueeze(0), baseline.unsqueeze(0))
    return deletion, insertion


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at equal fractions of pixels from 0 to 1."""
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


@dataclass(frozen=True)
class Faithfulness:
    """Per-method curves (n_images, steps + 1) of P(target) while deleting / inserting pixels."""

    deletion: dict[str, np.ndarray]
    insertion: dict[str, np.ndarray]

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean AUC per method (deletion: lower is better; insertion: higher is better) and its std error."""
        out: dict[str, dict[str, float]] = {}
        for method in self.deletion:
            deletion = np.array([auc(curve) for curve in self.deletion[method]])
            insertion = np.array([auc(curve) for curve in self.insertion[method]])
            n = len(deletion)
            out[method] = {
                "deletion_auc": round(float(deletion.mean()), 4),
                "insertion_auc": round(float(insertion.mean()), 4),
                "deletion_auc_se": round(float(deletion.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0, 4),
                "insertion_auc_se": round(float(insertion.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0, 4),
            }
        return out

    def aucs(self, method: str, kind: str) -> np.ndarray:
        """Per-image AUCs of one method's deletion or insertion curves (the pairs the bootstrap resamples)."""
        return np.array([auc(curve) for curve in getattr(self, kind)[method]])

    def versus_random(self, n_resamples: int, seed: int) -> dict[str, dict[str, dict[str, Any]]]:
        """Per method and curve kind: paired bootstrap of the AUC difference (method - random) and the decision."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for method in self.deletion:
            if method == "random":
                continue
            out[method] = {}
            for kind in ("deletion", "insertion"):
                result = paired_bootstrap(self.aucs(method, kind), self.aucs("random", kind), n_resamples, seed)
                out[method][kind] = {**result, "better": better_than_random(result, kind)}
        return out

    def mean_curves(self) -> dict[str, dict[str, list[float]]]:
        """Mean curve per method (its trapezoid AUC equals the mean AUC: the rule is linear)."""
        return {method: {kind: [round(float(v), 4) for v in getattr(self, kind)[method].mean(0)]
                         for kind in ("deletion", "insertion")} for method in self.deletion}


def paired_bootstrap(method_aucs: np.ndarray, random_aucs: np.ndarray, n_resamples: int,
                     seed: int) -> dict[str, float]:
    """Mean AUC difference (method - random) over images and its 95 % percentile interval.

    Paired: both curves of one image are resampled together, so image difficulty (the bulk of the variance)
    cancels out of the difference instead of drowning it.
    """
    differences = np.asarray(method_aucs, dtype=np.float64) - np.asarray(random_aucs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(differences), size=(n_resamples, len(differences)))
    means = differences[picks].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean_diff": round(float(differences.mean()), 4), "ci95_low": round(float(low), 4),
            "ci95_high": round(float(high), 4), "n_resamples": n_resamples}


def better_than_random(result: dict[str, float], kind: str) -> bool:
    """Better only when the whole interval lies on the good side of 0 (deletion: below, insertion: above)."""
    return result["ci95_high"] < 0 if kind == "deletion" else result["ci95_low"] > 0


def faithfulness_curves(
    scorer: Scorer,
    images: torch.Tensor,
    saliencies: dict[str, np.ndarray],
    targets: Sequence[int],
    steps: int,
    baseline: str,
    seed: int,
) -> Faithfulness:
    """Deletion and insertion curves of every method's heatmaps (``saliencies[method]`` is (N, H, W)).

    ``baseline`` (see :func:`perturbation_baseline`) is the one filler of both curves for every method.
    """
    rng = np.random.default_rng(seed)
    fillers = perturbation_baseline(images, baseline)
    deletion = {method: np.zeros((len(images), steps + 1), np.float32) for method in saliencies}
    insertion = {method: np.zeros((len(images), steps + 1), np.float32) for method in saliencies}
    for index, target in enumerate(targets):
        series = []
        for method in saliencies:
            series.extend(perturbation_series(images[index], pixel_ranks(saliencies[method][index], rng),
                                              steps, fillers[index]))
        probabilities = scorer(torch.cat(series))[:, int(target)].reshape(len(saliencies), 2, steps + 1)
        for position, method in enumerate(saliencies):
            deletion[method][index] = probabilities[position, 0]
            insertion[method][index] = probabilities[position, 1]
    return Faithfulness(deletion, insertion)


# --------------------------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class LocalChoice:
    """One image to explain on its own: why it was chosen, and where it comes from."""

    image: str
    kind: str  # named | correct | wrong
    split: str


def select_local_images(
    predictions: pd.DataFrame, named: Sequence[str], manifests: dict[str, pd.DataFrame], n_correct: int,
    n_wrong: int,
) -> tuple[list[LocalChoice], list[str]]:
    """Named images (looked up in test, then val, then train), then the most confident correct and wrong
    test predictions not already chosen. Returns the choices and the named images found nowhere."""
    choices: list[LocalChoice] = []
    missing: list[str] = []
    for name in dict.fromkeys(named):
        split = next((split for split, frame in manifests.items() if name in set(frame["image"])), None)
        if split is None:
            missing.append(name)
        else:
            choices.append(LocalChoice(name, "named", split))
    taken = {choice.image for choice in choices}
    ranked = predictions.sort_values(["confidence", "image"], ascending=[False, True])
    for kind, correct, count in (("correct", True, n_correct), ("wrong", False, n_wrong)):
        rows = ranked[(ranked["correct"].astype(bool) == correct) & ~ranked["image"].isin(taken)].head(count)
        choices.extend(LocalChoice(name, kind, "test") for name in rows["image"])
        taken.update(rows["image"])
    return choices, missing


def sample_indices(count: int, size: int, seed: int) -> np.ndarray:
    """A seeded sample of ``size`` positions out of ``count`` (all of them when fewer), in ascending order."""
    if size >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))


def class_mean_maps(maps: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[int, np.ndarray]:
    """Mean heatmap per class over the images of that class (classes without images are left out)."""
    return {k: maps[labels == k].mean(0) for k in range(num_classes) if (labels == k).any()}


def heat_centre(heatmap: np.ndarray) -> tuple[float, float]:
    """Centre of mass of a heatmap as (row, column) fractions of the image: 0.5, 0.5 is the centre."""
    total = float(heatmap.sum())
    if total <= 0:
        return 0.5, 0.5
    rows, cols = np.indices(heatmap.shape)
    return (round(float((rows * heatmap).sum() / total / max(heatmap.shape[0] - 1, 1)), 4),
            round(float((cols * heatmap).sum() / total / max(heatmap.shape[1] - 1, 1)), 4))


def top_share(heatmap: np.ndarray, fraction: float = 0.2) -> float:
    """Share of the total heat held by the hottest ``fraction`` of pixels: 0.2 = uniform, 1 = a point."""
    flat = np.sort(np.clip(heatmap.ravel(), 0, None))[::-1]
    total = float(flat.sum())
    return round(float(flat[: max(1, round(fraction * flat.size))].sum() / total), 4) if total > 0 else 0.0


# --------------------------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> None:
    from catalog_classifier.ops.io import atomic_path

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    _pyplot().close(figure)


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).clamp(0, 1).numpy()


def _draw_shap(axes: Any, image: np.ndarray, values: np.ndarray, limit: float | None = None) -> Any:
    """SHAP's own look: the photo in grey, positive evidence red, negative blue (symmetric scale)."""
    from shap.plots.colors import red_transparent_blue

    limit = limit or float(np.abs(values).max()) or 1.0
    axes.imshow(image.mean(-1), cmap="gray", alpha=0.3)
    return axes.imshow(values, cmap=red_transparent_blue, vmin=-limit, vmax=limit)


def _draw_cam(axes: Any, image: np.ndarray, cam: np.ndarray) -> Any:
    axes.imshow(image)
    return axes.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)


def plot_local(image: torch.Tensor, shap_values: np.ndarray, cam: np.ndarray, title: str, path: Path) -> None:
    """One figure per image: original | SHAP | Grad-CAM, titled with true class, prediction and probability."""
    plt = _pyplot()
    picture = _hwc(image)
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    axes[0].imshow(picture)
    axes[0].set_title("original")
    shown = _draw_shap(axes[1], picture, shap_values)
    figure.colorbar(shown, ax=axes[1], fraction=0.046, label="SHAP value (probability)")
    axes[1].set_title("SHAP (Partition, blur masker)")
    shown = _draw_cam(axes[2], picture, cam)
    figure.colorbar(shown, ax=axes[2], fraction=0.046)
    axes[2].set_title("Grad-CAM")
    for ax in axes:
        ax.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, path)


def plot_class_means(means: dict[int, np.ndarray], counts: dict[int, int], classes: list[str], title: str,
                     path: Path) -> None:
    """Mean Grad-CAM heatmap per class: where the model looks, on average, to recognise each class."""
    plt = _pyplot()
    columns = min(4, len(classes))
    rows = -(-len(classes) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for index, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if index >= len(classes):
            continue
        if index in means:
            ax.imshow(means[index], cmap="jet", vmin=0, vmax=1)
        ax.set_title(f"{classes[index]}\n(n={counts.get(index, 0)})", fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, path)


def plot_shap_summary(images: torch.Tensor, values: np.ndarray, captions: list[str], mean_abs: np.ndarray,
                      title: str, path: Path, max_rows: int = 8) -> None:
    """SHAP over a sample: image / SHAP pairs (shared colour scale) and the mean |SHAP| map of the sample."""
    plt = _pyplot()
    shown = min(max_rows, len(images))
    columns = 4  # two image/SHAP pairs per row
    rows = -(-shown // 2) + 1
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.1 * rows), squeeze=False)
    limit = (float(np.percentile(np.abs(values[:shown]), 99.5)) if shown else 0.0) or 1.0
    for ax in axes.ravel():
        ax.axis("off")
    for index in range(shown):
        row, col = divmod(index, 2)
        picture = _hwc(images[index])
        axes[row, 2 * col].imshow(picture)
        axes[row, 2 * col].set_title(captions[index], fontsize=8)
        _draw_shap(axes[row, 2 * col + 1], picture, values[index], limit)
    last = axes[rows - 1, 0]
    last.imshow(mean_abs, cmap="magma")
    last.set_title(f"mean |SHAP|, {len(values)} images", fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, path)


def plot_faithfulness(result: Faithfulness, title: str, path: Path) -> None:
    """Mean deletion and insertion curves per method, AUC in the legend."""
    plt = _pyplot()
    summary = result.summary()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kind in zip(axes, ("deletion", "insertion"), strict=True):
        curves = getattr(result, kind)
        for method, values in curves.items():
            x = np.linspace(0, 1, values.shape[1])
            ax.plot(x, values.mean(0), marker="o", label=f"{method} (AUC {summary[method][f'{kind}_auc']:.3f})")
        better = "lower" if kind == "deletion" else "higher"
        ax.set(xlabel=f"fraction of pixels {'removed' if kind == 'deletion' else 'restored'}",
               ylabel="P(explained class)", title=f"{kind} ({better} AUC is better)", ylim=(0, 1))
        ax.legend()
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, path)
