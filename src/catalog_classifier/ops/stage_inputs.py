"""What each DVC stage depends on, fingerprinted without its outputs, and what a retraining would have to rerun.

``dvc status`` compares the workspace with ``dvc.lock`` *and* with the outputs in the workspace and cache: in a
fresh clone whose outputs were never pushed (a read-only remote) every stage looks stale. A scheduled retraining
needs the other half only: did the stage's own inputs change since the last retraining? Those inputs are

- its command,
- the params it lists (each leaf value: ``params.yaml:train.lr``),
- its source files (content hash of each code file or git-tracked folder it lists),
- its data, by the version its ``.dvc`` pointer pins (``data.dvc`` md5), never by re-hashing the images,
- and, for a dependency another stage writes, that stage's fingerprint (so a change flows downstream).

A stage's fingerprint hashes these; it is the same in every clone of a commit with the same data version, with or
without the outputs. The stage definitions come from DVC itself (``dvc.repo.Repo.index``: ``foreach`` expanded,
templating and params resolved): no CLI command prints them, and re-reading ``dvc.yaml`` here would re-implement
its templating.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The stage that writes the registry: rerun only when its own inputs changed, never to feed another stage (its
# output, promotion.json, is committed; running it again would register a version).
REGISTERING_STAGES = frozenset({"promote"})
_HASH_CHARS = 16


@dataclass(frozen=True)
class StageInputs:
    """One stage as the plan sees it: its command, its own inputs (key -> value or content hash), the stages whose
    outputs it reads, and its output paths (relative to the project root)."""

    name: str
    cmd: str
    inputs: Mapping[str, str]
    upstream: tuple[str, ...]
    outs: tuple[str, ...] = ()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_HASH_CHARS]


def content_hash(path: Path) -> str:
    """A file's content hash; a folder's over its files' relative paths and contents; ``missing`` if absent."""
    if path.is_file():
        return _digest(path.read_bytes())
    if path.is_dir():
        entries = [f"{item.relative_to(path).as_posix()}\0{_digest(item.read_bytes())}"
                   for item in sorted(path.rglob("*")) if item.is_file()]
        return _digest("\n".join(entries).encode())
    return "missing"


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def flatten_params(prefix: str, value: Any) -> dict[str, str]:
    """``{"train": {"lr": 0.003}}`` -> ``{"params.yaml:train.lr": "0.003"}``: leaf values as JSON text."""
    if isinstance(value, dict) and value:
        flat: dict[str, str] = {}
        for key, item in value.items():
            flat.update(flatten_params(f"{prefix}.{key}", item))
        return flat
    return {prefix: json.dumps(value, sort_keys=True)}


def read_pipeline(root: Path) -> list[StageInputs]:
    """Every stage of the project's ``dvc.yaml`` with its own inputs, in DVC's DAG order (upstream first)."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo:
        stages = [stage for stage in repo.index.stages if isinstance(stage, PipelineStage)]
        # Data added with ``dvc add``: its .dvc pointer pins the version (md5 of the folder).
        top = Path(repo.root_dir)
        pointers = {(Path(stage.path).parent / out.def_path).relative_to(top).as_posix():
                    (Path(stage.path).relative_to(top).as_posix(), str(out.hash_info.value))
                    for stage in repo.index.stages if not isinstance(stage, PipelineStage) for out in stage.outs}
        produced = {out.def_path: stage.name for stage in stages for out in stage.outs}
        result = []
        for stage in stages:
            inputs: dict[str, str] = {}
            upstream: set[str] = set()
            for dep in stage.deps:
                if hasattr(dep, "read_params"):
                    for key, value in dep.read_params().items():
                        inputs.update(flatten_params(f"{dep.def_path}:{key}", value))
                    continue
                path = dep.def_path
                writers = {name for out, name in produced.items()
                           if name != stage.name and (_inside(out, path) or _inside(path, out))}
                if writers:
                    upstream |= writers
                    continue
                pinned = [(pointer, md5) for out, (pointer, md5) in pointers.items() if _inside(path, out)]
                inputs[path] = (f"{pinned[0][0]} md5 {pinned[0][1]}" if pinned
                                else content_hash(Path(repo.root_dir) / path))
            result.append(StageInputs(stage.name, stage.cmd or "", inputs, tuple(sorted(upstream)),
                                      tuple(out.def_path for out in stage.outs)))
    return topological(result)


def topological(stages: Iterable[StageInputs]) -> list[StageInputs]:
    """Upstream stages first; among stages ready together, the given order."""
    pending = list(stages)
    done: list[StageInputs] = []
    names: set[str] = set()
    while pending:
        ready = [stage for stage in pending if set(stage.upstream) <= names]
        if not ready:
            raise ValueError(f"the pipeline has a cycle among {sorted(stage.name for stage in pending)}")
        done.append(ready[0])
        names.add(ready[0].name)
        pending.remove(ready[0])
    return done


def own_hash(stage: StageInputs) -> str:
    """A stage's own part: its command and its own inputs (no upstream stage)."""
    return _digest(json.dumps({"cmd": stage.cmd, "inputs": dict(sorted(stage.inputs.items()))},
                              sort_keys=True).encode())


def fingerprints(stages: Iterable[StageInputs]) -> dict[str, str]:
    """Each stage's fingerprint: its own part, and the fingerprints of the stages it reads."""
    prints: dict[str, str] = {}
    for stage in topological(stages):
        body = {"own": own_hash(stage), "upstream": {name: prints[name] for name in stage.upstream}}
        prints[stage.name] = _digest(json.dumps(body, sort_keys=True).encode())
    return prints


def own_hashes(stages: Iterable[StageInputs]) -> dict[str, str]:
    return {stage.name: own_hash(stage) for stage in stages}


def all_inputs(stages: Iterable[StageInputs]) -> dict[str, str]:
    """Every input of every stage (one value per key: a code file shared by stages is one entry)."""
    merged: dict[str, str] = {}
    for stage in stages:
        merged.update(stage.inputs)
    return dict(sorted(merged.items()))


@dataclass(frozen=True)
class StageVerdict:
    """What the plan says about one stage:

    - ``changed``: its own inputs differ from the record: rerun (forced);
    - ``downstream``: only a stage it reads changed: handed to DVC, which reruns it when what it reads changed in
      content or its outputs are absent (a change that leaves an upstream output byte-identical stops there);
    - ``needed``: unchanged, but a stage that runs reads its outputs: DVC restores or reproduces them if absent;
    - ``unchanged``: left alone.
    """

    stage: str
    action: str  # changed | downstream | needed | unchanged
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetrainPlan:
    verdicts: tuple[StageVerdict, ...]
    baseline: str  # what the comparison was made against, in words
    missing_outputs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The registering stages and every stage they read, transitively: what a registry decision rests on.
    feeds_registry: frozenset[str] = frozenset()

    @property
    def changed(self) -> list[str]:
        return [v.stage for v in self.verdicts if v.action == "changed"]

    @property
    def to_run(self) -> list[str]:
        """The stages a run hands to DVC, in order (``changed`` ones forced)."""
        return [v.stage for v in self.verdicts if v.action != "unchanged"]

    @property
    def nothing_to_do(self) -> bool:
        return not any(v.action in ("changed", "downstream") for v in self.verdicts)

    @property
    def deferred(self) -> str | None:
        """Why this run should not rebuild what changed, or None. Only stages no registry decision reads changed
        (the report, explanations), yet stages they read have no outputs in this clone after the pull (a
        read-only remote never receives them): rebuilding a page would retrain the models it shows."""
        moved = [v.stage for v in self.verdicts if v.action in ("changed", "downstream")]
        if not moved or any(stage in self.feeds_registry for stage in moved):
            return None
        absent = [stage for stage, outs in self.missing_outputs.items() if outs]
        if not absent:
            return None
        return (f"only {', '.join(moved)} changed, which no registry decision reads, and the outputs of "
                f"{', '.join(absent)} they read are neither in this clone nor in its DVC remote: rebuilding them "
                f"would reproduce {len(absent)} upstream stage(s) (training included) for no new model; run them "
                "where those outputs are (`make report`), or make the remote writable so that retraining pushes them")

    def lines(self) -> list[str]:
        """One line per stage: what a run would do with it and why."""
        out = []
        for verdict in self.verdicts:
            why = "; ".join(verdict.reasons)
            if verdict.action == "changed":
                out.append(f"{verdict.stage}: rerun ({why})")
            elif verdict.action == "downstream":
                out.append(f"{verdict.stage}: to DVC, which reruns it if what it reads from "
                           f"{', '.join(verdict.reasons)} changed in content")
            elif verdict.action == "needed":
                absent = self.missing_outputs.get(verdict.stage, ())
                how = (f"outputs absent from this clone ({', '.join(absent[:3])}{', ...' if len(absent) > 3 else ''}):"
                       " DVC restores them from its cache or run-cache, else reproduces the stage") if absent else (
                       "outputs present: DVC checks them and skips the stage")
                out.append(f"{verdict.stage}: unchanged, read by {', '.join(verdict.reasons)}; {how}")
            else:
                out.append(f"{verdict.stage}: unchanged, not run")
        return out


def _reasons(stage: StageInputs, recorded_inputs: Mapping[str, str]) -> list[str]:
    reasons = []
    for key, value in sorted(stage.inputs.items()):
        before = recorded_inputs.get(key)
        if before is None:
            reasons.append(f"{key} new")
        elif before != value:
            # A param and a data version show both values; a code file, that it changed.
            shown = (f"{before} -> {value}" if (":" in key and len(before) + len(value) < 80) or " md5 " in value
                     else "modified")
            reasons.append(f"{key} {shown}")
    return reasons or ["its command or dependency list in dvc.yaml changed"]


def plan_retraining(stages: list[StageInputs], recorded: RecordedStages | None, baseline: str,
                    present: Mapping[str, bool] | None = None) -> RetrainPlan:
    """Compare the pipeline as it is now with the last retraining's record (None: there is none: all changed).

    ``changed``: the stage's own part differs from the record; ``downstream``: its fingerprint differs only
    through a stage it reads. Unchanged stages that a running stage reads are ``needed``, except a registering
    stage (promote): it never reruns unless its own inputs or what it reads changed. ``present`` (output path ->
    exists in this clone) only explains what DVC will have to restore or reproduce.
    """
    ordered = topological(stages)
    now = fingerprints(ordered)
    by_name = {stage.name: stage for stage in ordered}
    verdict: dict[str, tuple[str, list[str]]] = {}
    for stage in ordered:
        if recorded is None:
            verdict[stage.name] = ("changed", ["no retraining recorded"])
        elif stage.name not in recorded.stages:
            verdict[stage.name] = ("changed", ["a stage the record does not know"])
        elif recorded.own.get(stage.name) != own_hash(stage):
            verdict[stage.name] = ("changed", _reasons(stage, recorded.inputs))
        elif recorded.stages[stage.name] != now[stage.name]:
            verdict[stage.name] = ("downstream", [u for u in stage.upstream if u in verdict])
    readers: dict[str, set[str]] = {}
    for name in verdict:
        # What a running stage reads, transitively; not through a registering stage, which is not rerun for it.
        todo = list(by_name[name].upstream)
        while todo:
            upstream = todo.pop()
            if upstream in verdict or upstream in REGISTERING_STAGES or name in readers.get(upstream, set()):
                continue
            readers.setdefault(upstream, set()).add(name)
            todo.extend(by_name[upstream].upstream)
    feeds = set(REGISTERING_STAGES & by_name.keys())
    todo = [upstream for name in feeds for upstream in by_name[name].upstream]
    while todo:
        upstream = todo.pop()
        if upstream not in feeds:
            feeds.add(upstream)
            todo.extend(by_name[upstream].upstream)
    verdicts = []
    missing: dict[str, tuple[str, ...]] = {}
    for stage in ordered:
        if stage.name in verdict:
            action, reasons = verdict[stage.name]
            verdicts.append(StageVerdict(stage.name, action, tuple(reasons)))
        elif stage.name in readers:
            verdicts.append(StageVerdict(stage.name, "needed", tuple(sorted(readers[stage.name]))))
            if present is not None:
                missing[stage.name] = tuple(out for out in stage.outs if not present.get(out, False))
        else:
            verdicts.append(StageVerdict(stage.name, "unchanged"))
    return RetrainPlan(tuple(verdicts), baseline, missing, frozenset(feeds))


@dataclass(frozen=True)
class RecordedStages:
    """What a record keeps of the stages: fingerprints, own parts, and every input's value."""

    stages: Mapping[str, str]
    own: Mapping[str, str]
    inputs: Mapping[str, str]


def outputs_present(root: Path, stages: Iterable[StageInputs]) -> dict[str, bool]:
    return {out: (root / out).exists() for stage in stages for out in stage.outs}
