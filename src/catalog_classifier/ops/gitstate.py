"""Which commit a run's code and params came from, and whether the working tree still matches it.

"Dirty" means a tracked file that is neither DVC's nor git-ignored differs from HEAD: code, params.yaml,
pyproject.toml, docs. Files DVC itself rewrites while the pipeline runs do not count: every ``dvc.lock`` and every
output (``outs``, ``metrics``, ``plots``) of a stage, as DVC resolves them from ``dvc.yaml`` (params templating,
``foreach`` and ``matrix`` included), plus the ``.gitignore`` files DVC keeps next to cached outputs. Without
this, a fresh clone's ``dvc repro`` tagged every run ``-dirty``: the split stage had rewritten a committed metrics
file before the first model trained. Untracked files do not count (as before): they are not part of any commit.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DVC_LOCK = "dvc.lock"
GITIGNORE = ".gitignore"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class GitState:
    """HEAD (None outside git) and the changed files that make the tree differ from it (repo-relative, sorted)."""

    commit: str | None
    dirty_files: tuple[str, ...] = ()

    @property
    def dirty(self) -> bool:
        return bool(self.dirty_files)

    @property
    def tag(self) -> str:
        """``<sha>``, ``<sha>-dirty``, or ``unknown`` outside git."""
        if self.commit is None:
            return UNKNOWN
        return f"{self.commit}-dirty" if self.dirty else self.commit

    @property
    def short(self) -> str:
        """The tag with the sha cut to 12 characters, for pages and logs."""
        if self.commit is None:
            return UNKNOWN
        return f"{self.commit[:12]}-dirty" if self.dirty else self.commit[:12]


def _git(args: list[str], cwd: Path) -> str:
    # --no-optional-locks: status must not write the index (parallel trials and stages call this at once).
    return subprocess.run(["git", "--no-optional-locks", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout


def changed_tracked_files(top: Path) -> list[str]:
    """Tracked files that differ from HEAD (staged or not, deleted included), relative to the repository top."""
    entries = _git(["status", "--porcelain=v1", "-z", "--untracked-files=no"], top).split("\0")
    changed: list[str] = []
    index = 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if len(entry) < 4:
            continue
        status, path = entry[:2], entry[3:]
        changed.append(path)
        if "R" in status or "C" in status:  # -z gives a rename's or copy's source as the next entry
            changed.append(entries[index])
            index += 1
    return sorted(set(changed))


def dvc_outputs(project_root: Path) -> list[Path] | None:
    """Absolute paths of every output DVC manages in this project (stage outs, metrics and plots, ``.dvc`` files'
    outs); None when DVC cannot read the project (no ``.dvc``, an unparsable ``dvc.yaml``), said in the log."""
    try:
        from dvc.repo import Repo

        with Repo(str(project_root)) as repo:
            return [Path(out.fs_path) for out in repo.index.outs]
    except Exception as err:  # noqa: BLE001 - any DVC failure only means no output is set apart
        log.warning("DVC outputs of %s unknown (%s): only dvc.lock is set apart from the git dirty check",
                    project_root, str(err).splitlines()[0] if str(err) else type(err).__name__)
        return None


def dvc_managed(path: Path, outputs: list[Path]) -> bool:
    """A DVC lock file, an output or a file inside an output directory, or the .gitignore DVC writes beside one
    (which, for ``data.dvc``, is the project's own: an edit to it changes no code or params either)."""
    if path.name == DVC_LOCK:
        return True
    if any(path == out or path.is_relative_to(out) for out in outputs):
        return True
    return path.name == GITIGNORE and any(out.parent == path.parent for out in outputs)


def git_state(project_root: Path) -> GitState:
    """HEAD and the tracked files, DVC's own set apart, that differ from it; ``GitState(None)`` outside git."""
    try:
        top = Path(_git(["rev-parse", "--show-toplevel"], project_root).strip())
        head = _git(["rev-parse", "HEAD"], project_root).strip()
        changed = changed_tracked_files(top)
    except (OSError, subprocess.CalledProcessError):
        return GitState(None)
    if not changed:
        return GitState(head)
    outputs = [_real(out) for out in dvc_outputs(project_root) or []]
    dirty = tuple(name for name in changed if not dvc_managed(_real(top / name), outputs))
    return GitState(head, dirty)


def _real(path: Path) -> Path:
    """The path with its folder's symlinks resolved, not its own: an output may be a link into DVC's cache."""
    return path.parent.resolve() / path.name


def dirty_files_text(files: tuple[str, ...] | list[str], limit: int = 20, max_chars: int = 1000) -> str:
    """``a.py, params.yaml`` or, past ``limit`` files or ``max_chars``, the first ones and ``(+N more)``."""
    shown: list[str] = []
    for name in files[:limit]:
        if sum(len(item) + 2 for item in shown) + len(name) > max_chars - 20:
            break
        shown.append(name)
    rest = len(files) - len(shown)
    return ", ".join(shown) + (f" (+{rest} more)" if rest else "")
