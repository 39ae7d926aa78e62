"""Stopping a stage cleanly: SIGTERM as an interrupt, and the interrupted MLflow run recorded as KILLED.

DVC and Prefect stop a stage with SIGTERM, an operator with Ctrl-C (SIGINT). Both become a
:class:`KeyboardInterrupt`, so ``finally`` blocks run: temporary files go (see :mod:`catalog_classifier.ops.io`) and
no half-written output replaces a complete one. ``with mlflow.start_run()`` then ends the run as FAILED, which
reads like a crash; :func:`mark_interrupted_run_killed` records what happened instead: KILLED.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

log = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """A stop signal turned into an interrupt; ``signum`` gives the exit status (128 + signal number)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def raise_terminated(signum: int, frame: Any) -> None:
    """Signal handler: raise :class:`Terminated` in the main thread, wherever it is."""
    raise Terminated(signum)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal number, the shell's convention: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + int(getattr(interrupt, "signum", signal.SIGINT))


def ignore_stop_signals() -> None:
    """While cleaning up after an interrupt, a second signal must not interrupt the clean-up itself."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def last_ended_run_id() -> str | None:
    """Id of the last MLflow run this process ended (what ``mlflow.last_active_run`` reads), without a store call.

    Taken before a command starts, it tells a run ended by this command from one ended earlier in the same
    process (tests, flows calling :func:`catalog_classifier.cli.main` repeatedly).
    """
    fluent = sys.modules.get("mlflow.tracking.fluent")
    holder = getattr(fluent, "_last_active_run_id", None)
    return holder.get() if holder is not None else None


def mark_interrupted_run_killed(ended_before: str | None = None) -> str | None:
    """Mark the MLflow run this command was writing to as KILLED; return its id, or None if there was none.

    A run still active (an interrupt outside a ``with`` block) is ended as KILLED, which also keeps MLflow's
    exit hook from ending it as FINISHED. A run the ``with`` block already ended as FAILED because of the
    interrupt is re-marked KILLED. Runs that finished normally, and runs ended before this command started
    (``ended_before``, from :func:`last_ended_run_id`), are left alone.
    """
    if "mlflow" not in sys.modules:  # the command never reached MLflow, so there is no run to mark
        return None
    import mlflow

    try:
        active = mlflow.active_run()
        if active is not None:
            run_id = active.info.run_id
            while mlflow.active_run() is not None:
                mlflow.end_run(status="KILLED")
            return run_id
        last_id = last_ended_run_id()
        if last_id is None or last_id == ended_before:
            return None
        store = mlflow.MlflowClient()
        if store.get_run(last_id).info.status != "FAILED":
            return None
        store.set_terminated(last_id, status="KILLED")
        return last_id
    except Exception as err:  # the store may be what was interrupted; the exit status still says what happened
        log.warning("could not mark the interrupted MLflow run as KILLED: %s", err)
        return None
