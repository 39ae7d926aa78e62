"""Where Optuna keeps its studies, and the one lock that lets several workers share them.

``tune.storage`` is a sqlite file (one machine) or a PostgreSQL URL (workers on several machines). Passwords stay
out of ``params.yaml``: ``${VAR}`` parts are read from the environment and ``CATALOG_TUNE_STORAGE`` replaces the
whole value. Optuna's database is never MLflow's: each tool migrates its own schema.

Workers of one storage serialise three short steps with :class:`StorageLock` (a PostgreSQL advisory lock, or an
``flock`` on a file beside the sqlite database): creating the tables and a study with its start points, registering
a worker, and claiming a trial slot. Both kinds die with the process holding them, so a killed worker never leaves
the others waiting.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from catalog_classifier.config.params import TUNE_STORAGE_ENV, TUNE_STORAGE_SCHEMES, ParamsError
from catalog_classifier.infra.postgres import advisory_lock_key, redact_url

log = logging.getLogger(__name__)

ENV_VAR = TUNE_STORAGE_ENV
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# One advisory-lock key for every catalog-classifier study in a database: creating Optuna's tables is itself a race.
_LOCK_KEY = advisory_lock_key("catalog-classifier/optuna")
_LOCK_POLL_S = 0.05
CONNECT_TIMEOUT_S = 10  # a stopped PostgreSQL fails the command in seconds, not after TCP's minutes


class StorageUnavailable(RuntimeError):
    """The storage cannot be reached, or its lock was not granted in time: transient, worth retrying."""


def _expand(value: str, environ: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ParamsError(f"tune.storage: ${{{name}}} is not set in the environment")
        return environ[name]

    return _REFERENCE.sub(replace, value)


def _sqlite_url(path: str, root: Path) -> str:
    if not path or path == ":memory:":
        raise ParamsError("tune.storage: a sqlite storage needs a file (workers and resumes share it)")
    resolved = Path(path) if Path(path).is_absolute() else root / path
    return f"sqlite:///{resolved.resolve()}"


def resolve_storage(raw: str, root: Path, environ: Mapping[str, str] | None = None) -> str:
    """The SQLAlchemy URL of Optuna's database: sqlite paths made absolute, ``${VAR}`` parts filled in."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    environ = os.environ if environ is None else environ
    value = _expand(environ.get(ENV_VAR) or raw, environ)
    if "://" not in value:  # a bare path, the form tune.storage had before it took URLs
        return _sqlite_url(value, root)
    try:
        url = make_url(value)
    except ArgumentError as err:
        raise ParamsError(f"tune.storage: not a database URL ({err})") from None
    backend = url.get_backend_name()
    if backend not in TUNE_STORAGE_SCHEMES:
        raise ParamsError(f"tune.storage: {backend}:// is not supported; use sqlite:///PATH or postgresql://…")
    return _sqlite_url(url.database or "", root) if backend == "sqlite" else value


def _database_identity(url: str) -> tuple[str, ...] | None:
    """What makes two URLs the same database (file, or host/port/name); None for what is not a database URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return ("sqlite", str(Path(parsed.database).resolve())) if parsed.database else None
    if backend == "postgresql":
        return ("postgresql", parsed.host or "localhost", str(parsed.port or 5432), parsed.database or "")
    return None


def refuse_mlflow_database(url: str, mlflow_tracking_uri: str) -> None:
    """Optuna and MLflow each run their own schema migrations: one database for both would break both."""
    identity = _database_identity(url)
    if identity is not None and identity == _database_identity(mlflow_tracking_uri):
        raise ParamsError(f"tune.storage: {redact_url(url)} is MLflow's tracking database; give Optuna its own")


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def engine_kwargs(url: str) -> dict[str, Any]:
    """sqlite: wait up to a minute for another writer; PostgreSQL: fail fast when the server is down."""
    if is_sqlite(url):
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}


def prepare_storage(url: str) -> None:
    """The sqlite file's folder must exist before anyone connects."""
    if is_sqlite(url):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


def unavailable(url: str, err: BaseException) -> StorageUnavailable:
    """A one-line error for a storage that cannot be reached (the driver's message, first line, password-free)."""
    reason = str(getattr(err, "orig", None) or err).strip().splitlines()
    return StorageUnavailable(f"Optuna storage {redact_url(url)} is unreachable: {reason[0] if reason else err}")


class StorageLock:
    """Exclusive, re-acquirable, process-scoped lock on one Optuna storage; ``release`` is idempotent."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._handle: Any = None  # the open lock file (sqlite) or connection (PostgreSQL) while held
        self._engine: Any = None  # PostgreSQL: connections without a pool, each one a lock session

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> None:
        if self.held:
            raise RuntimeError("StorageLock is not re-entrant")
        deadline = time.monotonic() + self.timeout_s
        try_once = self._try_file if is_sqlite(self.url) else self._try_advisory
        while not try_once():
            if time.monotonic() >= deadline:
                raise StorageUnavailable(
                    f"Optuna storage {redact_url(self.url)}: another worker held the tuning lock for more than "
                    f"{self.timeout_s:g} s (tune.lock_timeout_s); is a worker stuck while setting up a study?")
            time.sleep(_LOCK_POLL_S)

    def _try_file(self) -> bool:
        import fcntl

        prepare_storage(self.url)
        handle = open(f"{self.url[len('sqlite:///'):]}.lock", "a+b")  # noqa: SIM115 (held across calls)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._handle = handle
        return True

    def _try_advisory(self) -> bool:
        import sqlalchemy
        from sqlalchemy.exc import OperationalError
        from sqlalchemy.pool import NullPool

        if self._engine is None:
            self._engine = sqlalchemy.create_engine(self.url, poolclass=NullPool,
                                                    connect_args=engine_kwargs(self.url)["connect_args"])
        try:
            connection = self._engine.connect()
        except OperationalError as err:
            raise unavailable(self.url, err) from None
        granted = connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:key)"), {"key": _LOCK_KEY})
        if granted.scalar():
            connection.commit()  # the lock is session-level: it outlives this transaction, not the connection
            self._handle = connection
            return True
        connection.close()
        return False

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        if is_sqlite(self.url):
            handle.close()  # closing the file drops the flock
            return
        import sqlalchemy

        try:
            handle.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
            handle.commit()
        finally:
            handle.close()  # a closed session releases its advisory locks anyway

    def __enter__(self) -> StorageLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()
