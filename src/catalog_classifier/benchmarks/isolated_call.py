"""Run one function in a fresh process with a time limit, and always get an answer back.

Used for ``torch.compile`` attempts: a compile can take minutes on two cores, can fail inside the compiler,
and leaves global state (dynamo caches, compile worker pools) behind; a child process bounds all three.
Standard library only, so a child that runs a light function starts in a fraction of a second.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable
from typing import Any

STOP_GRACE_S = 10.0


def _child(func: Callable, args: tuple, results: Any) -> None:
    try:
        results.put(("ok", func(*args)))
    except BaseException as err:  # noqa: BLE001 - any failure is reported to the parent as a result
        message = str(err).splitlines()[0][:300] if str(err) else ""
        results.put(("error", f"{type(err).__name__}: {message}" if message else type(err).__name__))


def run_bounded(func: Callable, args: tuple, timeout_s: float) -> dict[str, Any]:
    """``func(*args)`` in a spawned process, stopped after ``timeout_s``; never raises.

    Returns ``{"status": "ok", "result": ...}``, ``{"status": "error", "error": "Type: message"}`` or
    ``{"status": "timeout", "error": ...}``, each with ``wall_s``. ``func`` and its result must pickle.
    """
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_child, args=(func, args, results))
    started = time.perf_counter()
    process.start()
    status, payload = "timeout", f"stopped after {timeout_s:g}s"
    try:
        while time.perf_counter() - started < timeout_s:
            try:
                status, payload = results.get(timeout=0.2)
                break
            except queue.Empty:
                if not process.is_alive():
                    try:  # it may have put its answer just before exiting
                        status, payload = results.get(timeout=2.0)
                    except queue.Empty:
                        status, payload = "error", f"child process exited with code {process.exitcode}"
                    break
    finally:
        if process.is_alive():
            process.terminate()
        process.join(STOP_GRACE_S)
        if process.is_alive():
            process.kill()
            process.join()
        results.close()
    outcome: dict[str, Any] = {"status": status, "wall_s": time.perf_counter() - started}
    outcome["result" if status == "ok" else "error"] = payload
    return outcome
