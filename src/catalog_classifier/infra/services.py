"""Long-running local services (servers, workers): start detached with a pid file, wait until ready, stop the tree.

A service is one command started in its own session (``setsid``) with its output in a log file, and a pid file
holding the pid *and* its start time, so a pid reused by an unrelated process after a reboot is never taken for
the service. Stopping ends the whole process tree, not only the group: Prefect workers start each flow run in a
session of its own, which a ``killpg`` of the worker would miss.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

POLL_INTERVAL_S = 0.5
HTTP_PROBE_TIMEOUT_S = 3.0
LOG_TAIL_CHARS = 3000


class ServiceError(RuntimeError):
    """A service could not be started, did not become ready, or its port is taken; the message says which."""


@dataclass(frozen=True)
class Service:
    """Where one service keeps its pid file and its log."""

    name: str
    pid_file: Path
    log_file: Path

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def pid(self) -> int | None:
        """The service's pid when its recorded process is still the one running, else None (stale or absent)."""
        try:
            pid_text, started_text = self.pid_file.read_text(encoding="utf-8").split()
            process = psutil.Process(int(pid_text))
            if abs(process.create_time() - float(started_text)) > 0.01 or process.status() == psutil.STATUS_ZOMBIE:
                return None
        except (OSError, ValueError, psutil.Error):
            return None
        return process.pid

    def start(self, command: Sequence[str], env: Mapping[str, str], cwd: Path) -> int:
        """Start ``command`` detached (own session, stdin closed, output appended to the log); returns its pid."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {command[0]} "
                      f"{' '.join(command[1:3])} ...\n".encode())
            log.flush()
            process = subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        started = psutil.Process(process.pid).create_time()
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(f"{process.pid} {started}\n", encoding="utf-8")
        os.replace(tmp, self.pid_file)
        return process.pid

    def wait_ready(self, ready: Callable[[], bool], timeout_s: float) -> None:
        """Poll ``ready`` until it holds; fail with the log's tail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.pid() is None:
                raise ServiceError(f"{self.name} exited during start-up; end of {self.log_file}:\n{self.log_tail()}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name} not ready after {timeout_s:.0f} s; end of {self.log_file}:\n"
                                   f"{self.log_tail()}")
            time.sleep(POLL_INTERVAL_S)

    def stop(self, timeout_s: float = 30) -> list[int]:
        """End the service and every process it started; returns the pids that were signalled (none: not running)."""
        pid = self.pid()
        ended = stop_tree(pid, timeout_s) if pid is not None else []
        self.pid_file.unlink(missing_ok=True)
        return ended


def stop_tree(pid: int, timeout_s: float) -> list[int]:
    """SIGTERM ``pid`` and all its descendants (taken before any signal, so none is orphaned unseen), then SIGKILL
    what is left after ``timeout_s``."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
    alive = _wait_gone(processes, timeout_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    _wait_gone(alive, timeout_s)
    return [process.pid for process in processes]


def _gone(process: psutil.Process) -> bool:
    """Exited: no such process, or a zombie (it has exited; only its parent's reaping is left)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process has exited; returns those still running after ``timeout_s``. Children of this
    process (a service started here, as the tests do) are reaped on the way."""
    deadline = time.monotonic() + timeout_s
    alive = list(processes)
    while alive:
        for process in alive:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(process.pid, os.WNOHANG)
        alive = [process for process in alive if not _gone(process)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL_S / 5)
    return alive


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants now (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root.pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def http_ok(url: str, timeout_s: float = HTTP_PROBE_TIMEOUT_S) -> bool:
    """True when ``url`` answers 200 now (one try, no retries)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def free_port(host: str) -> int:
    """A port nothing listens on at ``host`` now (the system's pick; free until someone else takes it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Something accepts connections on ``host:port``."""
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0
