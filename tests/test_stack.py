"""The team stack for real: PostgreSQL, an MLflow server on it, a Prefect server on it, a process work pool and a
worker, started by ``catalog-classifier stack up`` in a temporary folder on free ports and stopped after.

One module-scoped stack serves every test here, in order: ``up`` twice, ``deploy``, the pipeline deployment run by
the worker into MLflow on PostgreSQL, a retraining run in a clone without outputs (skipped against the registry's
record), a backlog of late scheduled retraining runs, a train param change (retrained once, one version) and a
report-only change (nothing registered), PostgreSQL stopped under a stage, and ``down``. The file stays one
pytest-xdist unit (``--dist loadfile``), so the stack is started once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, commit_project, run, tiny_params, write_tiny_catalogue
from server_helpers import free_port

from catalog_classifier.config.overrides import write_overrides
from catalog_classifier.config.params import load_params
from catalog_classifier.infra import lifecycle
from catalog_classifier.infra.composition import SECRETS, SERVICES, TRAINER, StackPlan, deploy_env
from catalog_classifier.infra.services import port_in_use, tree
from catalog_classifier.stages.stack import env_lines
from flows.retrain import ScheduledRun, newer_due_run

MODEL = "resnet10t"
CLI = str(Path(sys.executable).parent / "catalog-classifier")
RUN_TIMEOUT_S = 420  # a flow run on a loaded 2-core machine: clone, dvc pull, five stages each importing torch
# The stack test's pipeline: explain and report add minutes and nothing the stack changes.
KEPT_STAGES = ("split", "train", "evaluate", "compare", "promote")


@dataclass
class Stack:
    project: Path
    plan: StackPlan
    env: dict[str, str]


# --------------------------------------------------------------------------- helpers


def clean_env() -> dict[str, str]:
    """The test's environment without any Prefect or MLflow setting a developer's shell may hold."""
    return {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "MLFLOW_"))}


def cli(stack: Stack, *args: str, env: dict[str, str] | None = None, timeout_s: float = 600,
        ) -> subprocess.CompletedProcess:
    """``catalog-classifier ARGS --params <project>/params.yaml`` in the project, as a user runs it."""
    return subprocess.run([CLI, *args, "--params", str(stack.project / "params.yaml")], cwd=stack.project,
                          capture_output=True, text=True, timeout=timeout_s, env=env or stack.env)


def rest(base: str, method: str, path: str, body: dict | None = None, auth: str | None = None) -> Any:
    headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
    request = urllib.request.Request(f"{base}{path}", method=method, headers=headers,
                                     data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read() or b"null")


def refused(base: str, method: str, path: str, body: dict | None = None, auth: str | None = None) -> int:
    """The HTTP status of a request the server must refuse (fails if it answers 2xx)."""
    try:
        rest(base, method, path, body, auth)
    except urllib.error.HTTPError as err:
        return err.code
    pytest.fail(f"{method} {base}{path} was answered")


def prefect_auth(stack: Stack) -> str:
    return "Basic " + base64.b64encode(stack.plan.secret("prefect-api").encode()).decode()


def mlflow_auth(stack: Stack, user: str = TRAINER, password: str | None = None) -> str:
    password = password if password is not None else stack.plan.secret(f"mlflow-{user}")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def prefect(stack: Stack, method: str, path: str, body: dict | None = None) -> Any:
    return rest(stack.plan.prefect_api_url, method, path, body, prefect_auth(stack))


def mlflow_rest(stack: Stack, method: str, path: str, body: dict | None = None) -> Any:
    return rest(stack.plan.mlflow_url, method, f"/api/2.0/mlflow/{path}", body, mlflow_auth(stack))


def flow_run_logs(stack: Stack, flow_run_id: str) -> str:
    logs = prefect(stack, "POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
    return "\n".join(entry["message"] for entry in logs)


def logs_with(stack: Stack, flow_run_id: str, *texts: str, timeout_s: float = 60) -> str:
    """The run's logs once they hold every one of ``texts`` (a finished run's last lines can arrive a little later:
    its process ships them in batches); fails with the logs it has otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        logs = flow_run_logs(stack, flow_run_id)
        if all(text in logs for text in texts):
            return logs
        if time.monotonic() > deadline:
            missing = [text for text in texts if text not in logs]
            pytest.fail(f"not in the logs of {flow_run_id} after {timeout_s}s: {missing}\n{logs[-4000:]}")
        time.sleep(2)


def wait_for_runs(stack: Stack, ids: list[str], timeout_s: float) -> list[dict]:
    """The flow runs once every one is in a final state; fails with their states and the worker's log if not."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = prefect(stack, "POST", "/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}})
        if len(runs) == len(ids) and all(run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
                                         for run in runs):
            return sorted(runs, key=lambda run: run["expected_start_time"])
        if time.monotonic() > deadline:
            states = {run["name"]: run["state"]["name"] for run in runs}
            pytest.fail(f"flow runs not finished after {timeout_s}s: {states}\n"
                        f"{stack.plan.service('worker').log_tail(6000)}")
        time.sleep(2)


def deployment_id(stack: Stack, flow_and_name: str) -> str:
    flow_name, name = flow_and_name.split("/")
    return prefect(stack, "GET", f"/deployments/name/{flow_name}/{name}")["id"]


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def count_flow_runs(stack: Stack, flow_name: str) -> int:
    return len(prefect(stack, "POST", "/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}}))


# --------------------------------------------------------------------------- fixtures


def write_stack_project(root: Path, real_data: Path, stack_dir: Path) -> Path:
    """A tiny project as a team has it, code and flows committed; one model, one epoch, the stack on free ports."""
    root.mkdir(parents=True)
    write_tiny_catalogue(root / "data", real_data, per_class=6)
    params = tiny_params(max_epochs=1)
    params["models"] = [MODEL]
    params["orchestration"]["server_port"] = free_port()
    params["stack"].update(dir=str(stack_dir), postgres_port=free_port(), mlflow_port=free_port(),
                           work_pool="test-pool", worker_name="test-worker")
    commit_project(root, params, ["/mlruns", "/data"], "tiny project")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {name: stages[name] for name in KEPT_STAGES}},
                                                  sort_keys=False))
    shutil.copytree(REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "prefect.yaml", root / "prefect.yaml")
    return root


def share_data(root: Path, remote: Path) -> None:
    """The data in DVC with a shared remote, everything committed: what a worker's clone pulls."""
    run(["dvc", "add", "-q", "data"], root)
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], root)
    run(["dvc", "push", "-q"], root)
    commit_all(root, "data in DVC, flows, stack")


def commit_all(root: Path, message: str) -> None:
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], root)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> Iterator[Stack]:
    # Not under pytest's tmp_path: that tree is private to root, and as root PostgreSQL runs as `postgres`.
    stack_dir = Path(tempfile.mkdtemp(prefix="catalog-stack-"))
    base = tmp_path_factory.mktemp("stack")
    plan = starting = None
    try:
        project = write_stack_project(base / "project", real_data, stack_dir)
        plan = StackPlan.from_params(load_params(project / "params.yaml"), project)
        env = clean_env()
        # `stack up` (a minute, mostly the two servers' first start) runs while the data goes into DVC.
        starting = subprocess.Popen([CLI, "stack", "up", "--params", str(project / "params.yaml")], cwd=project,
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        share_data(project, base / "dvc-remote")
        output, _ = starting.communicate(timeout=600)
        assert starting.returncode == 0, output
        yield Stack(project, plan, env)
    finally:
        if starting is not None and starting.poll() is None:
            starting.kill()
            starting.wait()
        if plan is not None:
            lifecycle.down(plan)
        shutil.rmtree(stack_dir, ignore_errors=True)


# --------------------------------------------------------------------------- the stack, in order


@pytest.mark.slow
def cluster_url(stack: Stack, database: str) -> str:
    cluster = stack.plan.cluster()
    return f"postgresql://catalog:{cluster.password()}@127.0.0.1:{cluster.port}/{database}"


def test_stack_up_twice_is_harmless(stack: Stack) -> None:
    pids = {name: stack.plan.service(name).pid() for name in SERVICES}
    assert all(pids.values()), pids
    again = cli(stack, "stack", "up")
    assert again.returncode == 0, again.stderr
    lines = {line.split()[0]: line for line in again.stdout.splitlines() if line.split()}
    for name in ("postgres", *SERVICES):
        assert lines[name].split()[1] == "up" and lines[name].endswith("(running)"), again.stdout
    assert {name: stack.plan.service(name).pid() for name in SERVICES} == pids  # nothing restarted
    assert all(state.healthy for state in lifecycle.status(stack.plan))
    env = env_lines(stack.plan) + "\n"
    assert f"export MLFLOW_TRACKING_URI={stack.plan.mlflow_url}\n" in env
    assert f"export PREFECT_API_URL={stack.plan.prefect_api_url}\n" in env
    assert "export MLFLOW_HTTP_REQUEST_MAX_RETRIES=2\n" in env
    # Promoters share the advisory lock in MLflow's database; tuning workers share the optuna database.
    # Each URL's password is read from its 0600 file when the shell evaluates the line: never printed.
    evaluated = run(["bash", "-c", env + 'echo "$CATALOG_REGISTRY_LOCK_URL $CATALOG_TUNE_STORAGE"'],
                    stack.project).stdout.split()
    assert evaluated == [cluster_url(stack, "mlflow"), cluster_url(stack, "optuna")]
    assert stack.plan.cluster().password() not in env
    # The servers keep their state in PostgreSQL, not in files of their own.
    cluster = stack.plan.cluster()
    assert cluster.psql("SELECT count(*) FROM alembic_version", "mlflow").strip() == "1"
    assert cluster.psql("SELECT count(*) FROM work_pool WHERE name = 'test-pool'", "prefect").strip() == "1"


@pytest.mark.slow
def test_deploy_registers_the_three_deployments_with_the_schedule_of_params(stack: Stack) -> None:
    deployed = cli(stack, "stack", "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    params = load_params(stack.project / "params.yaml")
    found = {item["name"]: item for item in prefect(stack, "POST", "/deployments/filter", {})}
    assert set(found) == {"pipeline", params.orchestration.deployment, "tune"}
    assert {item["work_pool_name"] for item in found.values()} == {"test-pool"}
    retrain = found[params.orchestration.deployment]
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) for s in retrain["schedules"]] == [
        (params.orchestration.retrain_cron, params.orchestration.timezone, True)]
    assert retrain["entrypoint"] == "flows/retrain.py:retrain"
    clone, data = retrain["pull_steps"]
    assert clone["prefect.deployments.steps.git_clone"] == {
        "id": "clone", "repository": f"file://{stack.project}", "branch": run(
            ["git", "rev-parse", "--abbrev-ref", "HEAD"], stack.project).stdout.strip()}
    # Which registry the deployments promote into, and what the remote's writability means for retraining.
    assert (f"registry: the deployments promote into the MLflow registry at {stack.plan.mlflow_url} (model "
            f"'{params.registry.model_name}'), the team's record") in deployed.stdout
    assert f"DVC remote {stack.project.parent / 'dvc-remote'} is writable: retraining runs push" in deployed.stdout
    script = data["prefect.deployments.steps.run_shell_script"]["script"]
    assert script.splitlines() == [
        f'dvc remote add --local --force --default deployment "{stack.project.parent / "dvc-remote"}"',
        "dvc pull --allow-missing"]


@pytest.mark.slow
def test_the_worker_runs_the_pipeline_deployment_into_mlflow_on_postgres(stack: Stack) -> None:
    run_id = prefect(stack, "POST", f"/deployments/{deployment_id(stack, 'catalog-pipeline/pipeline')}"
                     "/create_flow_run", {"parameters": {"project_dir": str(stack.project)}})["id"]
    [flow_run] = wait_for_runs(stack, [run_id], RUN_TIMEOUT_S)
    assert flow_run["state"]["type"] == "COMPLETED", flow_run_logs(stack, run_id)[-4000:]
    assert flow_run["work_pool_name"] == "test-pool"
    logs_with(stack, run_id, "Deployment step 'git_clone' completed successfully",
              "Deployment step 'run_shell_script' completed successfully")  # dvc pull in the clone

    # The run and the registered version, through the MLflow server's REST API.
    params = load_params(stack.project / "params.yaml")
    recorded = json.loads((stack.project / f"artifacts/models/{MODEL}/run.json").read_text())
    evaluated = json.loads((stack.project / f"artifacts/eval/{MODEL}/metrics.json").read_text())
    experiment = mlflow_rest(stack, "GET", f"experiments/get-by-name?experiment_name={params.mlflow.experiment}")
    runs = mlflow_rest(stack, "POST", "runs/search", {"experiment_ids": [experiment["experiment"]["experiment_id"]]})
    [logged] = runs["runs"]
    assert logged["info"]["run_id"] == recorded["run_id"] and logged["info"]["status"] == "FINISHED"
    metrics = {metric["key"]: metric["value"] for metric in logged["data"]["metrics"]}
    assert metrics["test/f1_macro"] == pytest.approx(evaluated["test"]["f1_macro"])
    # Artifacts went through the server (proxied) into the stack's folder, not into the project's mlruns/.
    assert logged["info"]["artifact_uri"].startswith("mlflow-artifacts:/")
    assert not (stack.project / "mlruns" / "mlflow.db").exists()
    assert list(stack.plan.artifacts_dir.rglob("MLmodel"))
    model = mlflow_rest(stack, "GET", f"registered-models/get?name={params.registry.model_name}")
    versions = model["registered_model"]["latest_versions"]
    assert [(v["version"], v["run_id"]) for v in versions] == [("1", recorded["run_id"])]
    aliases = {alias["alias"]: alias["version"] for alias in model["registered_model"]["aliases"]}
    promotion = json.loads((stack.project / params.registry.out_json).read_text())
    assert aliases["challenger"] == "1" and (aliases.get("champion") == "1") == promotion["promote"]
    # ... and PostgreSQL holds them.
    cluster = stack.plan.cluster()
    assert cluster.psql("SELECT run_uuid FROM runs", "mlflow").split() == [recorded["run_id"]]
    assert cluster.psql("SELECT name FROM registered_models", "mlflow").split() == [params.registry.model_name]


def run_retraining(stack: Stack) -> dict:
    """One run of the retraining deployment now, by the worker, in a fresh clone; the finished flow run."""
    name = load_params(stack.project / "params.yaml").orchestration.deployment
    retrain = deployment_id(stack, f"scheduled-retraining/{name}")
    run_id = prefect(stack, "POST", f"/deployments/{retrain}/create_flow_run", {})["id"]
    [flow_run] = wait_for_runs(stack, [run_id], RUN_TIMEOUT_S)
    assert flow_run["state"]["type"] == "COMPLETED", flow_run_logs(stack, run_id)[-4000:]
    return flow_run


def registered_versions(stack: Stack) -> list[str]:
    name = load_params(stack.project / "params.yaml").registry.model_name
    found = mlflow_rest(stack, "GET", f"model-versions/search?filter=name%3D%27{name}%27")
    return sorted(version["version"] for version in found.get("model_versions", []))


@pytest.mark.slow
def test_retraining_in_a_fresh_clone_without_outputs_skips_against_the_registry_record(stack: Stack) -> None:
    """Right after the pipeline ran into the stack: nothing pushed, no dvc.lock committed (``dvc status`` in the
    worker's clone would call every stage stale), yet the run skips, naming the registry's record."""
    project = stack.project
    assert run(["git", "ls-files", "dvc.lock"], project).stdout == ""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    weights = next(out for out in lock[f"train@{MODEL}"]["outs"] if out["path"].endswith("model.pt"))["md5"]
    assert not (project.parent / "dvc-remote" / "files" / "md5" / weights[:2] / weights[2:]).exists()  # data only
    pipeline_runs = count_flow_runs(stack, "catalog-pipeline")
    flow_run = run_retraining(stack)
    model = load_params(project / "params.yaml").registry.model_name
    logs = logs_with(stack, flow_run["id"], "skipped: neither data (version ", "nor params nor code changed for any "
                     f"stage since the last retraining recorded in registry {stack.plan.mlflow_url}, model {model} "
                     "(commit ", "plan: split: unchanged, not run", "plan: promote: unchanged, not run")
    assert "rerun" not in logs
    assert count_flow_runs(stack, "catalog-pipeline") == pipeline_runs  # no pipeline subflow
    assert registered_versions(stack) == ["1"]


@pytest.mark.slow
def test_anonymous_wrong_password_and_reader_writes_are_refused(stack: Stack) -> None:
    """Runs after the pipeline run: the experiment and the registered model exist, owned by the trainer."""
    params = load_params(stack.project / "params.yaml")
    mlflow_api, name = f"{stack.plan.mlflow_url}/api/2.0/mlflow", params.registry.model_name
    prefect_api = stack.plan.prefect_api_url
    assert refused(mlflow_api, "POST", "/experiments/search", {"max_results": 1}) == 401  # anonymous
    assert refused(mlflow_api, "GET", f"/registered-models/get?name={name}") == 401
    assert refused(prefect_api, "POST", "/flow_runs/filter", {}) == 401
    wrong = mlflow_auth(stack, TRAINER, "not-the-password")
    assert refused(mlflow_api, "POST", "/experiments/search", {"max_results": 1}, wrong) == 401
    wrong_prefect = "Basic " + base64.b64encode(b"not-the-auth-string").decode()
    assert refused(prefect_api, "POST", "/flow_runs/filter", {}, wrong_prefect) == 401
    reader = mlflow_auth(stack, "reader")
    # The reader browses runs and models ...
    model = rest(mlflow_api, "GET", f"/registered-models/get?name={name}", auth=reader)["registered_model"]
    assert model["name"] == name
    experiment = rest(mlflow_api, "GET", f"/experiments/get-by-name?experiment_name={params.mlflow.experiment}",
                      auth=reader)["experiment"]
    assert rest(mlflow_api, "POST", "/runs/search", {"experiment_ids": [experiment["experiment_id"]]},
                auth=reader)["runs"]
    # ... but cannot register a version, move an alias, or log into the team's experiment.
    version = model["latest_versions"][0]
    assert refused(mlflow_api, "POST", "/model-versions/create",
                   {"name": name, "source": version["source"], "run_id": version["run_id"]}, reader) == 403
    assert refused(mlflow_api, "POST", "/registered-models/alias",
                   {"name": name, "alias": "champion", "version": version["version"]}, reader) == 403
    assert refused(mlflow_api, "POST", "/runs/create", {"experiment_id": experiment["experiment_id"]}, reader) == 403
    # Health stays open for probes, and says nothing else.
    assert rest(prefect_api, "GET", "/health") is True
    with urllib.request.urlopen(f"{stack.plan.mlflow_url}/health", timeout=30) as answer:
        assert answer.status == 200


@pytest.mark.slow
def test_no_secret_leaks_into_files_logs_mlflow_or_ps(stack: Stack) -> None:
    secrets = {name: stack.plan.secret_file(name).read_text().strip() for name in SECRETS}
    secrets["postgres"] = stack.plan.cluster().password()
    for name in SECRETS:
        assert stat.S_IMODE(stack.plan.secret_file(name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(stack.plan.secrets_dir.stat().st_mode) == 0o700
    socket_dir = stack.plan.cluster().socket_dir
    [socket] = socket_dir.glob(".s.PGSQL.*[0-9]")
    assert stat.S_IMODE(socket.stat().st_mode) == 0o700 and stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    env = env_lines(stack.plan)
    places = {"stack env": env, "ps": run(["ps", "-eo", "args"], stack.project).stdout}
    tracked = run(["git", "ls-files"], stack.project).stdout.split()
    places.update({f"repo {path}": (stack.project / path).read_text(errors="replace") for path in tracked
                   if (stack.project / path).is_file()})
    places.update({f"log {path.name}": path.read_text(errors="replace")
                   for path in (stack.plan.dir / "logs").glob("*.log")})
    experiment = mlflow_rest(stack, "GET", "experiments/get-by-name?experiment_name="
                             + load_params(stack.project / "params.yaml").mlflow.experiment)["experiment"]
    runs = mlflow_rest(stack, "POST", "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    places["mlflow runs"] = json.dumps(runs)
    name = load_params(stack.project / "params.yaml").registry.model_name
    places["mlflow model"] = json.dumps(mlflow_rest(stack, "GET", f"registered-models/get?name={name}"))
    leaks = [(secret, where) for secret, value in secrets.items() for where, text in places.items() if value in text]
    assert leaks == []
    assert f'export MLFLOW_TRACKING_PASSWORD="$(cat {stack.plan.secret_file("mlflow-trainer")})"' in env


def latest_expected_start(stack: Stack, deployment: str) -> datetime | None:
    """When the deployment's most recently due run (any state) was due, the schedule's future runs left out; None
    if it has none."""
    runs = prefect(stack, "POST", "/flow_runs/filter", {"flow_runs": {
        "deployment_id": {"any_": [deployment]}, "expected_start_time": {"before_": datetime.now(UTC).isoformat()}},
        "sort": "EXPECTED_START_TIME_DESC", "limit": 1})
    return datetime.fromisoformat(runs[0]["expected_start_time"]) if runs else None


@pytest.mark.slow
def test_a_backlog_of_late_scheduled_runs_retrains_once(stack: Stack) -> None:
    """The worker is down while three scheduled retraining runs come due; once it is back, only the newest does
    the work (and, the project being unchanged since dvc.lock, finds nothing to retrain in its fresh clone)."""
    project = stack.project
    run(["dvc", "push", "-q"], project)  # the outputs of the pipeline run, for the clones to pull
    commit_all(project, "dvc.lock of the reproduction")
    pipeline_runs = count_flow_runs(stack, "catalog-pipeline")
    mlflow_runs = stack.plan.cluster().psql("SELECT count(*) FROM runs", "mlflow").strip()
    stack.plan.service("worker").stop()
    name = load_params(project / "params.yaml").orchestration.deployment
    retrain = deployment_id(stack, f"scheduled-retraining/{name}")
    # The backlog is due after every earlier run of the deployment: a run that completed after a backlog run was
    # due covers that run's work (the flow rightly lets it supersede the backlog), and the retraining tests above
    # have just run this deployment.
    earlier = latest_expected_start(stack, retrain)
    start = max(earlier + timedelta(seconds=1), datetime.now(UTC) - timedelta(minutes=3)) if earlier else (
        datetime.now(UTC) - timedelta(minutes=3))
    ids = [prefect(stack, "POST", f"/deployments/{retrain}/create_flow_run", {"state": {
        "type": "SCHEDULED", "name": "Scheduled",
        "state_details": {"scheduled_time": (start + timedelta(seconds=seconds)).isoformat()}}})["id"]
        for seconds in (0, 1, 2)]

    def all_late() -> bool:
        runs = prefect(stack, "POST", "/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}})
        return [run["state"]["name"] for run in runs] == ["Late"] * 3

    deadline = time.monotonic() + 120
    while not all_late():  # Prefect's late-runs service marks them within seconds of their lateness threshold
        assert time.monotonic() < deadline, "the runs never became Late"
        time.sleep(1)

    states = {state.name: state.action for state in lifecycle.up(stack.plan)}  # what `make stack` runs
    assert states == {"postgres": "running", "mlflow": "running", "prefect-server": "running", "worker": "started"}
    oldest, middle, newest = wait_for_runs(stack, ids, RUN_TIMEOUT_S)
    assert [run["state"]["type"] for run in (oldest, middle, newest)] == ["COMPLETED"] * 3
    for superseded in (oldest, middle):
        # Named by its id: the run's name changes when it starts (the flow's run-name template).
        logs = logs_with(stack, superseded["id"], "skipped: superseded by run '", f"({newest['id']}, due ")
        assert "data version" not in logs  # it stopped before pulling anything
    logs_with(stack, newest["id"], "no later run of this deployment is due: this run goes ahead",
              "skipped: neither data", "nor params nor code changed")
    assert count_flow_runs(stack, "catalog-pipeline") == pipeline_runs  # no pipeline subflow ran
    assert stack.plan.cluster().psql("SELECT count(*) FROM runs", "mlflow").strip() == mlflow_runs


@pytest.mark.slow
def test_a_train_param_change_retrains_its_stages_once_and_a_report_only_change_registers_nothing(
        stack: Stack) -> None:
    project = stack.project
    params = load_params(project / "params.yaml")
    write_overrides(project / "params.yaml", {"train.lr": params.train.lr * 2})
    commit_all(project, "train.lr doubled")
    pipeline_runs = count_flow_runs(stack, "catalog-pipeline")
    flow_run = run_retraining(stack)
    logs_with(stack, flow_run["id"],
              f"plan: train@{MODEL}: rerun (params.yaml:train.lr {params.train.lr} -> {params.train.lr * 2})",
              "plan: split: unchanged, read by ", f"plan: evaluate@{MODEL}: to DVC, which reruns it if",
              "retraining (1 stage(s) changed since the last retraining recorded in registry ")
    # What DVC did is in the pipeline subflow's own logs: the changed stage and those below it ran, split did not.
    [subflow] = prefect(stack, "POST", "/flow_runs/filter", {"flows": {"name": {"any_": ["catalog-pipeline"]}},
                                                              "sort": "START_TIME_DESC", "limit": 1})
    assert subflow["parent_task_run_id"] is not None
    logs_with(stack, subflow["id"], f"stage train@{MODEL}: ran", f"stage evaluate@{MODEL}: ran", "stage compare: ran",
              "stage promote: ran", "stage split: unchanged since dvc.lock, skipped",
              f"recorded in registry {stack.plan.mlflow_url}: commit ")
    assert count_flow_runs(stack, "catalog-pipeline") == pipeline_runs + 1
    assert registered_versions(stack) == ["1", "2"]  # one version, through the gate

    # Changed means retrained once: the next run skips. A change to a module only the report reads (not a stage
    # of this tiny pipeline) changes no stage's inputs: skipped too, nothing registered.
    page = project / "src/catalog_classifier/reporting/page.py"
    page.write_text(page.read_text() + "\n# a report-only change\n")
    commit_all(project, "report wording")
    again = run_retraining(stack)
    logs_with(stack, again["id"], "skipped: neither data (version ", "nor params nor code changed for any stage",
              f"plan: train@{MODEL}: unchanged, not run")
    assert count_flow_runs(stack, "catalog-pipeline") == pipeline_runs + 1
    assert registered_versions(stack) == ["1", "2"]


@pytest.mark.slow
def test_with_postgres_down_a_stage_fails_in_seconds_and_writes_nothing(stack: Stack) -> None:
    model_dir = stack.project / f"artifacts/models/{MODEL}"
    before = digests(model_dir)
    stack.plan.cluster().stop()
    env = {**stack.env, **stack.plan.client_env()}
    started = time.monotonic()
    failed = cli(stack, "train", "--model", MODEL, env=env, timeout_s=300)
    elapsed = time.monotonic() - started
    assert failed.returncode == 75, failed.stdout + failed.stderr  # transient: the flow would retry it
    [line] = failed.stderr.strip().splitlines()  # one line, no traceback
    # MLflow answers 503 (or 500) with the driver's one-line reason, e.g. "connection ... refused".
    assert line.startswith(f"catalog-classifier train: error: MLflow tracking server {stack.plan.mlflow_url} answers "
                           "but its backend store does not (HTTP 50"), line
    assert "connection" in line.lower(), line
    assert line.endswith("is its database up? (make stack-status)"), line
    assert "Traceback" not in failed.stderr
    assert elapsed < 60, elapsed  # MLflow's own retries would take ~4 minutes (7 tries, exponential back-off)
    assert digests(model_dir) == before  # run.json, weights, metrics: untouched
    states = {state.name: state.healthy for state in lifecycle.status(stack.plan)}
    assert not states["postgres"] and states["mlflow"]  # the server answers /health; its store does not


@pytest.mark.slow
def test_stack_down_leaves_nothing_running(stack: Stack) -> None:
    processes = {name: tree(pid) for name in SERVICES if (pid := stack.plan.service(name).pid())}
    assert set(processes) == set(SERVICES)
    stack.plan.cluster().start()  # down stops a running database too
    down = cli(stack, "stack", "down", timeout_s=180)
    assert down.returncode == 0, down.stderr
    print(down.stdout)  # how long each part took to stop (-s shows it)
    alive = [pid for pids in processes.values() for pid in pids if _alive(pid)]
    assert alive == []
    assert not stack.plan.cluster().running()
    for name in ("mlflow", "prefect-server"):
        assert not port_in_use(*stack.plan.listens_on(name))
    assert not port_in_use(stack.plan.cluster().host, stack.plan.postgres_port)
    assert {state.action for state in lifecycle.down(stack.plan)} == {"not running"}  # down twice: harmless
    assert not any(state.healthy for state in lifecycle.status(stack.plan))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


# --------------------------------------------------------------------------- units (no stack)


def _run(name: str, minutes: int, state: str = "SCHEDULED") -> ScheduledRun:
    return ScheduledRun(name, name, datetime(2026, 1, 5, 3, tzinfo=UTC) + timedelta(minutes=minutes), state)


def test_of_a_backlog_only_the_newest_due_run_goes_ahead() -> None:
    now = datetime(2026, 1, 5, 4, tzinfo=UTC)
    backlog = [_run("a", 0), _run("b", 10), _run("c", 20), _run("future", 120)]
    decisions = {run.id: newer_due_run(run, backlog, now) for run in backlog[:3]}
    assert {key: value.id if value else None for key, value in decisions.items()} == {"a": "c", "b": "c", "c": None}
    # A newer run that failed or was cancelled does not take the work over; one that completed does.
    assert newer_due_run(_run("a", 0), [_run("c", 20, "FAILED"), _run("d", 30, "CANCELLED")], now) is None
    assert newer_due_run(_run("a", 0), [_run("c", 20, "COMPLETED")], now).id == "c"
    # Equal due times: the id decides, so exactly one of the two goes ahead.
    tie = [ScheduledRun("x", "x", now, "SCHEDULED"), ScheduledRun("y", "y", now, "SCHEDULED")]
    assert [newer_due_run(run, tie, now) is None for run in tie] == [False, True]


def test_prefect_yaml_takes_every_params_value_from_deploy_env(tmp_path: Path) -> None:
    """prefect.yaml repeats nothing of params.yaml: the pool, schedule and deployment name are placeholders that
    ``stack deploy`` fills from params (and the clone, for the code and data)."""
    text = (REPO / "prefect.yaml").read_text()
    spec = yaml.safe_load(text)
    params = load_params(REPO / "params.yaml")
    assert params.orchestration.retrain_cron not in text and params.stack.work_pool not in text
    [retrain] = [item for item in spec["deployments"] if item["entrypoint"] == "flows/retrain.py:retrain"]
    assert retrain["name"] == "{{ $CATALOG_RETRAIN_DEPLOYMENT }}"
    assert retrain["schedules"][0]["cron"] == "{{ $CATALOG_RETRAIN_CRON }}"
    assert retrain["schedules"][0]["timezone"] == "{{ $CATALOG_RETRAIN_TIMEZONE }}"
    assert {item["work_pool"]["name"] for item in spec["deployments"]} == {"{{ $CATALOG_WORK_POOL }}"}
    assert {item["entrypoint"] for item in spec["deployments"]} == {
        "flows/pipeline.py:pipeline", "flows/retrain.py:retrain", "flows/tune.py:tune"}
    placeholders = set(re.findall(r"\{\{\s*\$(\w+)\s*\}\}", text))
    plan = StackPlan.from_params(params, REPO)
    values = deploy_env(params, plan)
    assert placeholders == {name for name in values if name.startswith("CATALOG_")}
    assert values["CATALOG_RETRAIN_CRON"] == params.orchestration.retrain_cron
    assert values["CATALOG_RETRAIN_TIMEZONE"] == params.orchestration.timezone
    assert values["CATALOG_WORK_POOL"] == params.stack.work_pool
    assert values["CATALOG_DVC_REMOTE"].startswith("/")  # a clone elsewhere resolves it the same


def test_the_plan_keeps_the_database_password_off_command_lines() -> None:
    params = load_params(REPO / "params.yaml")
    plan = StackPlan.from_params(params, REPO)
    mlflow = plan.command("mlflow")
    assert mlflow[mlflow.index("--backend-store-uri") + 1] == (
        f"postgresql://catalog@127.0.0.1:{params.stack.postgres_port}/mlflow")
    assert plan.command("worker")[-6:] == ["--type", "process", "--name", params.stack.worker_name,
                                           "--install-policy", "never"]
    assert {key: value for key, value in plan.client_env().items() if key not in plan.secret_env_files()
            and key != "MLFLOW_TRACKING_USERNAME"} == {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{params.stack.mlflow_port}",
        "PREFECT_API_URL": f"http://{params.orchestration.server_host}:{params.orchestration.server_port}/api",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(params.stack.mlflow_http_retries),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(params.stack.mlflow_http_timeout_s)}
    env = plan.service_env("worker", {"PREFECT_API_URL": "http://elsewhere/api", "MLFLOW_TRACKING_URI": "x", "A": "1"})
    assert env["PREFECT_API_URL"] == plan.prefect_api_url and env["MLFLOW_TRACKING_URI"] == plan.mlflow_url
    assert env["A"] == "1" and env["PREFECT_HOME"] == str(plan.dir / "worker")


def test_a_service_stops_with_its_whole_tree_at_once_and_a_reused_pid_is_not_taken_for_it(tmp_path: Path) -> None:
    from catalog_classifier.infra.services import Service

    service = Service("sleeper", tmp_path / "run" / "sleeper.pid", tmp_path / "logs" / "sleeper.log")
    # A child in a session of its own, as Prefect starts flow runs: a process-group kill would miss it.
    pid = service.start(["sh", "-c", "setsid sleep 60 & sleep 60"], os.environ, cwd=tmp_path)
    deadline = time.monotonic() + 10
    while len(tree(pid)) < 2:
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.1)
    processes = tree(pid)
    assert service.pid() == pid
    started = time.monotonic()
    assert sorted(service.stop(timeout_s=20)) == sorted(processes)
    assert time.monotonic() - started < 5  # the direct child is reaped, not waited on as a zombie
    assert [p for p in processes if _alive(p)] == [] and not service.pid_file.exists()
    # A pid file whose start time is not the process's: a pid reused by another program after a reboot.
    service.pid_file.write_text(f"{os.getpid()} 12345.0\n")
    assert service.pid() is None
    assert service.stop() == [] and _alive(os.getpid())
