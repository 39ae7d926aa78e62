"""The ``git_commit`` tag is dirty when code or params differ from HEAD, not when DVC rewrote its own outputs.

Real git and DVC repositories in tmp: the project's own dvc.yaml and params.yaml (templating, foreach), then a
two-stage pipeline whose second stage reads the tags inside ``dvc repro``, after the first rewrote a committed
metrics file and DVC rewrote dvc.lock (what a fresh clone's ``make run`` does).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml
from conftest import REPO, run

from catalog_classifier.ops.gitstate import GitState, dirty_files_text, dvc_outputs, git_state
from catalog_classifier.registry.tracking import git_commit, git_tags

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def commit_all(root: Path, message: str = "state") -> str:
    run(["git", "add", "-A"], root)
    run([*GIT, "commit", "-qm", message], root)
    return run(["git", "rev-parse", "HEAD"], root).stdout.strip()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def project_copy(root: Path) -> dict:
    """The real dvc.yaml and params.yaml, a code file, committed DVC outputs (cache: false ones and a file inside
    a directory output), a committed file no stage writes, under git and DVC."""
    root.mkdir()
    for name in ("dvc.yaml", "dvc.lock", "params.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    model = params["models"][-1]
    write(root / "src/catalog_classifier/stages/train.py", "print('train')\n")
    for name in ("artifacts/splits/quality.json", f"artifacts/eval/{model}/metrics.json",
                 f"artifacts/history/{model}.csv", f"artifacts/explain/{model}/figures/a.png",
                 "artifacts/promotion.json", "artifacts/report/index.html", "artifacts/bench/bench.json"):
        write(root / name, "1\n")
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    commit_all(root, "project")
    return params


def test_dvc_outputs_are_resolved_from_the_templated_dvc_yaml(tmp_path: Path) -> None:
    root = tmp_path / "project"
    params = project_copy(root)
    outputs = {str(path.relative_to(root.resolve())) for path in dvc_outputs(root)}
    for model in params["models"]:  # foreach over params.models, ${item} and ${evaluate.out_dir} resolved
        assert {f"artifacts/models/{model}/model.pt", f"artifacts/models/{model}/train_metrics.json",
                f"artifacts/history/{model}.csv", f"artifacts/eval/{model}/metrics.json",
                f"artifacts/eval/{model}/predictions.csv", f"artifacts/explain/{model}/figures"} <= outputs
    assert {"artifacts/splits/quality.json", "artifacts/promotion.json", "artifacts/report/index.html"} <= outputs
    assert not any(path.startswith(("src/", "artifacts/bench")) or path == "params.yaml" for path in outputs)


def test_only_code_params_or_other_tracked_files_make_the_commit_dirty(tmp_path: Path) -> None:
    root = tmp_path / "project"
    params = project_copy(root)
    model = params["models"][-1]
    head = run(["git", "rev-parse", "HEAD"], root).stdout.strip()
    assert git_state(root) == GitState(head)
    assert git_tags(root) == {"git_commit": head}

    # What dvc repro rewrites: the lock, metrics, plots' data, files inside a directory output, persist outputs.
    lock = root / "dvc.lock"
    lock.write_text(lock.read_text().replace("md5:", "md5: ", 1))
    for name in ("artifacts/splits/quality.json", f"artifacts/eval/{model}/metrics.json",
                 f"artifacts/history/{model}.csv", f"artifacts/explain/{model}/figures/a.png",
                 "artifacts/promotion.json", "artifacts/report/index.html"):
        write(root / name, "2\n")
    (root / "artifacts/splits/quality.json").unlink()  # DVC deletes an output before its stage reruns
    write(root / "untracked.py", "new\n")  # untracked: part of no commit
    assert git_commit(root) == head and git_tags(root) == {"git_commit": head}

    write(root / "params.yaml", (root / "params.yaml").read_text() + "# edited\n")
    assert git_state(root) == GitState(head, ("params.yaml",))
    assert git_tags(root) == {"git_commit": f"{head}-dirty", "git_dirty_files": "params.yaml"}

    write(root / "src/catalog_classifier/stages/train.py", "print('changed')\n")
    write(root / "artifacts/bench/bench.json", "2\n")  # committed, but no stage writes it: it counts
    assert git_tags(root) == {"git_commit": f"{head}-dirty", "git_dirty_files":
                              "artifacts/bench/bench.json, params.yaml, src/catalog_classifier/stages/train.py"}
    assert git_state(root).short == f"{head[:12]}-dirty"


def test_outside_git_the_commit_is_unknown(tmp_path: Path) -> None:
    assert git_state(tmp_path) == GitState(None)
    assert git_commit(tmp_path) == "unknown" and git_tags(tmp_path) == {"git_commit": "unknown"}


def test_a_long_list_of_dirty_files_is_cut_with_a_count() -> None:
    files = [f"src/module_{index:03d}.py" for index in range(50)]
    assert dirty_files_text(files[:2]) == "src/module_000.py, src/module_001.py"
    text = dirty_files_text(files)
    assert text.startswith("src/module_000.py, ") and text.endswith(" (+30 more)")
    assert text.count(".py") == 20
    assert len(dirty_files_text(["x" * 400] * 5)) < 1000
    assert dirty_files_text(["x" * 400] * 5).endswith("(+3 more)")


def test_inside_dvc_repro_outputs_rewritten_by_earlier_stages_leave_the_commit_clean(tmp_path: Path) -> None:
    """A fresh clone's second run: stage ``measure`` rewrites a committed metrics file and DVC rewrites dvc.lock
    before stage ``record`` reads the tags, as the train stage does after split."""
    root = tmp_path / "pipeline"
    root.mkdir()
    python = sys.executable
    record = ("import json, pathlib; from catalog_classifier.registry.tracking import git_tags; "
              "pathlib.Path('tags.json').write_text(json.dumps(git_tags(pathlib.Path('.'))))")
    stages = {"stages": {
        "measure": {"cmd": f"{python} -c \"import time; open('m.json', 'w').write(str(time.time()))\"",
                    "always_changed": True, "metrics": [{"m.json": {"cache": False}}]},
        "record": {"cmd": f'{python} -c "{record}"', "deps": ["m.json"], "params": ["seed"],
                   "outs": [{"tags.json": {"cache": False}}]},
    }}
    write(root / "dvc.yaml", yaml.safe_dump(stages, sort_keys=False))
    write(root / "params.yaml", "seed: 1\n")
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "repro"], root)
    head = commit_all(root, "first run")
    run(["dvc", "repro"], root)
    changed = run(["git", "status", "--porcelain"], root).stdout.split()
    assert changed == ["M", "dvc.lock", "M", "m.json", "M", "tags.json"]  # the old check called this dirty
    assert json.loads((root / "tags.json").read_text()) == {"git_commit": head}

    write(root / "params.yaml", "seed: 2\n")
    run(["dvc", "repro"], root)
    assert json.loads((root / "tags.json").read_text()) == {"git_commit": f"{head}-dirty",
                                                           "git_dirty_files": "params.yaml"}
