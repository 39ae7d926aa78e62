"""The explainers of single predictions: Grad-CAM and SHAP, and the scorer both are measured with.

How faithful each is: :mod:`catalog_classifier.explanations.faithfulness`; which images are explained:
:mod:`catalog_classifier.explanations.image_choice`; the figures: :mod:`catalog_classifier.explanations.drawing`.

Grad-CAM (grad-cam package) gives a smooth heatmap from the last feature map of the backbone; SHAP (Partition
explainer, image blur masker) gives patch-level Owen values of the predicted probability.

Everything here takes float RGB in [0, 1] (N, 3, H, W) as the :class:`~catalog_classifier.modeling.models.Classifier`
does and never reads params: the stage passes every setting in. Grad-CAM always runs in float32 (gradients);
forward-only scoring may run under bf16 autocast (see :func:`make_scorer`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
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
