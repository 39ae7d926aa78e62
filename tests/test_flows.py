"""Prefect orchestration: the pipeline flow on a tiny project, retraining decisions, failures, a real server.

The flows run under Prefect's test harness (a temporary server and database); the schedule test starts a real
``prefect server`` on loopback and serves the retraining deployment exactly as ``make retrain-schedule`` does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from conftest import REPO, make_tiny_project, run, tiny_params
from server_helpers import free_port

from catalog_classifier.config.overrides import write_overrides
from catalog_classifier.config.params import ParamsError
from catalog_classifier.ops import dvc_ops
from catalog_classifier.reporting.run_summary import model_decision, summary_markdown

MODEL = "resnet10t"
# The flow's own overrides shrink the tiny project further: one model, one epoch.
OVERRIDES = {"models": f"[{MODEL}]", "train.max_epochs": 1}
SERVER_START_TIMEOUT_S = 240


# --------------------------------------------------------------------------- helpers


def prefect_client() -> Any:
    from prefect import get_client

    return get_client(sync_client=True)


def drain_logs() -> None:
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)


def flow_run_logs(flow_run_id: Any) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    drain_logs()
    messages: list[str] = []
    with prefect_client() as client:
        while True:
            page = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                    limit=200, offset=len(messages))
            messages += [log.message for log in page]
            if len(page) < 200:
                return "\n".join(messages)


def task_runs(flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with prefect_client() as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run for run in runs}


def artifact_markdown(flow_run_id: Any, key: str) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with prefect_client() as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert len(found) == 1, found
    return found[0].data


def mlflow_snapshot(root: Path) -> dict[str, Any]:
    """Every run and every registered model version with its aliases and tags, to prove nothing moved."""
    database = root / "mlruns" / "mlflow.db"
    if not database.is_file():
        return {"runs": [], "registry": []}
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{database}", registry_uri=f"sqlite:///{database}")
    runs = sorted((r.info.run_id, r.info.status) for e in client.search_experiments()
                  for r in client.search_runs([e.experiment_id]))
    registry = sorted((m.name, sorted(m.aliases.items()), v.version, sorted(v.tags.items()))
                      for m in client.search_registered_models()
                      for v in client.search_model_versions(f"name='{m.name}'"))
    return {"runs": runs, "registry": registry}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # A cold machine needs far longer than Prefect's default 30 s to start the temporary server; offline,
    # the server's telemetry would only log errors.
    with temporary_settings(updates={PREFECT_SERVER_ANALYTICS_ENABLED: False}), \
            prefect_test_harness(server_startup_timeout=SERVER_START_TIMEOUT_S):
        yield


@pytest.fixture(scope="module")
def flowed(harness: None, tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> tuple[Path, Any]:
    """A tiny project reproduced by the pipeline flow, with overrides (one model, one epoch)."""
    from flows.pipeline import pipeline

    root = make_tiny_project(tmp_path_factory.mktemp("flow") / "project", real_data)
    state = pipeline(project_dir=str(root), params_overrides=OVERRIDES, return_state=True)
    return root, state


# --------------------------------------------------------------------------- the pipeline flow


@pytest.mark.slow
def test_pipeline_flow_runs_one_task_per_dvc_stage(flowed: tuple[Path, Any]) -> None:
    root, state = flowed
    assert state.is_completed(), state.message
    stages = dvc_ops.pipeline_stages(root, [MODEL])
    assert stages[:2] == ["split", f"train@{MODEL}"] and f"evaluate@{MODEL}" in stages and "compare" in stages
    runs = task_runs(state.state_details.flow_run_id)
    assert set(runs) == {"apply-params", "plan-stages", "publish-summary", "record-retraining", *stages}
    assert {name: run.state.type.value for name, run in runs.items()} == dict.fromkeys(runs, "COMPLETED")
    summary = state.result()
    assert summary["stages"] == dict.fromkeys(stages, "ran")
    # Tasks ran in the DAG's order.
    started = sorted(stages, key=lambda name: runs[name].start_time)
    assert started == stages


@pytest.mark.slow
def test_overrides_are_written_to_params_and_recorded_in_dvc_lock(flowed: tuple[Path, Any]) -> None:
    root, _ = flowed
    params_text = (root / "params.yaml").read_text()
    params = yaml.safe_load(params_text)
    assert params["models"] == [MODEL] and params["train"]["max_epochs"] == 1
    assert params["train"]["image_size"] == 32  # the rest of the tiny params untouched
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert {"split", f"train@{MODEL}", f"evaluate@{MODEL}", "compare"} <= set(lock)
    assert "train@mobilevitv2_050" not in lock
    assert lock[f"train@{MODEL}"]["params"]["params.yaml"]["train"]["max_epochs"] == 1
    assert lock["compare"]["params"]["params.yaml"]["models"] == [MODEL]
    # Everything DVC knows is up to date: the lock is the record of exactly this run.
    assert dvc_ops.changed_stages(root) == {}


@pytest.mark.slow
def test_mlflow_runs_and_summary_artifact_agree_with_stage_outputs(flowed: tuple[Path, Any]) -> None:
    root, state = flowed
    run_id = json.loads((root / f"artifacts/models/{MODEL}/run.json").read_text())["run_id"]
    evaluated = json.loads((root / f"artifacts/eval/{MODEL}/metrics.json").read_text())
    trained = json.loads((root / f"artifacts/models/{MODEL}/train_metrics.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["catalog-classifier"], output_format="list")
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].info.status == "FINISHED" and runs[0].data.params["train.max_epochs"] == "1"
    assert runs[0].data.metrics["test/f1_macro"] == pytest.approx(evaluated["test"]["f1_macro"])
    assert trained["epochs_run"] == 1

    markdown = artifact_markdown(state.state_details.flow_run_id, "pipeline-summary")
    promoted = "promote" in yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    row = next(line for line in markdown.splitlines() if line.startswith(f"| {MODEL} |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:5] == [MODEL, f"`{run_id}`", f"{evaluated['test']['f1_macro']:.4f}",
                         f"{evaluated['val']['f1_macro']:.4f}", f"{trained['fit_time_s']:.1f}"]
    assert (cells[5] != "not run") if promoted else (cells[5] == "not run")
    assert f"| train@{MODEL} | ran |" in markdown


# --------------------------------------------------------------------------- retraining


@pytest.mark.slow
def test_retrain_skips_with_reason_when_nothing_changed(flowed: tuple[Path, Any]) -> None:
    from flows.retrain import retrain

    root, _ = flowed
    before = mlflow_snapshot(root)
    state = retrain(project_dir=str(root), return_state=True)
    assert state.is_completed(), state.message
    outcome = state.result()
    assert outcome["status"] == "skipped" and outcome["data_version"] == "untracked"
    logs = flow_run_logs(state.state_details.flow_run_id)
    assert "skipped: neither data (version untracked) nor params nor code changed" in logs
    assert mlflow_snapshot(root) == before
    assert set(task_runs(state.state_details.flow_run_id)) == {"pull-newest-data", "plan-retraining"}
    # Against the record the pipeline flow left in the project's registry, not against dvc.lock.
    assert "since the last retraining recorded in registry sqlite:///" in logs
    assert f"registry sqlite:///{root / 'mlruns' / 'mlflow.db'}, model catalog-classifier (commit " in logs


@pytest.mark.slow
def test_retrain_after_a_params_change_reruns_only_stale_stages_and_pushes(
        flowed: tuple[Path, Any], tmp_path: Path) -> None:
    from flows.retrain import retrain

    root, _ = flowed
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "store", str(remote)], root)
    # Only the compare stage depends on this key: the cheapest real change to retrain on.
    write_overrides(root / "params.yaml", {"compare.out_md": "artifacts/comparison-table.md"})
    before = mlflow_snapshot(root)

    state = retrain(project_dir=str(root), return_state=True)
    assert state.is_completed(), state.message
    outcome = state.result()
    assert outcome["status"] == "retrained"
    assert [line.split(":")[0] for line in outcome["changes"]] == ["compare"]
    assert "params.yaml" in outcome["changes"][0]
    assert outcome["summary"]["stages"] == {**dict.fromkeys(outcome["summary"]["stages"], "skipped"),
                                            "compare": "ran"}
    assert (root / "artifacts/comparison-table.md").read_text().startswith("| model |")
    assert mlflow_snapshot(root) == before  # nothing retrained: no new MLflow run, registry as it was
    assert outcome["push"].startswith(f"pushed to 'store' ({remote})")
    # The remote now holds every cached output, e.g. the weights as DVC hashed them in dvc.lock.
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    weights = next(o for o in lock[f"train@{MODEL}"]["outs"] if o["path"].endswith("model.pt"))
    assert (remote / "files" / "md5" / weights["md5"][:2] / weights["md5"][2:]).is_file()
    assert dvc_ops.changed_stages(root) == {}


# --------------------------------------------------------------------------- failures


@pytest.mark.slow
def test_failing_stage_fails_the_flow_with_its_error_and_leaves_registry_untouched(
        flowed: tuple[Path, Any], tmp_path: Path) -> None:
    from flows.pipeline import pipeline

    source, _ = flowed
    root = tmp_path / "broken"
    shutil.copytree(source, root, symlinks=True)
    (root / "data/flipkart_com-ecommerce_sample_1050.csv").write_text('uniq_id,image\n"never closed\n')
    before = mlflow_snapshot(root)
    assert before["runs"]  # the copy has history that must survive

    state = pipeline(project_dir=str(root), return_state=True)
    assert state.is_failed()
    assert "DVC stage 'split' failed" in state.message and "cannot be parsed as CSV" in state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert runs["split"].state.type.value == "FAILED"
    assert runs["split"].run_count == 1  # a rejected input is not retried (params allow 2 retries)
    assert not any(name.startswith(("train@", "evaluate@", "explain@", "promote")) for name in runs)
    logs = flow_run_logs(state.state_details.flow_run_id)
    assert "catalog-classifier split: error: catalogue" in logs and "cannot be parsed as CSV" in logs
    assert "DVC stage 'split' failed (its command exited with 2" in logs
    assert mlflow_snapshot(root) == before


@pytest.mark.slow
def test_invalid_override_fails_before_anything_is_written(flowed: tuple[Path, Any], tmp_path: Path) -> None:
    from flows.pipeline import pipeline

    source, _ = flowed
    params_before = (source / "params.yaml").read_text()
    lock_before = (source / "dvc.lock").read_text()
    state = pipeline(project_dir=str(source), params_overrides={"train.max_epochs": 0}, return_state=True)
    assert state.is_failed()
    assert "train.max_epochs" in state.message
    assert (source / "params.yaml").read_text() == params_before
    assert (source / "dvc.lock").read_text() == lock_before


@pytest.mark.slow
def test_transient_stage_failure_is_retried(harness: None, tmp_path: Path) -> None:
    """A stage whose command fails once as transient (exit 75) succeeds on the retry params allow."""
    from flows.pipeline import pipeline

    root = tmp_path / "flaky"
    root.mkdir()
    params = tiny_params()
    params["orchestration"].update(task_retries=1, retry_delay_s=0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "flaky.py").write_text(
        "import pathlib, sys\n"
        "marker = pathlib.Path('crashed-once')\n"
        "if not marker.exists():\n"
        "    marker.touch()\n"
        "    print('simulated crash', flush=True)\n"
        "    sys.exit(75)\n"
        "pathlib.Path('out.txt').write_text('ok')\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"split": {
        "cmd": f"{sys.executable} flaky.py", "deps": ["flaky.py"], "outs": ["out.txt"]}}}))
    run(["dvc", "init", "--no-scm", "-q"], root)

    state = pipeline(project_dir=str(root), return_state=True)
    assert state.is_completed(), state.message
    split = task_runs(state.state_details.flow_run_id)["split"]
    assert split.run_count == 2 and split.state.type.value == "COMPLETED"
    assert (root / "out.txt").read_text() == "ok"
    assert "simulated crash" in flow_run_logs(state.state_details.flow_run_id)


# --------------------------------------------------------------------------- a real server and the schedule


@pytest.mark.slow
def test_served_retraining_deployment_carries_the_cron_of_params(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    project = tmp_path / "project"
    project.mkdir()
    params = tiny_params()
    params["orchestration"]["server_port"] = port
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    orchestration = params["orchestration"]
    api = f"http://127.0.0.1:{port}/api"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_UI_ENABLED="false")
    processes: list[subprocess.Popen] = []

    def start(action: str, log_name: str) -> subprocess.Popen:
        log = (tmp_path / log_name).open("w")
        process = subprocess.Popen([sys.executable, "-m", "flows.retrain", action, "--project-dir", str(project)],
                                   cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(process)
        return process

    def wait_for(check: Any, process: subprocess.Popen, log_name: str) -> Any:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"{log_name} exited ({process.returncode}):\n{(tmp_path / log_name).read_text()}")
            try:
                if found := check():
                    return found
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(1)
        pytest.fail(f"timed out; {log_name}:\n{(tmp_path / log_name).read_text()}")

    def healthy() -> bool:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
            return response.status == 200

    try:
        server = start("server", "server.log")
        wait_for(healthy, server, "server.log")
        serving = start("serve", "serve.log")
        with temporary_settings(updates={PREFECT_API_URL: api}):
            def deployment() -> Any:
                with prefect_client() as client:
                    return client.read_deployment_by_name(f"scheduled-retraining/{orchestration['deployment']}")

            found = wait_for(deployment, serving, "serve.log")
        assert [s.schedule.cron for s in found.schedules] == [orchestration["retrain_cron"]]
        assert found.schedules[0].schedule.timezone == orchestration["timezone"]
        assert found.schedules[0].active
        assert found.parameters == {"project_dir": str(project)}
        assert found.entrypoint == "flows/retrain.py:retrain"
    finally:
        for process in reversed(processes):  # only the processes this test started, by their group
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


# --------------------------------------------------------------------------- units (no Prefect run)


def test_stage_order_follows_the_dag_then_kind_then_model() -> None:
    dot = "\n".join([
        "strict digraph {", '"data.dvc";', '"split";', '"promote";', '"compare";',
        '"train@b";', '"train@a";', '"evaluate@a";', '"evaluate@b";', '"explain@a";', '"explain@b";',
        '"data.dvc" -> "split";', '"split" -> "train@a";', '"split" -> "train@b";',
        '"train@a" -> "evaluate@a";', '"train@b" -> "evaluate@b";', '"train@a" -> "explain@a";',
        '"train@b" -> "explain@b";', '"evaluate@a" -> "compare";', '"evaluate@b" -> "compare";',
        '"compare" -> "promote";', "}"])
    nodes, edges = dvc_ops.parse_dag(dot)
    assert "data.dvc" not in nodes and ("data.dvc", "split") not in edges
    assert dvc_ops.order_stages(nodes, edges, ["a", "b"]) == [
        "split", "train@a", "train@b", "evaluate@a", "evaluate@b", "explain@a", "explain@b", "compare", "promote"]
    with pytest.raises(dvc_ops.DvcError, match="cycle"):
        dvc_ops.order_stages(["x", "y"], [("x", "y"), ("y", "x")], [])


def test_only_transient_failures_are_retryable() -> None:
    assert not dvc_ops.StageFailed("split", 255, 2, "error: bad catalogue").transient
    assert not dvc_ops.StageFailed("train@a", 255, 1, "Traceback ...").transient  # a crash: a bug repeats
    assert dvc_ops.StageFailed("train@a", 255, 75, "error: MLflow tracking server ... is unreachable").transient
    assert dvc_ops.StageFailed("train@a", 255, -9, "killed").transient
    assert not dvc_ops.StageFailed("x", 255, None, "ERROR: Stage 'x' not found").transient
    assert dvc_ops.StageFailed("x", 255, None, "ERROR: Unable to acquire lock. Most likely ...").transient


def test_overrides_keep_comments_and_bad_ones_leave_the_file_alone(tmp_path: Path) -> None:
    target = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", target)
    original = target.read_text()
    with pytest.raises(ParamsError, match="train.max_epochs"):
        write_overrides(target, {"train.max_epochs": "-1"})
    with pytest.raises(ParamsError, match="nosuch"):
        write_overrides(target, {"nosuch.key": 1})
    assert target.read_text() == original

    params = write_overrides(target, {"models": "[resnet10t]", "train.lr": "0.01", "train.image_size": 32})
    assert params.models == ["resnet10t"] and params.train.lr == 0.01
    written = target.read_text()
    changed = {line for line in written.splitlines()} ^ {line for line in original.splitlines()}
    # Only the overridden values changed; comments, nulls and the blank line after the list stay as they were.
    assert changed == {"  - resnet50", "  - mobilevitv2_100", "  - tf_efficientnet_lite0", "  - resnet10t",
                       "  lr: 0.0005", "  lr: 0.01",
                       "  image_size: null             # null: each model's own timm input size; an int overrides "
                       "it (tiny tests)",
                       "  image_size: 32               # null: each model's own timm input size; an int overrides "
                       "it (tiny tests)"}


def test_summary_reads_the_promotion_decision_when_there_is_one() -> None:
    rows = [{"model": "a", "run_id": "r1", "test_f1_macro": 0.81234, "val_f1_macro": 0.7, "fit_time_s": 12.34},
            {"model": "b", "run_id": None, "test_f1_macro": None, "val_f1_macro": None, "fit_time_s": None}]
    promotion = {"decision": "promoted", "promote": True, "version": "3", "source_model": "a",
                 "reason": "beats champion v2 by 0.02", "champion_before": "2", "champion_after": "3"}
    markdown = summary_markdown(rows, promotion, [("split", "ran"), ("promote", "ran")])
    assert "| a | `r1` | 0.8123 | 0.7000 | 12.3 | promoted (v3) |" in markdown
    assert "| b | — | — | — | — | not the candidate |" in markdown
    assert "Decision: **promoted** — beats champion v2 by 0.02" in markdown
    assert model_decision(None, "a") == "not run"
    assert "Promotion: not run" in summary_markdown(rows, None, [])


def _count_stage_runs(monkeypatch: pytest.MonkeyPatch, exits: list[int]) -> tuple[Any, list[int]]:
    """run_stage with dvc_ops.repro_stage replaced: each call fails with the next exit status (0: success)."""
    from flows import pipeline as pipeline_module

    calls: list[int] = []

    def repro(root: Path, stage: str, **kwargs: Any) -> dvc_ops.StageOutcome:
        status = exits[len(calls)]
        calls.append(status)
        if status:
            raise dvc_ops.StageFailed(stage, 255, status, f"catalog-classifier {stage}: error: exit {status}")
        return dvc_ops.StageOutcome(stage, "ran")

    monkeypatch.setattr(pipeline_module.dvc_ops, "repro_stage", repro)
    return pipeline_module.run_stage.with_options(retries=2, retry_delay_seconds=0), calls


def test_a_permanent_failure_runs_once_and_a_transient_one_is_retried(
        harness: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    task, calls = _count_stage_runs(monkeypatch, [2, 2, 2])
    assert task(str(tmp_path), "evaluate@m", return_state=True).is_failed()
    assert calls == [2]  # exit 2 (unknown model, weights that do not fit, bad params): never retried

    task, calls = _count_stage_runs(monkeypatch, [1, 1, 1])
    assert task(str(tmp_path), "train@m", return_state=True).is_failed()
    assert calls == [1]  # an unclassified crash is a bug until shown otherwise

    task, calls = _count_stage_runs(monkeypatch, [75, 75, 0])
    state = task(str(tmp_path), "train@m", return_state=True)
    assert state.is_completed() and state.result() == "ran"
    assert calls == [75, 75, 0]  # tracking server unreachable twice, then up: two retries
