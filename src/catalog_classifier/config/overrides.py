"""Write validated overrides into ``params.yaml`` itself, keeping its comments and layout.

Why into the file: DVC records in ``dvc.lock`` the params values each stage ran with, read from
``params.yaml``. A run with overrides that left the file untouched (or restored it afterwards) would leave a
lock describing values no file holds, and ``dvc status`` would call every stage stale. Writing them, as
``dvc exp run -S key=value`` does in the workspace, keeps the file, the lock and the MLflow runs in agreement;
the change shows in ``git diff params.yaml`` to be committed or reverted.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import yaml

from catalog_classifier.config.params import Params, ParamsError, apply_overrides, parse_params, read_raw_params
from catalog_classifier.ops.io import write_text

log = logging.getLogger(__name__)


def _round_trip_yaml() -> Any:
    from ruamel.yaml import YAML  # a DVC dependency; round-trip mode keeps comments and key order

    handler = YAML(typ="rt")
    handler.preserve_quotes = True
    handler.width = 4096
    handler.indent(mapping=2, sequence=4, offset=2)  # the layout params.yaml is written in
    handler.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
    return handler


def _replace(node: Any, key: str, value: Any) -> None:
    """Set ``node[key]``; a list replaced in place keeps the comment or blank line that followed it."""
    from ruamel.yaml.comments import CommentedSeq

    old = node.get(key)
    if isinstance(old, CommentedSeq) and isinstance(value, list) and old and value:
        trailing = old.ca.items.get(len(old) - 1)
        old.clear()
        old.extend(value)
        if trailing:
            old.ca.items[len(old) - 1] = trailing
    else:
        node[key] = value


def validate_overrides(params_file: Path, overrides: dict[str, Any] | None) -> Params:
    """The params that ``overrides`` would give, validated; nothing is written."""
    return parse_params(apply_overrides(read_raw_params(params_file), overrides), params_file)


def write_overrides(params_file: Path, overrides: dict[str, Any] | None) -> Params:
    """Validate ``{"train.lr": 0.001}``-style overrides, then write them into ``params_file`` atomically.

    Values given as strings are parsed as YAML, exactly as :func:`catalog_classifier.config.params.apply_overrides`
    does, so ``"[resnet50]"`` and ``["resnet50"]`` mean the same. Invalid overrides raise
    :class:`ParamsError` before the file is touched.
    """
    params = validate_overrides(params_file, overrides)
    if not overrides:
        return params
    expected = apply_overrides(read_raw_params(params_file), overrides)
    handler = _round_trip_yaml()
    tree = handler.load(params_file.read_text(encoding="utf-8"))
    for dotted_key, value in overrides.items():
        node = tree
        *parents, leaf = dotted_key.split(".")
        for part in parents:
            node = node[part]
        _replace(node, leaf, yaml.safe_load(value) if isinstance(value, str) else value)
    buffer = io.StringIO()
    handler.dump(tree, buffer)
    if yaml.safe_load(buffer.getvalue()) != expected:
        raise ParamsError(f"could not write overrides {sorted(overrides)} into {params_file} faithfully")
    write_text(params_file, buffer.getvalue())
    log.info("wrote overrides into %s: %s", params_file, ", ".join(f"{k}={v!r}" for k, v in overrides.items()))
    return params
