"""The registry lock: one promote or rollback at a time per registered model, for every promoter of a registry.

Promote and rollback read the registry, decide, then write (aliases, history, tags). Two of them interleaved could
leave two versions each believing it beat the same champion, or a history that skips one. So the sequence runs
under a lock, and the lock has to be shared by every process that can write the same registry:

- **a shared lock URL** (``CATALOG_REGISTRY_LOCK_URL``, else ``registry.lock_url``): a PostgreSQL session-level
  advisory lock in that database, keyed on the registered model name. Every clone, on any machine, that points
  at the same database and model name waits for the same lock. The server releases it when the session ends, so
  a promoter killed mid-way never leaves it stuck.
- **an MLflow store on PostgreSQL used directly** (tracking URI ``postgresql://…``): the same advisory lock, in that
  database, since every promoter reaches it already.
- **the embedded sqlite store** (the default): a file lock beside the database file. Every promoter of that
  store is on this machine (sqlite is a local file), so the file lock covers them all.
- **anything else** (an ``http(s)://`` MLflow server, another database): refused. A file lock inside one clone
  would not stop a promoter in another clone, and silently serialising only this machine is how two champions
  happen; the error says how to configure the shared lock.

The lock database's password never goes in ``params.yaml`` (the loader refuses one): it comes with the whole URL
in ``CATALOG_REGISTRY_LOCK_URL``, or from libpq's ``PGPASSWORD`` / ``~/.pgpass`` when ``registry.lock_url`` is used.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from catalog_classifier.config.params import REGISTRY_LOCK_URL_ENV, RegistryParams
from catalog_classifier.infra.postgres import advisory_lock_key, redact_url
from catalog_classifier.registry.versions import RegistryError, RegistryLockTimeout, RegistryLockUnavailable

if TYPE_CHECKING:  # psycopg is imported when a PostgreSQL lock is used: the CLI imports this module at start
    import psycopg

log = logging.getLogger(__name__)

# A lock database that does not answer within this is reported at once: waiting longer would only delay the error.
CONNECT_TIMEOUT_S = 5
# PostgreSQL truncates application_name to 63 bytes (NAMEDATALEN - 1).
_APPLICATION_NAME_MAX = 63
_POSTGRES_SCHEMES = ("postgresql", "postgres")


class RegistryLock(Protocol):
    """What promote and rollback need from a lock: an early check (before any write) and the held section."""

    def check(self) -> None: ...

    def held(self) -> AbstractContextManager[None]: ...

    def describe(self) -> str: ...


def advisory_key(model_name: str) -> int:
    """The advisory lock key of a registered model: a signed 64-bit integer, the same in every process and clone.

    (Python's ``hash()`` is salted per process; a digest is not.) A prefix keeps other users of advisory locks
    in the same database, such as the MLflow server itself, from colliding with it by accident."""
    return advisory_lock_key(f"catalog-classifier registry lock:{model_name}")


def lock_path(registry_uri: str, project_root: Path) -> Path:
    """The lock file beside the sqlite database, or in the project's mlruns/ for a local folder store."""
    prefix = "sqlite:///"
    if registry_uri.startswith(prefix):
        database = Path(registry_uri[len(prefix):])  # sqlite:////abs/path: the path is what follows three slashes
        return database.with_name(database.name + ".registry.lock")
    return project_root / "mlruns" / "registry.lock"


def _scheme(url: str) -> str:
    """The URL's scheme without a SQLAlchemy driver suffix (``postgresql+psycopg`` -> ``postgresql``)."""
    return urlsplit(url).scheme.split("+", 1)[0].lower()


def _libpq_url(url: str) -> str:
    """The URL libpq accepts: SQLAlchemy's ``postgresql+driver://`` scheme is not one of them."""
    scheme = urlsplit(url).scheme
    return url if "+" not in scheme else f"postgresql{url[len(scheme):]}"


def _local_store(registry_uri: str) -> bool:
    return _scheme(registry_uri) in ("sqlite", "file", "")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def shared_lock_url(registry: RegistryParams, registry_uri: str) -> str | None:
    """The PostgreSQL URL whose advisory lock serialises promoters, or None for the file lock."""
    configured = os.environ.get(REGISTRY_LOCK_URL_ENV) or registry.lock_url
    if configured:
        if _scheme(configured) not in _POSTGRES_SCHEMES:
            raise RegistryError(f"{REGISTRY_LOCK_URL_ENV} / registry.lock_url must be a postgresql:// URL, "
                                f"not {redact_url(configured)}")
        return configured
    if _scheme(registry_uri) in _POSTGRES_SCHEMES:
        return registry_uri
    return None


def choose_lock(registry_uri: str, project_root: Path, registry: RegistryParams, action: str) -> RegistryLock:
    """The lock ``action`` (promote, rollback) must hold to write the registry at ``registry_uri`` (MLflow's
    registry URI: the tracking URI unless ``MLFLOW_REGISTRY_URI`` says otherwise); refuses one that is not shared."""
    url = shared_lock_url(registry, registry_uri)
    if url is not None:
        return PostgresAdvisoryLock(url, registry.model_name, registry.lock_timeout_s,
                                    application_name(action, project_root))
    if _local_store(registry_uri):
        return FileRegistryLock(lock_path(registry_uri, project_root), registry.lock_timeout_s)
    raise RegistryError(
        f"{action} refused: the registry at {redact_url(registry_uri)} is shared, and a file lock in this clone would "
        f"not stop a {action} from another clone; set {REGISTRY_LOCK_URL_ENV}=postgresql://USER:PASSWORD@HOST:PORT/DB "
        "(a PostgreSQL database every promoter reaches, e.g. the MLflow server's) or registry.lock_url in "
        "params.yaml (no password there: PGPASSWORD or ~/.pgpass)")


def application_name(action: str, project_root: Path) -> str:
    """Who holds the lock, as other sessions see it in ``pg_stat_activity``: command, host, pid, clone folder."""
    name = f"catalog-classifier {action} {socket.gethostname()} pid {os.getpid()} {project_root.name}"
    return name.encode()[:_APPLICATION_NAME_MAX].decode(errors="ignore")


@dataclass(frozen=True)
class FileRegistryLock:
    """A file lock beside the sqlite database: every promoter of a local sqlite store is on this machine."""

    path: Path
    timeout_s: float

    def check(self) -> None:
        """Nothing can be unreachable here; the folder is created so ``held`` cannot fail on it later."""
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def held(self) -> Iterator[None]:
        from filelock import FileLock, Timeout

        self.check()
        lock = FileLock(str(self.path), timeout=self.timeout_s)
        try:
            lock.acquire()
        except Timeout:
            raise RegistryLockTimeout(f"another promote or rollback has held {self.path} for over "
                                      f"{self.timeout_s:g}s") from None
        try:
            yield
        finally:
            lock.release()

    def describe(self) -> str:
        return f"file lock {self.path}"


@dataclass(frozen=True)
class PostgresAdvisoryLock:
    """A session-level advisory lock on ``advisory_key(model_name)`` in one PostgreSQL database.

    A free lock is taken at once (``pg_try_advisory_lock``); a held one is logged with its holder, then waited for
    by PostgreSQL itself (``pg_advisory_lock`` under ``lock_timeout``): waiters queue in order and the timeout is
    exact, with no polling. The lock belongs to the connection, so it is released when this process ends or its
    connection drops, whatever happened to the process."""

    url: str = field(repr=False)  # may hold the password: never printed
    model_name: str
    timeout_s: float
    application_name: str

    @property
    def key(self) -> int:
        return advisory_key(self.model_name)

    def describe(self) -> str:
        return f"PostgreSQL advisory lock {self.key} on {self._where()}"

    def _where(self) -> str:
        parts = urlsplit(self.url)
        host = parts.hostname or "localhost"
        return f"{host}:{parts.port or 5432}{parts.path or '/'}"

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        try:
            return psycopg.connect(_libpq_url(self.url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                   application_name=self.application_name)
        except psycopg.Error as err:
            raise RegistryLockUnavailable(
                f"registry lock database {self._where()} unreachable ({_one_line(err)}); check "
                f"{REGISTRY_LOCK_URL_ENV} / registry.lock_url and that the server is up") from None

    def check(self) -> None:
        """Connect once, so an unreachable lock database fails the command before it writes anything."""
        self._connect().close()

    @contextmanager
    def held(self) -> Iterator[None]:
        connection = self._connect()
        try:
            self._acquire(connection)
            log.info("registry lock held: %s", self.describe())
            try:
                yield
            finally:
                self._release(connection)
        finally:
            connection.close()

    def _acquire(self, connection: psycopg.Connection[Any]) -> None:
        import psycopg

        try:
            if connection.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]:
                return
            log.info("registry lock of %r is %s; waiting up to %gs", self.model_name, self._holder(connection),
                     self.timeout_s)
            # lock_timeout bounds any lock wait of the statements that follow, advisory locks included.
            connection.execute("SELECT set_config('lock_timeout', %s, false)",
                               (f"{max(1, round(self.timeout_s * 1000))}ms",))
            connection.execute("SELECT pg_advisory_lock(%s)", (self.key,))
        except psycopg.errors.LockNotAvailable:
            raise RegistryLockTimeout(f"another promote or rollback has held the registry lock of "
                                      f"{self.model_name!r} ({self.describe()}) for over {self.timeout_s:g}s: "
                                      f"{self._holder(connection)}") from None
        except psycopg.Error as err:
            raise RegistryLockUnavailable(f"registry lock on {self._where()} failed ({_one_line(err)})") from None

    def _holder(self, connection: psycopg.Connection[Any]) -> str:
        """Who holds the lock, from pg_locks and pg_stat_activity (as far as this role may see)."""
        import psycopg

        unsigned = self.key & 0xFFFFFFFFFFFFFFFF
        try:
            row = connection.execute(
                "SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start "
                "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND l.classid::bigint = %s AND l.objid::bigint = %s",
                (unsigned >> 32, unsigned & 0xFFFFFFFF)).fetchone()
        except psycopg.Error as err:
            return f"holder unknown ({_one_line(err)})"
        if row is None:
            return "released just now (retry)"
        pid, name, client, since = row
        who = name or "a session without application_name"
        started = f", connected since {since.isoformat(timespec='seconds')}" if since else ""
        return f"held by {who!r} (server pid {pid}{f', client {client}' if client else ''}{started})"

    def _release(self, connection: psycopg.Connection[Any]) -> None:
        """Unlock; a lost connection already released it server-side, and says so rather than failing the command."""
        import psycopg

        try:
            row = connection.execute("SELECT pg_advisory_unlock(%s)", (self.key,)).fetchone()
        except psycopg.Error as err:
            row, problem = None, f"connection lost while held ({_one_line(err)})"
        else:
            problem = "no longer held at release"
        if not (row and row[0]):
            log.warning("registry lock %s: %s; another promoter may have overlapped the end of this one: check "
                        "the registered model's champion_history", self.describe(), problem)
