"""Every package module a DVC stage can load is one of that stage's ``deps`` in dvc.yaml.

Otherwise ``dvc status`` (and so the scheduled retraining's "nothing changed") misses a code change. The closure
is found statically: the stage's CLI handler and everything the CLI runs on the way to it, then, transitively,
every ``import`` of a ``catalog_classifier`` module anywhere in each file (function-level imports included,
because lazily imported modules run too). A runtime import in a clean interpreter checks the static closure.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "catalog_classifier"
CLI = f"{PACKAGE}.cli"
COMMAND = "catalog-classifier"


def module_file(module: str) -> Path | None:
    """The source file of a package module (``pkg/__init__.py`` for a package), None when there is none."""
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _absolute(node: ast.ImportFrom, current: str) -> str:
    if not node.level:
        return node.module or ""
    is_package = module_file(current) is not None and module_file(current).name == "__init__.py"
    package = current.split(".") if is_package else current.split(".")[:-1]
    package = package[:len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def imported_modules(nodes: list[ast.AST], current: str) -> set[str]:
    """Package modules named by the imports under ``nodes`` (at any depth), parent packages included."""
    found: set[str] = set()
    for root in nodes:
        for node in ast.walk(root):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, current)
                # ``from pkg import name``: name may be a submodule (then it is loaded) or an attribute.
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            for name in names:
                parts = name.split(".")
                if parts[0] != PACKAGE:
                    continue
                for end in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                    if module_file(prefix := ".".join(parts[:end])) is not None:
                        found.add(prefix)
    return found


@cache
def _tree(module: str) -> ast.Module:
    path = module_file(module)
    assert path is not None, module
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def closure(start: set[str]) -> set[str]:
    """``start`` and every package module reachable from it through imports anywhere in the files.

    The CLI is not walked as a whole (that would count every subcommand's lazy imports): :func:`cli_entry` has
    already taken what it loads for one subcommand.
    """
    seen: set[str] = set()
    todo = list(start)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if module != CLI:
            todo.extend(imported_modules([_tree(module)], module) - seen)
    return seen


def cli_entry(subcommand: str) -> set[str]:
    """What the CLI itself loads to run ``subcommand``: its module-level imports, the imports of every helper
    (``main``, ``_project``, logging set-up ...), and those of this subcommand's handler only."""
    tree = _tree(CLI)
    handlers = {call.args[0].value: call.args[1].id for call in ast.walk(tree)
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "add"
                and len(call.args) >= 2 and isinstance(call.args[0], ast.Constant)
                and isinstance(call.args[1], ast.Name)}
    assert subcommand in handlers, f"`{COMMAND} {subcommand}` has no handler in cli.build_parser"
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    module_level = [node for node in tree.body if not isinstance(node, ast.FunctionDef)]
    helpers = [node for name, node in functions.items() if not name.startswith("cmd_")]
    return {CLI, PACKAGE} | imported_modules([*module_level, *helpers, functions[handlers[subcommand]]], CLI)


def dvc_stages() -> dict[str, dict]:
    """Each stage of dvc.yaml (a ``foreach`` stage once, by its ``do`` body) with its command and deps."""
    with (REPO / "dvc.yaml").open(encoding="utf-8") as handle:
        stages = yaml.safe_load(handle)["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def subcommand_of(command: str) -> str:
    words = command.split()
    assert words[0] == COMMAND, f"stage command {command!r} does not run {COMMAND}"
    return words[1]


def covered(path: Path, deps: list[str]) -> bool:
    """A dependency covers the file itself or, for a directory, everything under it."""
    relative = path.relative_to(REPO).as_posix()
    return any(relative == dep.rstrip("/") or relative.startswith(dep.rstrip("/") + "/") for dep in deps)


STAGES = dvc_stages()


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_loads_is_one_of_its_deps(stage: str) -> None:
    definition = STAGES[stage]
    modules = closure(cli_entry(subcommand_of(definition["cmd"])))
    missing = sorted(module_file(m).relative_to(REPO).as_posix() for m in modules
                     if not covered(module_file(m), definition.get("deps", [])))
    assert not missing, f"dvc.yaml stage '{stage}' loads modules missing from its deps: {', '.join(missing)}"


def test_static_closure_finds_function_level_imports() -> None:
    """promote's handler imports stages.promote inside a function; that module imports registry.promotion ..."""
    modules = closure(cli_entry("promote"))
    assert {f"{PACKAGE}.stages.promote", f"{PACKAGE}.registry.promotion", f"{PACKAGE}.registry.gate",
            f"{PACKAGE}.registry.versions", f"{PACKAGE}.config.layout", f"{PACKAGE}.config.params", f"{PACKAGE}.ops.io",
            f"{PACKAGE}.ops.progress"} <= modules
    assert f"{PACKAGE}.stages.train" not in modules  # other handlers' imports do not count
    assert f"{PACKAGE}.stages.promote" not in closure(cli_entry("split"))


RUNTIME = """
import json, sys
import {cli}
import {stage}
print(json.dumps(sorted(name for name in sys.modules if name == "{pkg}" or name.startswith("{pkg}."))))
"""


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_static_closure_holds_what_a_clean_interpreter_loads(stage: str) -> None:
    """Cross-check of the static walk: importing the CLI and the stage module loads nothing it missed."""
    subcommand = subcommand_of(STAGES[stage]["cmd"])
    stage_module = f"{PACKAGE}.stages.{subcommand}"
    if module_file(stage_module) is None:
        pytest.skip(f"no module {stage_module}")
    code = RUNTIME.format(cli=CLI, stage=stage_module, pkg=PACKAGE)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(SRC)}, check=True)
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert loaded <= closure(cli_entry(subcommand)), sorted(loaded - closure(cli_entry(subcommand)))
