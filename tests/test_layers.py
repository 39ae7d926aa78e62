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
# The library's own layers, bottom up: a subpackage may import its own modules and those of lower ranks only.
# Equal ranks are siblings that never import each other.
# infra (the team stack) sits beside modeling: neither imports the other; registry and tuning use its PostgreSQL.
# benchmarks measures the product and ranks above all of it: no product layer imports measurement code.
RANKS = {"ops": 0, "config": 1, "data": 2, "infra": 3, "modeling": 3, "explanations": 4, "registry": 4, "tuning": 5,
         "endpoint": 5, "reporting": 6, "benchmarks": 7}
# Top-level library modules and the layer each sits with (none since the registry stopped running code on load).
TOP_LEVEL: dict[str, str] = {}
PACKAGE_MAP = Path(__file__).resolve().parents[1] / "README.md"


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


LIBRARY = sorted(path for path in SRC.rglob("*.py")
                 if path.relative_to(SRC).parts[0] not in ("stages", *ENTRY_POINTS))
STAGES = sorted((SRC / "stages").glob("*.py"))


def layer_of(module: str) -> str | None:
    """The library layer of ``catalog_classifier.<layer>...`` (None for the package root, stages, cli, flows)."""
    parts = module.split(".")
    if parts[0] != "catalog_classifier" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in RANKS else TOP_LEVEL.get(parts[1])


def across_layers(path: Path, relative: Path | None = None) -> list[str]:
    """Imports from a library layer that is not below (or equal to) the importing module's own layer.

    ``relative`` is the module's place in the package (default: where ``path`` is under src/catalog_classifier).
    """
    relative = relative or path.relative_to(SRC)
    if relative == Path("__init__.py"):
        return []  # the package root holds only its docstring
    own = relative.parts[0] if len(relative.parts) > 1 else TOP_LEVEL[relative.stem]
    found = []
    for line, module in imports(path.read_text(encoding="utf-8")):
        layer = layer_of(module)
        if layer is not None and layer != own and RANKS[layer] >= RANKS[own]:
            found.append(f"{relative}:{line} ({own}) imports {module} ({layer})")
    return found


def test_every_library_folder_is_a_ranked_layer() -> None:
    folders = {path.name for path in SRC.iterdir() if path.is_dir() and (path / "__init__.py").is_file()}
    assert folders - {"stages"} == set(RANKS)
    top = {path.stem for path in SRC.glob("*.py")} - {"__init__", *(name[:-3] for name in ENTRY_POINTS)}
    assert top == set(TOP_LEVEL)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda path: path.relative_to(SRC).as_posix())
def test_a_library_layer_imports_only_layers_below_it(path: Path) -> None:
    assert not across_layers(path)


def test_module_names_are_unique_in_the_package() -> None:
    stems = [path.stem for path in SRC.rglob("*.py") if path.stem != "__init__"]
    assert sorted(stem for stem in set(stems) if stems.count(stem) > 1) == []
    folders = {path.name for path in SRC.iterdir() if path.is_dir()}
    assert not folders & set(stems)


def test_every_subpackage_says_what_lives_there_and_what_it_may_import() -> None:
    for layer in RANKS:
        doc = ast.get_docstring(ast.parse((SRC / layer / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "Imports" in doc, f"{layer}/__init__.py has no docstring saying what it may import"


def test_the_readme_package_map_names_every_subpackage_and_stage() -> None:
    readme = PACKAGE_MAP.read_text(encoding="utf-8")
    for layer in [*RANKS, "stages"]:
        assert f"{layer}/" in readme, f"README's package map does not name {layer}/"
    for stage in STAGES:
        if stage.stem != "__init__":
            assert stage.stem in readme, f"README's package map does not name the {stage.stem} stage"


def test_the_rank_check_sees_an_upward_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from catalog_classifier.ops.io import write_json\n\ndef f():\n"
                     "    from catalog_classifier.modeling.models import create_classifier\n", encoding="utf-8")
    assert across_layers(probe, Path("data/probe.py")) == [
        "data/probe.py:4 (data) imports catalog_classifier.modeling.models (modeling)",
        "data/probe.py:4 (data) imports catalog_classifier.modeling.models.create_classifier (modeling)"]


@pytest.mark.parametrize("path", LIBRARY, ids=lambda path: path.relative_to(SRC).as_posix())
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


FLOWS = sorted((Path(__file__).resolve().parents[1] / "flows").glob("*.py"))
# Flows orchestrate: they run stages (through DVC and the CLI, or a stage's entry point) and read params and the
# stages' outputs for their own summaries. They never compute: no model, data, explanation or tuning code.
# A flow's bench command (batch_label's) may use the benchmarks' helpers: measuring is not the product's computing.
FLOWS_MAY_IMPORT = ("catalog_classifier.stages", "catalog_classifier.config", "catalog_classifier.ops",
                    "catalog_classifier.reporting.run_summary", "catalog_classifier.registry.tracking",
                    "catalog_classifier.benchmarks", "flows")


@pytest.mark.parametrize("path", FLOWS, ids=lambda path: path.name)
def test_flows_only_orchestrate(path: Path) -> None:
    computing = [f"flows/{path.name}:{line} imports {module}"
                 for line, module in imports(path.read_text(encoding="utf-8"))
                 if module.startswith(("catalog_classifier.", "flows."))
                 and not module.startswith(tuple(f"{prefix}." for prefix in FLOWS_MAY_IMPORT))
                 and module not in FLOWS_MAY_IMPORT]
    assert not computing


# The stages that measure (and the stack's bench-logging action): the only stage modules that import benchmarks.
MEASURING_STAGES = {"bench", "bench_predict", "bench_serve", "tune_bench", "stack"}


@pytest.mark.parametrize("path", STAGES, ids=lambda path: path.name)
def test_only_the_measuring_stages_import_benchmarks(path: Path) -> None:
    if path.stem in MEASURING_STAGES:
        return
    assert not upward(path, ("catalog_classifier.benchmarks",))


def test_no_product_layer_imports_benchmarks() -> None:
    product = [path for path in LIBRARY if path.relative_to(SRC).parts[0] != "benchmarks"]
    assert [hit for path in product for hit in upward(path, ("catalog_classifier.benchmarks",))] == []
