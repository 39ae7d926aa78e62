"""DVC seen from the orchestrator: which stages exist and in which order, run one, what changed, pull, push.

The flows never re-implement a stage: every stage runs through ``dvc repro --single-item``, so ``dvc.lock``
stays the one record of what ran with which data, code and params. Everything here shells out to the DVC
CLI of the running interpreter's environment, which is DVC's stable interface.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from catalog_classifier.ops.exits import EXIT_TRANSIENT

log = logging.getLogger(__name__)

# The order stages of one kind take when the DAG leaves the choice open; unknown stages come after, by name.
STAGE_ORDER = ("split", "train", "evaluate", "explain", "compare", "promote")
_TAIL_LINES = 40
_NODE = re.compile(r'^\s*"([^"]+)"\s*;\s*$')
_EDGE = re.compile(r'^\s*"([^"]+)"\s*->\s*"([^"]+)"\s*;\s*$')
_COMMAND_EXIT = re.compile(r"exited with (-?\d+)")
_LOCKED = "Unable to acquire lock"

StageAction = Literal["ran", "skipped", "restored"]


class DvcError(RuntimeError):
    """A DVC command other than a stage run failed; the message carries DVC's own output."""


class StageFailed(RuntimeError):
    """``dvc repro`` of one stage failed; the message carries the stage's own error lines."""

    def __init__(self, stage: str, dvc_exit: int, command_exit: int | None, tail: str) -> None:
        self.stage = stage
        self.dvc_exit = dvc_exit
        self.command_exit = command_exit
        self.tail = tail
        ran = f"its command exited with {command_exit}" if command_exit is not None else "DVC stopped it"
        super().__init__(f"DVC stage '{stage}' failed ({ran}; dvc exit {dvc_exit}):\n{tail}")

    @property
    def transient(self) -> bool:
        """Worth a retry: only a failure the CLI declared transient (exit 75), a command killed by a signal from
        outside (the OOM killer: DVC reports a negative exit) or DVC's own repository lock. Never a rejected
        input (exit 2), a DVC refusal, or an unclassified crash (exit 1): rerunning a bug only repeats it."""
        if _LOCKED in self.tail:  # another DVC process holds the repository lock
            return True
        if self.command_exit is None:  # DVC failed before or around the command: bad dvc.yaml, missing deps
            return False
        return self.command_exit == EXIT_TRANSIENT or self.command_exit < 0


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    action: StageAction  # ran | skipped (unchanged since dvc.lock) | restored (from DVC's run-cache)


def dvc_executable() -> str:
    """The ``dvc`` installed beside this interpreter (a flow run by a worker may have a bare PATH)."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.is_file() else (shutil.which("dvc") or "dvc")


def dvc_env() -> dict[str, str]:
    """Stage commands (``catalog-classifier ...``) resolve to this environment; their output is unbuffered."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one DVC command in ``root``; raise :class:`DvcError` with its output when it fails."""
    result = subprocess.run([dvc_executable(), *args], cwd=root, capture_output=True, text=True, env=dvc_env())
    if result.returncode != 0:
        raise DvcError(f"dvc {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}".rstrip())
    return result


def parse_dag(dot: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Stage names and (upstream, downstream) edges from ``dvc dag --dot``; ``.dvc`` data pointers dropped."""
    nodes: list[str] = []
    edges: list[tuple[str, str]] = []
    for line in dot.splitlines():
        if edge := _EDGE.match(line):
            edges.append((edge[1], edge[2]))
        elif node := _NODE.match(line):
            nodes.append(node[1])
    keep = [name for name in nodes if not name.endswith(".dvc")]
    return keep, [(a, b) for a, b in edges if a in keep and b in keep]


def order_stages(nodes: Iterable[str], edges: Iterable[tuple[str, str]], models: list[str]) -> list[str]:
    """A topological order of the DAG; among stages ready at once: by kind (STAGE_ORDER), then model order.

    Gives split, train@a, train@b, evaluate@a, evaluate@b, explain@..., compare, promote for this project,
    and still a valid order for stages added later.
    """
    nodes = list(nodes)
    position = {name: index for index, name in enumerate(nodes)}

    def key(name: str) -> tuple[int, int, int]:
        kind, _, item = name.partition("@")
        kind_rank = STAGE_ORDER.index(kind) if kind in STAGE_ORDER else len(STAGE_ORDER)
        model_rank = models.index(item) if item in models else len(models)
        return kind_rank, model_rank, position[name]

    upstream: dict[str, set[str]] = {name: set() for name in nodes}
    for before, after in edges:
        upstream[after].add(before)
    ordered: list[str] = []
    while len(ordered) < len(nodes):
        ready = [name for name in nodes if name not in ordered and upstream[name] <= set(ordered)]
        if not ready:
            raise DvcError(f"the DVC pipeline has a cycle among {sorted(set(nodes) - set(ordered))}")
        ordered.append(min(ready, key=key))
    return ordered


def pipeline_stages(root: Path, models: list[str]) -> list[str]:
    """Every stage of the project's ``dvc.yaml`` (foreach expanded), in the order the flow runs them."""
    nodes, edges = parse_dag(dvc(root, "dag", "--dot").stdout)
    return order_stages(nodes, edges, models)


def _action(stage: str, output: str) -> StageAction:
    if f"Stage '{stage}' is cached" in output:
        return "restored"
    if f"Running stage '{stage}'" in output:
        return "ran"
    return "skipped"


def repro_stage(root: Path, stage: str, *, force: bool = False,
                on_line: Callable[[str], None] | None = None) -> StageOutcome:
    """``dvc repro --single-item [--force] <stage>``, streaming its output line by line to ``on_line``.

    DVC decides whether the stage is stale; ``force`` makes it run regardless (and skip the run-cache).
    """
    command = [dvc_executable(), "repro", "--single-item", *(["--force"] if force else []), stage]
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    lines: list[str] = []
    with subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dvc_env(), bufsize=1) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            # Progress bars redraw with carriage returns: keep the last state of each line.
            line = raw.rstrip("\n").rsplit("\r", 1)[-1].rstrip()
            if not line:
                continue
            lines.append(line)
            tail.append(line)
            if on_line is not None:
                on_line(line)
    output = "\n".join(lines)
    if process.returncode != 0:
        exited = _COMMAND_EXIT.findall(output)
        raise StageFailed(stage, process.returncode, int(exited[-1]) if exited else None, "\n".join(tail))
    return StageOutcome(stage, _action(stage, output))


def changed_stages(root: Path) -> dict[str, Any]:
    """``dvc status --json``: what changed since ``dvc.lock`` (data, params, code, outputs); empty: nothing."""
    return json.loads(dvc(root, "status", "--json").stdout or "{}")


def describe_changes(status: dict[str, Any]) -> list[str]:
    """One line per stale stage or pointer: what changed, e.g. ``train@x: params.yaml modified (train.lr)``."""
    lines = []
    for name, entries in status.items():
        reasons = []
        for entry in entries:
            if not isinstance(entry, dict):
                reasons.append(str(entry))
                continue
            for kind, changes in entry.items():
                if isinstance(changes, dict):
                    items = ", ".join(f"{path} {what if isinstance(what, str) else json.dumps(what)}"
                                      for path, what in changes.items())
                else:
                    items = str(changes)
                reasons.append(f"{kind}: {items}")
        lines.append(f"{name}: {'; '.join(reasons)}")
    return lines


def data_pointers(root: Path) -> list[Path]:
    """The ``.dvc`` files git tracks (the data versions this commit pins); all at the root outside git."""
    result = subprocess.run(["git", "ls-files", "--", "*.dvc"], cwd=root, capture_output=True, text=True)
    if result.returncode == 0:
        return [root / line for line in result.stdout.splitlines() if line.strip()]
    return sorted(root.glob("*.dvc"))


def _is_import(pointer: Path) -> bool:
    with pointer.open(encoding="utf-8") as handle:
        return bool((yaml.safe_load(handle) or {}).get("deps"))


def pull_data(root: Path) -> list[str]:
    """Bring the data to its newest version: ``dvc update`` for imports, then ``dvc pull`` of every pointer.

    Data added with ``dvc add`` is pinned by its committed pointer: its newer versions arrive with the commit
    (the deployment's checkout); imported data (``dvc import``) is moved to its source's newest version here.
    """
    done = []
    pointers = [str(p.relative_to(root)) for p in data_pointers(root)]
    imports = [name for name in pointers if _is_import(root / name)]
    if imports:
        dvc(root, "update", *imports)
        done.append(f"dvc update {' '.join(imports)}")
    if pointers:
        dvc(root, "pull", *pointers)
        done.append(f"dvc pull {' '.join(pointers)}")
    return done


@dataclass(frozen=True)
class Remote:
    name: str
    url: str

    @property
    def local_path(self) -> Path | None:
        if self.url.startswith("file://"):
            return Path(self.url[len("file://"):])
        return None if "://" in self.url else Path(self.url)


def default_remote(root: Path) -> Remote | None:
    """The default DVC remote with its URL (DVC resolves relative local paths), or None when none is set."""
    try:
        name = dvc(root, "remote", "default").stdout.strip()
    except DvcError:
        return None
    if not name:
        return None
    origin_and_url = dvc(root, "config", "--show-origin", f"remote.{name}.url").stdout.strip()
    return Remote(name, origin_and_url.split("\t", 1)[-1].strip())


def remote_writable(remote: Remote) -> bool | None:
    """True/False for a local remote (the folder, or the nearest existing parent, is writable); None: unknown."""
    path = remote.local_path
    if path is None:
        return None
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK | os.X_OK)


def pull_stage_outputs(root: Path, stages: list[str]) -> str:
    """``dvc pull`` of these stages' outputs from the default remote, as far as it holds them; what happened."""
    if not stages:
        return "nothing to pull"
    try:
        output = dvc(root, "pull", *stages).stdout.strip()
    except DvcError as err:  # a remote without them (read-only: never pushed to) or unreachable
        return f"not all pulled: {str(err).strip().splitlines()[-1]}"
    return output.splitlines()[-1] if output else "pulled"


def push(root: Path, remote: Remote) -> str:
    """``dvc push`` to ``remote``; returns DVC's summary line."""
    output = dvc(root, "push", "--remote", remote.name).stdout.strip()
    return output.splitlines()[-1] if output else "pushed"
