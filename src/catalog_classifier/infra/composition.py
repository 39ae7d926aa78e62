"""What the team stack is made of, decided from params alone: directories, commands, environments and URLs.

Nothing here starts a process (see ``lifecycle``). One folder (``stack.dir``) holds everything the stack writes:

    <dir>/postgres/            the PostgreSQL cluster (data, log, password file; infra/postgres.py)
    <dir>/mlflow/artifacts/    MLflow's proxied artifact store (clients upload through the server)
    <dir>/prefect/             PREFECT_HOME of the Prefect server
    <dir>/worker/              PREFECT_HOME of the worker (its flow runs start in temporary folders)
    <dir>/logs/<service>.log   <dir>/run/<service>.pid   <dir>/stack.json (the settings of the stack started last)
    <dir>/secrets/             0700; one 0600 file per generated secret (infra/secrets.py): mlflow-admin,
                               mlflow-trainer, mlflow-reader, mlflow-flask-key, prefect-api
    <dir>/mlflow/basic_auth.ini  MLflow's auth app settings (no password in it) and basic_auth.db, its users

Both servers authenticate every request: MLflow runs its ``basic-auth`` app (admin with a generated password; the
``trainer`` identity logs runs, registers versions and moves aliases on what it created; ``reader`` and any other
user only read), Prefect requires its API auth string. Clients need the URLs and their credentials
(``client_env``): MLflow's artifacts go through its server, Prefect's through its API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from catalog_classifier.config.params import REGISTRY_LOCK_URL_ENV, TUNE_STORAGE_ENV, Params
from catalog_classifier.infra.postgres import USER, PostgresCluster
from catalog_classifier.infra.secrets import ensure_secret, read_secret
from catalog_classifier.infra.services import Service
from catalog_classifier.ops import dvc_ops
from catalog_classifier.ops.exposure import require_loopback_or_auth

MLFLOW_DATABASE = "mlflow"
PREFECT_DATABASE = "prefect"
OPTUNA_DATABASE = "optuna"  # for studies shared by several tuning workers (tune.storage)
SERVICES = ("mlflow", "prefect-server", "worker")
MLFLOW_ADMIN = "admin"
TRAINER = "trainer"  # the stack's clients: training, tuning, promotion (owner of the experiment and the model)
READER = "reader"  # browses runs and models, changes nothing
SOURCE_REGEX = r"^mlflow-artifacts:/(?!.*\.\.)[^#?\\]*$"
SECRETS = ("mlflow-admin", "mlflow-trainer", "mlflow-reader", "mlflow-flask-key", "prefect-api")
STATE_FILE = "stack.json"
# Inherited variables that would point a service at another store or server than the stack's own.
_FOREIGN_PREFIXES = ("PREFECT_", "MLFLOW_")


class StackConfigError(ValueError):
    """The stack cannot be composed as configured (no branch checked out, no DVC remote, ...)."""


@dataclass(frozen=True)
class StackPlan:
    """The stack's settings, resolved: every path absolute, every port and name final."""

    project_root: Path
    dir: Path
    host: str
    postgres_port: int
    mlflow_port: int
    prefect_host: str
    prefect_port: int
    mlflow_workers: int
    work_pool: str
    worker_name: str
    startup_timeout_s: float
    mlflow_http_retries: int
    mlflow_http_timeout_s: int

    @classmethod
    def from_params(cls, params: Params, project_root: Path) -> StackPlan:
        stack = params.stack
        directory = stack.dir if stack.dir.is_absolute() else project_root / stack.dir
        return cls(project_root=project_root.resolve(), dir=directory.resolve(), host=stack.host,
                   postgres_port=stack.postgres_port, mlflow_port=stack.mlflow_port,
                   prefect_host=params.orchestration.server_host, prefect_port=params.orchestration.server_port,
                   mlflow_workers=stack.mlflow_workers, work_pool=stack.work_pool, worker_name=stack.worker_name,
                   startup_timeout_s=stack.startup_timeout_s, mlflow_http_retries=stack.mlflow_http_retries,
                   mlflow_http_timeout_s=stack.mlflow_http_timeout_s)

    # ---------------------------------------------------------------- where things live

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def artifacts_dir(self) -> Path:
        return self.dir / "mlflow" / "artifacts"

    def service(self, name: str) -> Service:
        if name not in SERVICES:
            raise KeyError(f"unknown stack service {name!r} (one of {', '.join(SERVICES)})")
        return Service(name, self.dir / "run" / f"{name}.pid", self.dir / "logs" / f"{name}.log")

    def cluster(self) -> PostgresCluster:
        return PostgresCluster(self.dir / "postgres", self.postgres_port, host=_client_host(self.host))

    # ---------------------------------------------------------------- who may reach what

    def authentication(self, name: str) -> str | None:
        """What authenticates the clients of a listening service; None: anyone who reaches its port."""
        return {"postgres": "scram-sha-256 password (0600 file)", "mlflow": "MLflow basic-auth app",
                "prefect-server": "Prefect API auth string"}.get(name)

    # ---------------------------------------------------------------- secrets

    @property
    def secrets_dir(self) -> Path:
        return self.dir / "secrets"

    def secret_file(self, name: str) -> Path:
        if name not in SECRETS:
            raise KeyError(f"unknown stack secret {name!r}")
        return self.secrets_dir / name

    def secret(self, name: str) -> str:
        """A generated secret of the stack (created 0600 on first use)."""
        return ensure_secret(self.secret_file(name))

    @property
    def auth_config(self) -> Path:
        return self.dir / "mlflow" / "basic_auth.ini"

    def auth_config_text(self) -> str:
        """MLflow's auth app settings: every user reads (default permission READ); what a user creates it manages;
        the admin password comes from the environment (``MLFLOW_AUTH_ADMIN_PASSWORD``), never from this file."""
        return ("[mlflow]\ndefault_permission = READ\n"
                f"database_uri = sqlite:///{self.dir / 'mlflow' / 'basic_auth.db'}\n"
                f"admin_username = {MLFLOW_ADMIN}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                "grant_default_workspace_access = false\n")

    def check_exposure(self) -> None:
        """Each listening service on loopback, or authenticated: checked before anything starts."""
        for name, host, setting in (("postgres", self.host, "stack.host"), ("mlflow", self.host, "stack.host"),
                                    ("prefect-server", self.prefect_host, "orchestration.server_host")):
            require_loopback_or_auth(f"the stack's {name}", host, self.authentication(name), setting)

    # ---------------------------------------------------------------- URLs

    @property
    def mlflow_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.mlflow_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{_client_host(self.prefect_host)}:{self.prefect_port}/api"

    @property
    def prefect_ui_url(self) -> str:
        return self.prefect_api_url.removesuffix("/api")

    def health_url(self, name: str) -> str | None:
        return {"mlflow": f"{self.mlflow_url}/health", "prefect-server": f"{self.prefect_api_url}/health"}.get(name)

    def listens_on(self, name: str) -> tuple[str, int] | None:
        return {"mlflow": (_client_host(self.host), self.mlflow_port),
                "prefect-server": (_client_host(self.prefect_host), self.prefect_port)}.get(name)

    # ---------------------------------------------------------------- commands and environments

    def command(self, name: str) -> list[str]:
        if name == "mlflow":
            # The password reaches psycopg through PGPASSWORD (service_env), never the command line `ps` shows.
            backend = f"postgresql://{USER}@{_client_host(self.host)}:{self.postgres_port}/" \
                      f"{MLFLOW_DATABASE}"
            return [tool_path("mlflow"), "server", "--app-name", "basic-auth", "--backend-store-uri", backend,
                    "--artifacts-destination", str(self.artifacts_dir), "--serve-artifacts",
                    "--host", self.host, "--port", str(self.mlflow_port), "--workers", str(self.mlflow_workers)]
        if name == "prefect-server":
            return [tool_path("prefect"), "server", "start", "--host", self.prefect_host,
                    "--port", str(self.prefect_port), "--analytics-off"]
        if name == "worker":
            return [tool_path("prefect"), "worker", "start", "--pool", self.work_pool, "--type", "process",
                    "--name", self.worker_name, "--install-policy", "never"]
        raise KeyError(name)

    def service_env(self, name: str, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of one service: the caller's, minus other Prefect/MLflow settings, plus the stack's."""
        env = {key: value for key, value in (base if base is not None else os.environ).items()
               if not key.startswith(_FOREIGN_PREFIXES) and key != "PGPASSWORD"}
        # The stack's executables (dvc, catalog-classifier) first: flow runs start stages by name.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        if name == "mlflow":
            env["PGPASSWORD"] = self.cluster().password()
            # MLflow 3's server job runner (GenAI jobs: prompt optimisation, trace rollups) starts eight more Python
            # processes, ~230 MB each; nothing here uses it.
            env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
            # A version's source must be in the server's own artifact store (no file:// path, no traversal): the
            # class of MLflow's model-version source CVEs, closed here whatever the release.
            env["MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX"] = SOURCE_REGEX
            env.update(MLFLOW_AUTH_CONFIG_PATH=str(self.auth_config),
                       MLFLOW_AUTH_ADMIN_PASSWORD=self.secret("mlflow-admin"),
                       MLFLOW_FLASK_SERVER_SECRET_KEY=self.secret("mlflow-flask-key"))
        elif name == "prefect-server":
            env.update(PREFECT_HOME=str(self.dir / "prefect"),
                       PREFECT_API_DATABASE_CONNECTION_URL=self.cluster().url(PREFECT_DATABASE,
                                                                              driver="postgresql+asyncpg"),
                       PREFECT_SERVER_ANALYTICS_ENABLED="false",
                       PREFECT_SERVER_API_AUTH_STRING=self.secret("prefect-api"))
        elif name == "worker":
            env.update(self.client_env())
            env["PREFECT_HOME"] = str(self.dir / "worker")
        return env

    def client_env(self) -> dict[str, str]:
        """What a client of this stack (a shell, a stage, a worker's flow run) needs to use it.

        Once the cluster exists, also the registry lock every promoter shares (an advisory lock in MLflow's
        database: an http registry refuses promotion without one) and the Optuna database tuning workers share."""
        env = {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "PREFECT_API_URL": self.prefect_api_url,
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.mlflow_http_retries),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.mlflow_http_timeout_s),
        }
        cluster = self.cluster()
        if cluster.password_file.is_file():
            env[REGISTRY_LOCK_URL_ENV] = cluster.url(MLFLOW_DATABASE)
            env[TUNE_STORAGE_ENV] = cluster.url(OPTUNA_DATABASE)
        env.update(self.credential_env())
        return env

    def credential_env(self) -> dict[str, str]:
        """The trainer's MLflow credentials and Prefect's auth string, once the stack generated them."""
        files = {"MLFLOW_TRACKING_PASSWORD": "mlflow-trainer", "PREFECT_API_AUTH_STRING": "prefect-api"}
        env = {key: read_secret(self.secret_file(name)) for key, name in files.items()
               if self.secret_file(name).is_file()}
        if "MLFLOW_TRACKING_PASSWORD" in env:
            env["MLFLOW_TRACKING_USERNAME"] = TRAINER
        return env

    def secret_env_files(self) -> dict[str, Path]:
        """Variables of ``client_env`` whose value is a secret file's content (``stack env`` prints a read of the
        file, never the secret)."""
        return {"MLFLOW_TRACKING_PASSWORD": self.secret_file("mlflow-trainer"),
                "PREFECT_API_AUTH_STRING": self.secret_file("prefect-api")}

    # ---------------------------------------------------------------- the record of a started stack

    def record(self) -> dict[str, object]:
        return {key: str(value) if isinstance(value, Path) else value for key, value in asdict(self).items()}

    def with_record(self, record: dict[str, object]) -> StackPlan:
        """This plan with the ports and names a running stack was started with (its stack.json)."""
        keep = {"project_root", "dir"}
        return replace(self, **{key: value for key, value in record.items()
                                if key in self.__dataclass_fields__ and key not in keep})


def current_plan(params: Params, project_root: Path) -> StackPlan:
    """The plan of the stack in ``stack.dir``: the settings it was started with when it has been (ports given on
    ``make stack``'s command line hold until ``make stack-down``), else those of params."""
    plan = StackPlan.from_params(params, project_root)
    try:
        record = json.loads(plan.state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return plan
    return plan.with_record(record) if isinstance(record, dict) else plan


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a service bound to ``host`` (a wildcard bind is reached on loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def tool_path(name: str) -> str:
    """The executable of this environment (the venv's mlflow/prefect), not whichever is first on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


# -------------------------------------------------------------------- deployments (prefect.yaml)


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StackConfigError(f"git {' '.join(args)} failed in {root}: {done.stderr.strip()}")
    return done.stdout.strip()


def deploy_env(params: Params, plan: StackPlan) -> dict[str, str]:
    """The variables prefect.yaml reads (``{{ $CATALOG_... }}``) when ``prefect deploy`` registers the deployments.

    The schedule, deployment name and pool come from params, so prefect.yaml never repeats a value of params.yaml;
    the code is the repository and branch a worker clones, the data the default DVC remote it pulls from.
    """
    root = plan.project_root
    repository = params.stack.repository or f"file://{_git(root, 'rev-parse', '--show-toplevel')}"
    branch = params.stack.branch or _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    if branch == "HEAD":
        raise StackConfigError("no branch is checked out (detached HEAD): check one out or set stack.branch")
    remote = dvc_ops.default_remote(root)
    if remote is None:
        raise StackConfigError("the deployments pull data from the default DVC remote, and none is set: "
                               "dvc remote add -d NAME URL")
    # A relative local remote is relative to the clone it is configured in: pass DVC's absolute resolution.
    local = remote.local_path
    if local is not None and not local.is_absolute():
        local = (root / ".dvc" / local).resolve()
    remote_url = remote.url if local is None else str(local)
    orchestration = params.orchestration
    return {
        "PREFECT_API_URL": plan.prefect_api_url,
        "CATALOG_WORK_POOL": plan.work_pool,
        "CATALOG_REPOSITORY": repository,
        "CATALOG_BRANCH": branch,
        "CATALOG_DVC_REMOTE": remote_url,
        "CATALOG_RETRAIN_DEPLOYMENT": orchestration.deployment,
        "CATALOG_RETRAIN_CRON": orchestration.retrain_cron,
        "CATALOG_RETRAIN_TIMEZONE": orchestration.timezone,
    }


def uncommitted_changes(root: Path) -> list[str]:
    """Tracked files that differ from HEAD: a deployment runs the committed branch, not them."""
    try:
        return _git(root, "status", "--porcelain", "--untracked-files=no").splitlines()
    except StackConfigError:
        return []


def deploy_command(prefect_file: Path) -> list[str]:
    return [tool_path("prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)]
