"""What one trial costs Optuna's storage, measured with a trivial objective on the code path real workers take.

Per trial: the claim (storage lock, stale-trial check, one read of the trials to count), Optuna's own loop around
the objective (ask, heartbeat thread, tell), the suggestions of ``tune.space``, ``n_reports`` intermediate values
each followed by the pruner's question, and the user attributes a real trial records. The sampler is random: TPE's
own computation grows with the study and would hide the storage in the figure. The garbage collection real workers
run after each trial is timed apart (``gc_ms_mean``): it is not the storage's, and in a process that holds torch it
costs more than the storage does.
"""

from __future__ import annotations

import gc
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import optuna

from catalog_classifier.config.params import TuneParams
from catalog_classifier.infra.postgres import redact_url
from catalog_classifier.tuning.shared import open_study, run_claimed_trial, slot_status
from catalog_classifier.tuning.storage import StorageLock
from catalog_classifier.tuning.study import create_pruner, suggest

PHASES = ("claim", "optuna_loop", "suggest", "report", "attrs")
USER_ATTRS = ("weights_used", "augment_applied", "best_epoch")  # what a real trial sets besides its run id


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"mean": round(statistics.fmean(ordered), 3), "median": round(statistics.median(ordered), 3),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3)}


def storage_overhead(url: str, tune_params: TuneParams, models: list[str], n_trials: int,
                     n_reports: int) -> dict[str, Any]:
    """Run ``n_trials`` trivial trials in a new study on ``url``; milliseconds per trial, overall and per phase."""
    lock = StorageLock(url, tune_params.lock_timeout_s)
    study, _ = open_study(url, f"storage-bench-{uuid.uuid4().hex[:8]}", seed=tune_params.seed,
                          pruner=create_pruner(tune_params.pruner, n_reports or 1),
                          heartbeat_s=tune_params.heartbeat_s, stale_retries=tune_params.stale_retries, lock=lock,
                          setup={"bench": "storage"}, points={})
    study.sampler = optuna.samplers.RandomSampler(seed=tune_params.seed)
    rows: list[dict[str, float]] = []
    for _ in range(n_trials):
        inside: dict[str, float] = {}
        started = time.perf_counter()
        lock.acquire()
        slot_status(study, n_trials)
        claimed = time.perf_counter()
        run_claimed_trial(study, _objective(tune_params, models, n_reports, inside), lock, gc_after_trial=False)
        ended = time.perf_counter()
        gc.collect()
        work = sum(inside.values())
        rows.append({"total": ended - started, "claim": claimed - started, "optuna_loop": ended - claimed - work,
                     "gc": time.perf_counter() - ended, **inside})
    ms = {key: [row[key] * 1000 for row in rows] for key in ("total", "gc", *PHASES)}
    tenth = max(1, n_trials // 10)
    return {
        "storage": redact_url(url), "backend": url.split(":", 1)[0].split("+", 1)[0], "n_trials": n_trials,
        "n_reports": n_reports, "sampler": "random", "states": sorted({t.state.name for t in study.trials}),
        "ms_per_trial": _summary(ms["total"]),
        "phases_ms_mean": {phase: round(statistics.fmean(ms[phase]), 3) for phase in PHASES},
        "gc_ms_mean": round(statistics.fmean(ms["gc"]), 3),
        # The study grows by one trial per trial: every read of the trials gets longer.
        "ms_per_trial_first_tenth": round(statistics.fmean(ms["total"][:tenth]), 3),
        "ms_per_trial_last_tenth": round(statistics.fmean(ms["total"][-tenth:]), 3),
    }


def _objective(tune_params: TuneParams, models: list[str], n_reports: int,
               inside: dict[str, float]) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        mark = time.perf_counter()
        sampled = suggest(trial, tune_params.space, models)
        inside["suggest"] = time.perf_counter() - mark
        mark = time.perf_counter()
        value = float(sampled["lr"])
        for step in range(1, n_reports + 1):
            trial.report(value * step, step)
            trial.should_prune()  # asked, not obeyed: every trial reports all its values
        inside["report"] = time.perf_counter() - mark
        mark = time.perf_counter()
        for key in USER_ATTRS:
            trial.set_user_attr(key, n_reports)
        inside["attrs"] = time.perf_counter() - mark
        return value

    return objective
