"""A PostgreSQL cluster owned by this project: initdb, start, stop, databases, URLs (Debian's postgresql binaries).

The team stack (``make stack``) and the tests run their own cluster in a directory of their choosing, listening on
127.0.0.1 only, with a password (scram-sha-256) kept in a 0600 file beside the data. PostgreSQL refuses to run as
root, so as root every server command runs as the ``postgres`` system user, which then owns the data directory.
"""

from __future__ import annotations

import glob
import hashlib
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

USER = "catalog"
_DEFAULT_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def advisory_lock_key(name: str) -> int:
    """The PostgreSQL advisory-lock key of ``name``: a signed 64-bit integer, the same in every process, clone and
    machine (a digest: Python's ``hash()`` is salted per process). The tuning storage and the registry lock both
    key their locks here, each with its own prefixed name, so they never collide with each other or with MLflow."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def redact_url(url: str) -> str:
    """``url`` with its password masked (``user:***@host``): what logs, errors, MLflow tags and summaries show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


class PostgresError(RuntimeError):
    """The cluster could not be found, initialised, started or used; the message says which and why."""


def find_bindir() -> Path:
    """Where initdb/pg_ctl live: Debian keeps them out of PATH (``/usr/lib/postgresql/<major>/bin``)."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    candidates = sorted(glob.glob(_DEFAULT_BIN_GLOB), key=lambda path: int(Path(path).parent.name))
    if not candidates:
        raise PostgresError("PostgreSQL is not installed (no pg_ctl): run `make postgres` "
                            "(apt-get install postgresql)")
    return Path(candidates[-1])


def _as_server_user() -> list[str]:
    """The prefix that runs a server command as a user PostgreSQL accepts (itself when not root)."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass(frozen=True)
class PostgresCluster:
    """One cluster: its data directory, TCP port on 127.0.0.1, and the project's role ``catalog``."""

    root: Path          # holds data/, the log, the password file and the unix socket directory
    port: int
    host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    def password(self) -> str:
        if not self.password_file.is_file():
            raise PostgresError(f"no cluster initialised in {self.root} (run `make stack`)")
        return self.password_file.read_text(encoding="utf-8").strip()

    def url(self, database: str, driver: str = "postgresql") -> str:
        """SQLAlchemy URL of ``database`` (``driver`` e.g. ``postgresql+asyncpg`` for Prefect)."""
        return f"{driver}://{USER}:{self.password()}@{self.host}:{self.port}/{database}"

    def _run(self, command: list[str], *, as_server: bool, timeout_s: float = 120) -> str:
        prefix = _as_server_user() if as_server else []
        env = {**os.environ, "PGPASSWORD": self.password() if self.password_file.is_file() else ""}
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=timeout_s, env=env,
                              check=False)
        if done.returncode != 0:
            raise PostgresError(f"{Path(command[0]).name} failed ({done.returncode}): "
                                f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done.stdout

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self) -> None:
        """initdb once (a second call is a no-op): role ``catalog`` with a generated password, TCP auth by password."""
        if self.initialised():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self.password_file.write_text(secrets.token_hex(16) + "\n", encoding="utf-8")
        self.password_file.chmod(0o600)
        pwfile = self.root / "initdb.pw"
        pwfile.write_text(self.password() + "\n", encoding="utf-8")
        if os.geteuid() == 0:
            # The server user must own what it writes and read the one-off password file; nothing else changes owner.
            self.data_dir.mkdir(exist_ok=True)
            subprocess.run(["chown", "postgres:", str(self.data_dir), str(self.socket_dir), str(pwfile)], check=True)
            _let_server_user_traverse(self.root)
        try:
            self._run([str(find_bindir() / "initdb"), "-D", str(self.data_dir), "-U", USER, f"--pwfile={pwfile}",
                       "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-instructions"],
                      as_server=True)
        finally:
            pwfile.unlink(missing_ok=True)

    def running(self) -> bool:
        status = subprocess.run([*_as_server_user(), str(find_bindir() / "pg_ctl"), "-D", str(self.data_dir),
                                 "status"], capture_output=True, text=True, check=False)
        return status.returncode == 0

    def start(self, timeout_s: int = 60) -> None:
        """Start the server (initdb first when needed); already running is fine."""
        self.init()
        if self.running():
            return
        if os.geteuid() == 0 and not self.log_file.exists():
            self.log_file.touch()
            subprocess.run(["chown", "postgres:", str(self.log_file)], check=True)
        # The local socket (trust auth) is for the server's own OS user only: mode 0700, like its folder.
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses={self.host} "
                   f"-c unix_socket_permissions=0700")
        self.socket_dir.chmod(0o700)
        self._run([str(find_bindir() / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options,
                   "-w", "-t", str(timeout_s), "start"], as_server=True, timeout_s=timeout_s + 10)

    def stop(self, timeout_s: int = 60) -> None:
        """Fast shutdown (open sessions are ended, committed data kept); stopped already is fine."""
        if not self.initialised() or not self.running():
            return
        self._run([str(find_bindir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(timeout_s),
                   "stop"], as_server=True, timeout_s=timeout_s + 10)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` over TCP as ``catalog``; returns unaligned, tuples-only output."""
        return self._run([str(find_bindir() / "psql"), "-h", self.host, "-p", str(self.port), "-U", USER,
                          "-d", database, "-v", "ON_ERROR_STOP=1", "-tAc", sql], as_server=False)

    def create_database(self, name: str) -> str:
        """Create ``name`` unless it exists; returns its URL."""
        if not name.replace("_", "").isalnum():
            raise PostgresError(f"database name {name!r}: letters, digits and _ only")
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip() != "1":
            self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _let_server_user_traverse(path: Path) -> None:
    """Give 'others' execute (not read) on ``path`` and its parents up to / so the server user can reach its files."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & 0o001:
            directory.chmod(mode | 0o001)
