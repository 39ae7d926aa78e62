"""The scheduled retraining's decision: each stage's own inputs against the registry's record (issue #30).

On a tiny copy of the project (the real ``dvc.yaml``, no stage run): the fingerprints do not depend on outputs or
``dvc.lock`` (a fresh clone computes the same ones), and a params, code or data change reruns exactly the stages
that depend on it; the record goes through a real sqlite MLflow registry.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from conftest import make_tiny_project, run

from catalog_classifier.config.overrides import write_overrides
from catalog_classifier.config.params import load_params
from catalog_classifier.ops.stage_inputs import (
    RecordedStages,
    StageInputs,
    all_inputs,
    fingerprints,
    own_hashes,
    plan_retraining,
    read_pipeline,
)
from catalog_classifier.registry.retraining import (
    PART_CHARS,
    RECORD_TAG,
    RetrainingRecord,
    plan_against_registry,
    read_record,
    record_retraining,
    write_record,
)

MODELS = ("resnet10t", "mobilevitv2_050")


def commit(root: Path, message: str) -> None:
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], root)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> Path:
    """A tiny project, data in DVC (data.dvc), everything committed; no stage has run."""
    root = make_tiny_project(tmp_path_factory.mktemp("plan") / "project", real_data, per_class=2)
    run(["dvc", "add", "-q", "data"], root)
    commit(root, "data in DVC")
    return root


def recorded(stages: list[StageInputs]) -> RecordedStages:
    return RecordedStages(fingerprints(stages), own_hashes(stages), all_inputs(stages))


def actions(plan) -> dict[str, str]:  # noqa: ANN001 - a RetrainPlan
    return {verdict.stage: verdict.action for verdict in plan.verdicts}


def test_a_fresh_clone_without_outputs_or_lock_has_the_same_fingerprints(project: Path, tmp_path: Path) -> None:
    stages = read_pipeline(project)
    names = [stage.name for stage in stages]
    assert names[0] == "split" and names[-2:] == ["promote", "report"]
    assert {f"train@{model}" for model in MODELS} <= set(names)
    split = stages[0]
    md5 = (project / "data.dvc").read_text().split("md5: ")[1].split()[0]
    # Data by its pinned version, params by value, code by content, produced files by the stage that writes them.
    assert split.inputs["data/Images"] == f"data.dvc md5 {md5}"
    assert split.inputs["params.yaml:split.seed"] == json.dumps(load_params(project / "params.yaml").split.seed)
    assert len(split.inputs["src/catalog_classifier/stages/split.py"]) == 16
    train = next(stage for stage in stages if stage.name == "train@resnet10t")
    assert train.upstream == ("split",) and "artifacts/splits/train.csv" not in train.inputs
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "data").exists() and not (clone / "dvc.lock").exists()
    assert fingerprints(read_pipeline(clone)) == fingerprints(stages)


def test_unchanged_pipeline_plans_nothing(project: Path) -> None:
    stages = read_pipeline(project)
    plan = plan_retraining(stages, recorded(stages), "the record")
    assert plan.nothing_to_do and plan.to_run == [] and plan.changed == []
    assert set(actions(plan).values()) == {"unchanged"}


def test_no_record_reruns_everything(project: Path) -> None:
    stages = read_pipeline(project)
    plan = plan_retraining(stages, None, "nothing recorded")
    assert plan.changed == [stage.name for stage in stages] and not plan.nothing_to_do


def test_a_train_param_reruns_the_training_and_everything_below_it_not_the_split(project: Path) -> None:
    before = read_pipeline(project)
    write_overrides(project / "params.yaml", {"train.lr": 0.004})
    try:
        plan = plan_retraining(read_pipeline(project), recorded(before), "the record",
                               present={"artifacts/splits/train.csv": False})
    finally:
        write_overrides(project / "params.yaml", {"train.lr": 0.003})
    found = actions(plan)
    assert plan.changed == [f"train@{model}" for model in MODELS]
    assert {name for name, action in found.items() if action == "downstream"} == {
        *(f"{kind}@{model}" for kind in ("evaluate", "explain") for model in MODELS), "compare", "promote", "report"}
    assert found["split"] == "needed"  # read by the trainings: DVC restores or reproduces its outputs
    train = next(v for v in plan.verdicts if v.stage == "train@resnet10t")
    assert train.reasons == ("params.yaml:train.lr 0.003 -> 0.004",)
    split = next(v for v in plan.verdicts if v.stage == "split")
    # Every running stage that lists a split file (all but compare, which reads models and evaluations only).
    running = [name for name, action in found.items() if action in ("changed", "downstream")]
    assert split.reasons == tuple(sorted(name for name in running if name != "compare"))
    assert plan.lines()[0].endswith("; outputs absent from this clone (artifacts/splits/train.csv, artifacts/splits/"
                                    "val.csv, artifacts/splits/test.csv, ...): DVC restores them from its cache or "
                                    "run-cache, else reproduces the stage")


def test_a_report_only_change_reruns_the_report_and_never_promote(project: Path) -> None:
    before = read_pipeline(project)
    page = project / "src/catalog_classifier/reporting/page.py"
    text = page.read_text()
    page.write_text(text + "\n# a report-only change\n")
    try:
        plan = plan_retraining(read_pipeline(project), recorded(before), "the record")
    finally:
        page.write_text(text)
    found = actions(plan)
    assert plan.changed == ["report"]
    assert [v.reasons for v in plan.verdicts if v.stage == "report"] == [
        ("src/catalog_classifier/reporting/page.py modified",)]
    # The report reads every model's outputs: they are needed (restored, or reproduced if absent), but promote,
    # which registers, is not rerun to feed it.
    assert found["promote"] == "unchanged" and "promote" not in plan.to_run
    assert {name for name, action in found.items() if action == "needed"} == {
        "split", *(f"{kind}@{model}" for kind in ("train", "evaluate", "explain") for model in MODELS), "compare"}


def test_a_report_only_change_without_the_models_outputs_is_deferred_not_retrained(project: Path) -> None:
    """A clone whose remote never received the models' outputs (read-only) would retrain every model to rebuild
    a page: the plan defers it and says why; with the outputs present, or with a change a registry decision
    reads, nothing is deferred."""
    before = read_pipeline(project)
    page = project / "src/catalog_classifier/reporting/page.py"
    text = page.read_text()
    page.write_text(text + "\n# a report-only change\n")
    try:
        stages = read_pipeline(project)
        outs = [out for stage in stages for out in stage.outs]
        absent = plan_retraining(stages, recorded(before), "the record", dict.fromkeys(outs, False))
        present = plan_retraining(stages, recorded(before), "the record", dict.fromkeys(outs, True))
    finally:
        page.write_text(text)
    assert absent.deferred is not None and present.deferred is None
    assert absent.deferred.startswith("only report changed, which no registry decision reads, and the outputs of ")
    assert f"train@{MODELS[0]}" in absent.deferred and "promote" not in absent.to_run
    assert "split" in absent.feeds_registry and "report" not in absent.feeds_registry

    write_overrides(project / "params.yaml", {"train.lr": load_params(project / "params.yaml").train.lr * 2})
    try:
        stages = read_pipeline(project)
        changed = plan_retraining(stages, recorded(before), "the record",
                                  dict.fromkeys((out for stage in stages for out in stage.outs), False))
    finally:
        run(["git", "checkout", "-q", "params.yaml"], project)
    assert changed.deferred is None and f"train@{MODELS[0]}" in changed.changed


def test_a_new_data_version_reruns_every_stage_reading_the_data(project: Path, tmp_path: Path) -> None:
    before = read_pipeline(project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    pointer = clone / "data.dvc"
    md5 = pointer.read_text().split("md5: ")[1].split()[0]
    pointer.write_text(pointer.read_text().replace(md5, "0" * 32 + ".dir"))  # a new commit of data.dvc
    plan = plan_retraining(read_pipeline(clone), recorded(before), "the record")
    # Every stage that lists a file under data/ (split, train, evaluate, explain, promote, and report for its
    # near-duplicate thumbnails) reruns; the rest follows.
    assert set(plan.changed) == {"split", "promote", "report", *(
        f"{kind}@{model}" for kind in ("train", "evaluate", "explain") for model in MODELS)}
    split = next(v for v in plan.verdicts if v.stage == "split")
    assert f"data/Images data.dvc md5 {md5} -> data.dvc md5 {'0' * 32}.dir" in split.reasons


def test_the_record_round_trips_through_the_registry_in_parts(project: Path, tmp_path: Path) -> None:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db", registry_uri=f"sqlite:///{tmp_path}/m.db")
    assert read_record(client, "model") is None
    stages = read_pipeline(project)
    record = RetrainingRecord(stages=fingerprints(stages), own=own_hashes(stages), inputs=all_inputs(stages),
                              git_commit="abc", data_version="d1", recorded_at="2026-12-07T03:00:00+00:00",
                              recorded_by="test")
    text = record.to_json()
    parts = -(-len(text) // PART_CHARS)
    assert parts >= 2  # the real pipeline's record is longer than one registry tag holds
    write_record(client, "model", record)
    assert read_record(client, "model") == record
    tags = client.get_registered_model("model").tags
    assert tags[RECORD_TAG] == str(parts) and all(len(tags[f"{RECORD_TAG}.{i}"]) <= PART_CHARS for i in range(parts))
    smaller = RetrainingRecord(stages={"split": "x"}, own={"split": "y"}, inputs={}, git_commit="def",
                               data_version="d2", recorded_at="t", recorded_by="test")
    write_record(client, "model", smaller)
    assert read_record(client, "model") == smaller
    assert sorted(key for key in client.get_registered_model("model").tags if key.startswith(RECORD_TAG)) == [
        RECORD_TAG, f"{RECORD_TAG}.0"]  # the longer record's other parts are gone


def test_dry_run_reads_the_record_of_the_projects_registry_and_writes_nothing(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.retrain import main

    params = load_params(project / "params.yaml")
    plan, record = plan_against_registry(project, params.mlflow, params.registry.model_name)
    assert record is None and plan.baseline.startswith("no retraining recorded in registry sqlite:///")
    assert not (project / "mlruns" / "mlflow.db").exists()  # a store that does not exist is not created
    written = record_retraining(project, params.mlflow, params.registry.model_name, "test")
    assert written.data_version == (project / "data.dvc").read_text().split("md5: ")[1].split()[0]
    plan, record = plan_against_registry(project, params.mlflow, params.registry.model_name)
    assert record == written and plan.nothing_to_do
    database = project / "mlruns" / "mlflow.db"
    stamp = database.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", "--dry-run", "--project-dir", str(project)]) == 0  # python -m flows.retrain run --dry-run
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"compared with {plan.baseline}"
    assert lines[1] == "would skip: nothing changed"
    assert lines[2:] == [f"  {stage}: unchanged, not run" for stage in (v.stage for v in plan.verdicts)]
    assert database.stat().st_mtime_ns == stamp
