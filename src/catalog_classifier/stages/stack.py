"""``catalog-classifier stack up|down|status|env|deploy`` and ``bench-stack``: the team stack on this machine.

Thin: the plan comes from params (infra/composition.py), the processes from infra/lifecycle.py; this module
prints what happened and the next command to type.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from catalog_classifier.config.layout import Project
from catalog_classifier.infra import lifecycle
from catalog_classifier.infra.composition import (
    StackConfigError,
    StackPlan,
    current_plan,
    deploy_command,
    deploy_env,
    uncommitted_changes,
)
from catalog_classifier.infra.postgres import PostgresError
from catalog_classifier.infra.services import ServiceError, http_ok
from catalog_classifier.ops import dvc_ops
from catalog_classifier.ops.exposure import ExposureError

# Errors that end a stack command with one line (exit 2): a setting to change, a port taken, a service that
# would not start (its log's tail is in the message).
STACK_ERRORS = (ServiceError, StackConfigError, PostgresError, ExposureError)
EXIT_NOT_RUNNING = 3  # `stack status` when some part is down (the LSB convention for "not running")
PREFECT_FILE = "prefect.yaml"


def run_stack(project: Project, action: str) -> int:
    if action == "up":
        return _up(StackPlan.from_params(project.params, project.root))
    plan = current_plan(project.params, project.root)
    if action == "down":
        for state in lifecycle.down(plan):
            print(state.line(), flush=True)
        return 0
    if action == "status":
        states = lifecycle.status(plan)
        for state in states:
            print(state.line())
        return 0 if all(state.healthy for state in states) else EXIT_NOT_RUNNING
    if action == "env":
        print(env_lines(plan))
        return 0
    if action == "deploy":
        run_deploy(project, plan)
        return 0
    raise ValueError(f"unknown stack action {action!r}")


def _up(plan: StackPlan) -> int:
    lifecycle.up(plan, report=lambda state: print(state.line(), flush=True))
    print(f"\nMLflow UI    {plan.mlflow_url}\nPrefect UI   {plan.prefect_ui_url}\n"
          f"Use it from a shell:  eval \"$({_command()} stack env)\"   then:  make deploy", flush=True)
    return 0


def _command() -> str:
    """How to call this CLI from a shell: its name when PATH finds this one, else its path in this environment."""
    beside = Path(sys.executable).parent / "catalog-classifier"
    found = shutil.which("catalog-classifier")
    if found and beside.is_file() and Path(found).resolve() == beside.resolve():
        return "catalog-classifier"
    return str(beside) if beside.is_file() else "catalog-classifier"


def env_lines(plan: StackPlan) -> str:
    """``export`` lines for a shell (``eval "$(catalog-classifier stack env)"``). A generated credential is printed
    as a read of its 0600 file, never as its value: the output can be shown, logged or pasted safely."""
    files = plan.secret_env_files()
    cluster = plan.cluster()
    password = cluster.password() if cluster.password_file.is_file() else None
    read_password = f"$(cat {shlex.quote(str(cluster.password_file))})"
    lines = []
    for key, value in plan.client_env().items():
        if key in files:
            lines.append(f"export {key}=\"$(cat {shlex.quote(str(files[key]))})\"")
        elif password and password in value:  # a database URL: its password read from the file when evaluated
            lines.append(f"export {key}=\"{value.replace(password, read_password)}\"")
        else:
            lines.append(f"export {key}={shlex.quote(value)}")
    if not plan.cluster().password_file.is_file():
        lines.append("# the stack has not been started in this folder yet: make stack")
    return "\n".join(lines) + "\n"


def run_deploy(project: Project, plan: StackPlan) -> None:
    """``prefect deploy --all`` of prefect.yaml against the stack's Prefect server, with the values of params."""
    if not http_ok(f"{plan.prefect_api_url}/health"):
        raise ServiceError(f"no Prefect server answers at {plan.prefect_api_url}: start the stack first (make stack)")
    values = deploy_env(project.params, plan)
    for line in uncommitted_changes(project.root):
        print(f"warning: not committed, so not deployed (workers clone {values['CATALOG_BRANCH']}): {line}",
              flush=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(values)
    # The server's API auth string (read from its 0600 file), never on the command line.
    env.update({key: value for key, value in plan.credential_env().items() if key.startswith("PREFECT_")})
    env["PREFECT_HOME"] = str(plan.dir / "worker")  # the deploying client's own state stays inside the stack folder
    print(f"deploying {project.root / PREFECT_FILE} to {plan.prefect_api_url}: pool {values['CATALOG_WORK_POOL']}, "
          f"code {values['CATALOG_REPOSITORY']} @ {values['CATALOG_BRANCH']}, data {values['CATALOG_DVC_REMOTE']}, "
          f"retraining '{values['CATALOG_RETRAIN_CRON']}' ({values['CATALOG_RETRAIN_TIMEZONE']})", flush=True)
    done = subprocess.run(deploy_command(project.root / PREFECT_FILE), cwd=project.root, env=env, check=False,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ServiceError(f"prefect deploy failed ({done.returncode}):\n{(done.stdout + done.stderr).strip()[-3000:]}")
    print("\n".join(line for line in done.stdout.splitlines() if line.strip()), flush=True)
    for line in deploy_notes(project, plan, values["CATALOG_DVC_REMOTE"]):
        print(line, flush=True)


def deploy_notes(project: Project, plan: StackPlan, remote_url: str) -> list[str]:
    """Which registry the deployments promote into, and what the DVC remote's writability means for retraining."""
    name = project.params.registry.model_name
    writable = dvc_ops.remote_writable(dvc_ops.Remote("deployment", remote_url))
    if writable is False:
        remote = (f"DVC remote {remote_url} is read-only: retraining runs cannot push their outputs; they still skip "
                  "when nothing changed (the registry's record), but each run reproduces the unchanged stages "
                  "that a changed one reads")
    else:
        remote = (f"DVC remote {remote_url} is {'writable' if writable else 'not a local folder (writability unknown)'}"
                  ": retraining runs push their outputs there (orchestration.push_outputs), so later runs pull the "
                  "unchanged stages' outputs instead of reproducing them")
    return [f"registry: the deployments promote into the MLflow registry at {plan.mlflow_url} (model '{name}'), the "
            "team's record; scheduled retraining compares with what that registry recorded of the last retraining. "
            f"A clone's own store ({project.params.mlflow.tracking_uri}, what `make run` uses) is a separate, local "
            "registry: its champion is not the one the deployments serve",
            remote]


def run_bench_stack(project: Project) -> dict[str, Any]:
    """MLflow logging latency through the stack's server on PostgreSQL against the local sqlite store."""
    from catalog_classifier.benchmarks.mlflow_logging_latency import bench_logging, format_table
    from catalog_classifier.ops.io import write_json

    plan = current_plan(project.params, project.root)
    # MLflow's client reads the trainer's credentials from the environment (the server refuses anonymous calls).
    os.environ.update({key: value for key, value in plan.credential_env().items() if key.startswith("MLFLOW_")})
    result = bench_logging(plan, project.params.bench)
    out = project.path(project.params.bench.out_dir) / "stack.json"
    write_json(out, result)
    print(format_table(result))
    print(f"written: {out}")
    return result
