"""The one typed loader of ``params.yaml``.

Every stage, flow and test reads configuration through :func:`load_params`, so a typo in a key, a negative
epoch count or split fractions that do not add up are rejected before any work starts, with the key named.
"""

from __future__ import annotations

import copy
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PARAMS_FILE = "params.yaml"


class ParamsError(ValueError):
    """params.yaml (or an override) is invalid; the message names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_fraction(value: Any) -> float:
    """Accept 0.5, "1/6" or "0.1666" so ratios like 2/3 can be written exactly."""
    try:
        return float(Fraction(str(value)))
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"{value!r} is not a number or a fraction a/b") from err


class DataParams(_Strict):
    catalogue: Path
    images_dir: Path
    classes: list[str] = Field(min_length=2)

    @field_validator("classes")
    @classmethod
    def _unique(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) != len(classes):
            raise ValueError("class names must be unique")
        return classes


class SplitFractions(_Strict):
    train: float
    val: float
    test: float

    @field_validator("train", "val", "test", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> float:
        return _as_fraction(value)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        for name in ("train", "val", "test"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        total = self.train + self.val + self.test
        if abs(total - 1) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:.6f}")
        return self


class SplitParams(_Strict):
    out_dir: Path
    seed: int
    fractions: SplitFractions


class TrainParams(_Strict):
    out_dir: Path
    history_dir: Path
    seed: int
    weights: Literal["imagenet", "none"]
    weights_files: dict[str, Path] = Field(default_factory=dict)
    allow_random_fallback: bool
    image_size: int | None = Field(default=None, gt=0)
    max_epochs: int = Field(gt=0)
    patience: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    optimizer: Literal["adamw", "sgd"]
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    label_smoothing: float = Field(ge=0, lt=1)
    augment: bool
    freeze_backbone: bool
    channels_last: Literal["auto"] | bool
    bf16: Literal["auto"] | bool
    num_threads: int | None = Field(default=None, gt=0)


class EvaluateParams(_Strict):
    out_dir: Path
    batch_size: int = Field(gt=0)


class CompareParams(_Strict):
    out_json: Path
    out_md: Path


class MlflowParams(_Strict):
    tracking_uri: str
    artifact_root: Path
    experiment: str


class Params(_Strict):
    data: DataParams
    split: SplitParams
    models: list[str] = Field(min_length=1)
    train: TrainParams
    evaluate: EvaluateParams
    compare: CompareParams
    mlflow: MlflowParams

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        import timm  # imported here: loading params must not pay for torch unless models are checked

        unknown = [name for name in models if not timm.is_model(name)]
        if unknown:
            raise ValueError(f"unknown timm model name(s): {', '.join(unknown)}")
        if len(set(models)) != len(models):
            raise ValueError("model names must be unique")
        return models


def _set_dotted(tree: dict[str, Any], dotted_key: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted_key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise ParamsError(f"override {dotted_key}: '{part}' is not a section of params.yaml")
        node = node[part]
    node[leaf] = value


def _override_value(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise ParamsError(f"override {key}: value {value!r} is not valid YAML (quote it if it is a string)") from None


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``{"train.lr": 0.1}``-style overrides applied (values parsed as YAML)."""
    tree = copy.deepcopy(raw)
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, _override_value(key, value))
    return tree


def _format_errors(err: ValidationError, source: Path) -> str:
    lines = [f"invalid parameters in {source}:"]
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], source: Path = Path(PARAMS_FILE)) -> Params:
    """Validate an already-loaded params tree."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_errors(err, source)) from None


def read_raw_params(path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"parameters file not found: {path}")
    try:
        with path.open(encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ParamsError(f"{path} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path} is not UTF-8 ({err.reason}); re-save it as UTF-8") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must contain a mapping of sections")
    return raw


def load_params(path: Path | str = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Load, override and validate ``params.yaml``."""
    return parse_params(apply_overrides(read_raw_params(path), overrides), Path(path))
