"""Start, check and stop the team stack of a :class:`~catalog_classifier.infra.composition.StackPlan`.

``up`` is idempotent: a service whose recorded process is alive and answers its health URL is left alone, a dead
one is started again, and a port held by something else is an error naming the setting to change. ``down`` stops
the worker (and the flow runs it started), the servers, then PostgreSQL, and leaves no process of the stack behind.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from catalog_classifier.infra.composition import (
    MLFLOW_ADMIN,
    MLFLOW_DATABASE,
    OPTUNA_DATABASE,
    PREFECT_DATABASE,
    READER,
    SERVICES,
    TRAINER,
    StackPlan,
    tool_path,
)
from catalog_classifier.infra.secrets import read_secret
from catalog_classifier.infra.services import ServiceError, http_ok, port_in_use
from catalog_classifier.ops.io import write_json, write_text

log = logging.getLogger(__name__)

API_TIMEOUT_S = 10.0
WORKER_FRESH_S = 90  # a worker reports every 30 s (PREFECT_WORKER_HEARTBEAT_SECONDS); 3 missed: not running
PORT_SETTINGS = {"postgres": "stack.postgres_port (STACK_PG_PORT=...)", "mlflow": "stack.mlflow_port "
                 "(STACK_MLFLOW_PORT=...)", "prefect-server": "orchestration.server_port (STACK_PREFECT_PORT=...)"}


@dataclass(frozen=True)
class ServiceState:
    """One service as ``status`` sees it: its process, whether it answers, and where."""

    name: str
    pid: int | None
    healthy: bool
    address: str
    action: str = ""  # what ``up``/``down`` did: started, running, stopped, not running

    def line(self) -> str:
        process = f"pid {self.pid}" if self.pid else "no process"
        state = "up" if self.healthy else "DOWN"
        action = f" ({self.action})" if self.action else ""
        return f"{self.name:<15} {state:<5} {process:<12} {self.address}{action}"


# -------------------------------------------------------------------- the Prefect API, plainly over HTTP


def basic_auth(user: str, password: str) -> str:
    """An HTTP ``Authorization`` header value (Prefect's auth string is sent as the whole ``user:password``)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _prefect_auth(plan: StackPlan) -> dict[str, str]:
    secret = plan.secret_file("prefect-api")
    return {"Authorization": "Basic " + base64.b64encode(read_secret(secret).encode()).decode("ascii")} if (
        secret.is_file()) else {}


def _api(plan: StackPlan, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    request = urllib.request.Request(f"{plan.prefect_api_url}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **_prefect_auth(plan)})
    try:
        with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, None


def worker_heartbeat(plan: StackPlan) -> datetime | None:
    """When the stack's worker last reported to the server (None: never, or the server does not answer)."""
    try:
        status, workers = _api(plan, "POST", f"/work_pools/{plan.work_pool}/workers/filter", {})
    except (urllib.error.URLError, OSError, ValueError):
        return None
    if status != 200 or not isinstance(workers, list):
        return None
    beats = [worker.get("last_heartbeat_time") for worker in workers if worker.get("name") == plan.worker_name]
    times = [datetime.fromisoformat(beat.replace("Z", "+00:00")) for beat in beats if beat]
    return max(times) if times else None


def ensure_work_pool(plan: StackPlan) -> str:
    """Create the work pool (type process, Prefect's default job template) unless it exists; returns what was done."""
    status, _ = _api(plan, "GET", f"/work_pools/{plan.work_pool}")
    if status == 200:
        return "exists"
    # The CLI fills in the process worker's default base job template, which a bare API call would leave empty.
    done = subprocess.run([tool_path("prefect"), "work-pool", "create", plan.work_pool, "--type", "process"],
                          env=plan.service_env("worker"), cwd=plan.dir, capture_output=True, text=True, check=False,
                          timeout=plan.startup_timeout_s)
    if done.returncode != 0:
        raise ServiceError(f"prefect work-pool create {plan.work_pool} failed: "
                           f"{(done.stderr or done.stdout).strip()[-1500:]}")
    return "created"


# -------------------------------------------------------------------- MLflow users


def _mlflow_admin(plan: StackPlan, method: str, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{plan.mlflow_url}/api/2.0/mlflow/users/{path}", method=method,
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": basic_auth(MLFLOW_ADMIN, plan.secret("mlflow-admin"))})
    try:
        with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read() or b"{}")
        except ValueError:
            return err.code, {}


def ensure_mlflow_users(plan: StackPlan) -> None:
    """The ``trainer`` and ``reader`` users, with the passwords of their secret files (a rotated file's new
    password is set on the next ``up``). Neither is an admin; READ is every user's default permission."""
    for user, secret in ((TRAINER, "mlflow-trainer"), (READER, "mlflow-reader")):
        password = plan.secret(secret)
        status, answer = _mlflow_admin(plan, "POST", "create", {"username": user, "password": password})
        if status == 200:
            continue
        if answer.get("error_code") != "RESOURCE_ALREADY_EXISTS":
            raise ServiceError(f"mlflow: creating user {user} failed (HTTP {status}, {answer.get('error_code')}): "
                               f"is {plan.secret_file('mlflow-admin')} the admin password the server started with?")
        status, answer = _mlflow_admin(plan, "PATCH", "update-password", {"username": user, "password": password})
        if status != 200:
            raise ServiceError(f"mlflow: setting {user}'s password failed (HTTP {status}, {answer.get('error_code')})")


# -------------------------------------------------------------------- up / status / down


def _healthy(plan: StackPlan, name: str, started_after: datetime | None = None) -> bool:
    if name == "worker":
        beat = worker_heartbeat(plan)
        if started_after is None:  # alive: reported within the time Prefect allows before calling it offline
            started_after = datetime.now(UTC) - timedelta(seconds=WORKER_FRESH_S)
        return beat is not None and beat >= started_after
    url = plan.health_url(name)
    return url is not None and http_ok(url)


def _address(plan: StackPlan, name: str) -> str:
    if name == "postgres":
        return f"postgresql://{plan.cluster().host}:{plan.postgres_port}"
    if name == "mlflow":
        return plan.mlflow_url
    if name == "prefect-server":
        return plan.prefect_ui_url
    return f"work pool {plan.work_pool}"


def _check_port_free(plan: StackPlan, name: str) -> None:
    where = plan.listens_on(name) if name != "postgres" else (plan.cluster().host, plan.postgres_port)
    if where is not None and port_in_use(*where):
        raise ServiceError(f"{name}: port {where[1]} on {where[0]} is taken by another program (not this stack's "
                           f"{name}); free it or choose another port: {PORT_SETTINGS[name]}")


def _start_postgres(plan: StackPlan) -> ServiceState:
    cluster = plan.cluster()
    action = "running"
    if not (cluster.initialised() and cluster.running()):
        _check_port_free(plan, "postgres")
        cluster.start(timeout_s=int(plan.startup_timeout_s))
        action = "started"
    for database in (MLFLOW_DATABASE, PREFECT_DATABASE, OPTUNA_DATABASE):
        cluster.create_database(database)
    return ServiceState("postgres", None, True, _address(plan, "postgres"), action)


def _launch(plan: StackPlan, name: str) -> bool:
    """Start ``name`` unless its process is alive; True when it was started now."""
    service = plan.service(name)
    if service.pid() is not None:
        return False
    if name != "worker":
        _check_port_free(plan, name)
    service.start(plan.command(name), plan.service_env(name), cwd=plan.dir)
    return True


def up(plan: StackPlan, report: Callable[[ServiceState], None] = lambda state: None) -> list[ServiceState]:
    """Start whatever part of the stack is not running, wait until each part answers, record the settings."""
    plan.check_exposure()
    plan.dir.mkdir(parents=True, exist_ok=True)
    states = [_start_postgres(plan)]
    report(states[-1])
    # Both servers start at once (each spends its first 10-60 s importing and migrating its database).
    plan.auth_config.parent.mkdir(parents=True, exist_ok=True)
    write_text(plan.auth_config, plan.auth_config_text())
    started = {name: _launch(plan, name) for name in ("mlflow", "prefect-server")}
    for name in ("mlflow", "prefect-server"):
        service = plan.service(name)
        service.wait_ready(lambda name=name: _healthy(plan, name), plan.startup_timeout_s)
        if name == "mlflow":
            ensure_mlflow_users(plan)
        states.append(ServiceState(name, service.pid(), True, _address(plan, name),
                                   "started" if started[name] else "running"))
        report(states[-1])
    pool = ensure_work_pool(plan)
    since = datetime.now(UTC).replace(microsecond=0)
    worker_started = _launch(plan, "worker")
    worker = plan.service("worker")
    # A restarted worker counts once it has reported after its start, not on its predecessor's last heartbeat.
    worker.wait_ready(lambda: _healthy(plan, "worker", since if worker_started else None), plan.startup_timeout_s)
    states.append(ServiceState("worker", worker.pid(), True, f"{_address(plan, 'worker')} ({pool})",
                               "started" if worker_started else "running"))
    report(states[-1])
    write_json(plan.state_file, plan.record())
    return states


def status(plan: StackPlan) -> list[ServiceState]:
    """Each part of the stack: its process and whether it answers now."""
    cluster = plan.cluster()
    try:
        pg_up = cluster.initialised() and cluster.running()
    except OSError:
        pg_up = False
    states = [ServiceState("postgres", None, pg_up, _address(plan, "postgres"))]
    for name in SERVICES:
        pid = plan.service(name).pid()
        states.append(ServiceState(name, pid, pid is not None and _healthy(plan, name), _address(plan, name)))
    return states


def down(plan: StackPlan, timeout_s: float = 30) -> list[ServiceState]:
    """Stop the worker first (no new flow run starts), then the servers, then PostgreSQL."""
    states = []
    for name in reversed(SERVICES):
        service = plan.service(name)
        started = time.monotonic()
        ended = service.stop(timeout_s)
        took = time.monotonic() - started
        states.append(ServiceState(name, ended[0] if ended else None, False, _address(plan, name),
                                   f"stopped {len(ended)} process(es) in {took:.1f} s" if ended else "not running"))
    cluster = plan.cluster()
    was_running = cluster.initialised() and cluster.running()
    cluster.stop(timeout_s=int(timeout_s))
    states.append(ServiceState("postgres", None, False, _address(plan, "postgres"),
                               "stopped" if was_running else "not running"))
    plan.state_file.unlink(missing_ok=True)
    return states

