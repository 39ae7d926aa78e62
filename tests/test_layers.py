"""Layers: the library computes, stages and the CLI do I/O around it, flows orchestrate. Nothing reaches upward.

Every import of a module is read statically (function-level ones included, since the package imports lazily), so
a library module that imports a stage, the CLI or a flow fails here with the file, line and target named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "catalog_classifier"
ENTRY_POINTS = {"cli.py", "__main__.py"}
ABOVE_LIBRARY = ("catalog_classifier.stages", "catalog_classifier.cli", "catalog_classifier.__main__", "flows")
ABOVE_STAGES = ("catalog_classifier.cli", "catalog_classifier.__main__", "flows")


def imports(source: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import statement in ``source``, wherever it sits."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{alias.name}")
                                                     for alias in node.names]
    return found


def upward(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    name = path.relative_to(SRC.parent) if path.is_relative_to(SRC.parent) else path
    return [f"{name}:{line} imports {module}"
            for line, module in imports(path.read_text(encoding="utf-8"))
            if any(module == prefix or module.startswith(f"{prefix}.") for prefix in forbidden)]


LIBRARY = sorted(path for path in SRC.glob("*.py") if path.name not in ENTRY_POINTS)
STAGES = sorted((SRC / "stages").glob("*.py"))


@pytest.mark.parametrize("path", LIBRARY, ids=lambda path: path.name)
def test_the_library_never_imports_stages_the_cli_or_flows(path: Path) -> None:
    assert not upward(path, ABOVE_LIBRARY)


@pytest.mark.parametrize("path", STAGES, ids=lambda path: path.name)
def test_stages_never_import_the_cli_or_flows(path: Path) -> None:
    assert not upward(path, ABOVE_STAGES)


def test_the_check_sees_a_function_level_upward_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import json\n\ndef f():\n    from catalog_classifier.stages.train import run_train\n"
                     "    return run_train\n", encoding="utf-8")
    assert upward(probe, ABOVE_LIBRARY) == [f"{probe}:4 imports catalog_classifier.stages.train",
                                            f"{probe}:4 imports catalog_classifier.stages.train.run_train"]
