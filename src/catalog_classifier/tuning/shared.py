"""Studies shared by workers: one Optuna study in one storage, worked on by any number of processes on any number
of machines, as if one process had run it.

What a single process got for free needs the storage lock (:class:`~catalog_classifier.tuning.storage.StorageLock`)
once several share a study: the study and its start points are created once, each worker gets its own index and
sampler seed, and ``tune.n_trials`` caps the study's finished trials exactly, whoever runs them. A worker that dies
stops its trial's heartbeat: the trial is marked FAIL and queued again, and the others wait for it rather than
leave the study one trial short.

Kept apart from the objective (:mod:`catalog_classifier.tuning.objective`): no torch here, so tools that only touch
the storage start in a second.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.trial import TrialState

from catalog_classifier.config.params import ParamsError
from catalog_classifier.tuning.storage import StorageLock, engine_kwargs, prepare_storage, unavailable

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts toward n_trials
SETUP_ATTR = "setup"  # study user attribute: what a resumed run must match
RUN_ATTR = "mlflow_run_id"  # trial user attribute: the trial's nested MLflow run
START_ATTR = "start_point"  # trial user attribute: the configured start point it runs (baseline, enqueue[i])
WORKER_ATTR = "worker"  # trial user attribute: index of the worker that ran it
WORKER_PREFIX = "worker."  # study user attributes worker.000, worker.001...: every worker ever registered


@contextmanager
def _quiet_experimental() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


@dataclass(frozen=True)
class Worker:
    """One process working on a study. Its index is unique within the study, across machines and resumes (it is
    handed out under the storage lock), so ``seed + index`` gives every worker its own sampler draws."""

    index: int
    sampler_seed: int
    host: str
    pid: int


def open_study(url: str, name: str, *, seed: int, pruner: optuna.pruners.BasePruner, heartbeat_s: int,
               stale_retries: int, lock: StorageLock, setup: dict[str, Any], points: dict[str, dict[str, Any]],
               on_open: Callable[[optuna.Study], None] | None = None,
               register: bool = True) -> tuple[optuna.Study, Worker | None]:
    """Create the study or load it, to continue where earlier or concurrent workers are; register this worker.

    Everything that must happen once per study runs under the storage lock, so workers started at the same moment
    (on one machine or several) agree: Optuna's tables and the study are created once, the start points are queued
    once (each carries its name in ``START_ATTR``, and a name already queued is never queued again), ``on_open``
    (the MLflow parent run) sees the study in a settled state, and each worker gets its own index.
    Trials whose worker died stop sending heartbeats: they are marked FAIL (here, or by any worker before it claims
    a trial) and queued again with the same parameters up to ``stale_retries`` times.
    """
    with lock:
        study = _create_or_load(url, name, pruner, heartbeat_s, stale_retries)
        recorded = study.user_attrs.get(SETUP_ATTR)
        if recorded is not None and recorded != setup:
            changed = sorted(key for key in set(recorded) | set(setup) if recorded.get(key) != setup.get(key))
            raise ParamsError(
                f"tune.study_prefix: study {name!r} was run with a different {', '.join(changed)}; its trials are "
                "not comparable: set a new tune.study_prefix (or delete the study) to start afresh"
            )
        if recorded is None:
            queued = {trial.user_attrs.get(START_ATTR) for trial in study.get_trials(deepcopy=False)}
            for point_name, point in points.items():
                if point_name not in queued:  # a set-up cut short by a kill is completed, not repeated
                    study.enqueue_trial(point, user_attrs={START_ATTR: point_name})
            study.set_user_attr(SETUP_ATTR, setup)
        with _quiet_experimental():
            optuna.storages.fail_stale_trials(study)
        if on_open is not None:
            on_open(study)
        worker = _register_worker(study, seed) if register else None
    if worker is not None:
        # TPE's constant liar (on by default in Optuna 5) keeps concurrent workers away from each other's
        # running trials; distinct seeds keep their random start-up draws apart.
        study.sampler = optuna.samplers.TPESampler(seed=worker.sampler_seed)
    return study, worker


def _create_or_load(url: str, name: str, pruner: optuna.pruners.BasePruner, heartbeat_s: int,
                    stale_retries: int) -> optuna.Study:
    from sqlalchemy.exc import OperationalError

    prepare_storage(url)
    with _quiet_experimental():
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=stale_retries) if stale_retries else None
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url),
                                                 heartbeat_interval=heartbeat_s,
                                                 heartbeat_stale_trial_callback=retry)
            return optuna.create_study(storage=storage, study_name=name, direction="maximize", pruner=pruner,
                                       load_if_exists=True)
        except OperationalError as err:
            raise unavailable(url, err) from None


def _register_worker(study: optuna.Study, seed: int) -> Worker:
    index = sum(key.startswith(WORKER_PREFIX) for key in study.user_attrs)
    worker = Worker(index=index, sampler_seed=seed + index, host=socket.gethostname(), pid=os.getpid())
    study.set_user_attr(f"{WORKER_PREFIX}{index:03d}", {
        "host": worker.host, "pid": worker.pid, "sampler_seed": worker.sampler_seed,
        "started": datetime.now(UTC).isoformat(timespec="seconds")})
    log.info("worker %d of study %s (%s, pid %d): sampler seed %d", index, study.study_name, worker.host, worker.pid,
             worker.sampler_seed)
    return worker


def workers(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """Every worker registered on the study: index → host, pid, sampler seed, start time."""
    return {key[len(WORKER_PREFIX):]: value for key, value in sorted(study.user_attrs.items())
            if key.startswith(WORKER_PREFIX)}


def count_states(study: optuna.Study) -> dict[str, int]:
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


def remaining_trials(study: optuna.Study, n_trials: int) -> int:
    """Trials still to run so the study holds ``n_trials`` finished ones (failed trials do not count)."""
    return max(0, n_trials - len(study.get_trials(deepcopy=False, states=FINISHED)))


def _missing_and_running(study: optuna.Study, n_trials: int) -> tuple[int, int]:
    """Both from one read of the trials: trials end outside the lock, and two reads could see one trial RUNNING
    (not yet finished: one missing) and then COMPLETE (not running: a free slot), and claim a trial too many."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(trial.state in FINISHED for trial in trials)
    return max(0, n_trials - finished), sum(trial.state == TrialState.RUNNING for trial in trials)


def running_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def started_trials(study: optuna.Study) -> int:
    """Trials that ever left the queue (running or ended)."""
    return sum(trial.state != TrialState.WAITING for trial in study.get_trials(deepcopy=False))


def stale_run_ids(study: optuna.Study) -> list[str]:
    """MLflow runs of failed trials (for instance killed mid-epoch): the caller closes those left RUNNING."""
    return [trial.user_attrs[RUN_ATTR] for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if RUN_ATTR in trial.user_attrs]


def run_study(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int, timeout_s: float | None,
              lock: StorageLock, poll_s: float) -> int:
    """Run trials until the study holds ``n_trials`` finished ones, counted over every worker of the study.

    Returns how many this worker started. The cap is global and exact: a worker claims a slot under the storage
    lock and Optuna creates the trial (RUNNING) before the lock is let go, so two workers that both see n - 1
    finished trials cannot both start one. A worker whose slot would only be needed if another worker's running
    trial fails waits (polling every ``poll_s``) instead of leaving: that worker may have been killed, and its
    trial, once its heartbeat is stale, is marked FAIL and queued again for whoever is still here. A worker starts
    at most as many trials as were missing when it began, so a training error that fails every trial ends it.
    """
    attempts = remaining_trials(study, n_trials)
    if attempts == 0:
        log.info("study %s already holds %d finished trials", study.study_name, n_trials)
        return 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    started, waiting = 0, False
    while started < attempts and (deadline is None or time.monotonic() < deadline):
        lock.acquire()
        try:
            missing, running = slot_status(study, n_trials)
            if missing == 0:
                break
            if running >= missing:
                if not waiting:
                    log.info("study %s: %d running trial(s) would complete it; waiting for them", study.study_name,
                             running)
                waiting = True
                lock.release()
                time.sleep(poll_s)
                continue
            waiting = False
            run_claimed_trial(study, objective, lock)
            started += 1
        finally:
            lock.release()
    return started


def slot_status(study: optuna.Study, n_trials: int) -> tuple[int, int]:
    """Under the storage lock: fail trials whose worker died (queueing their retries), then count the finished
    trials still missing and the trials running, both from one read of the trials."""
    with _quiet_experimental():
        optuna.storages.fail_stale_trials(study)
    return _missing_and_running(study, n_trials)


def run_claimed_trial(study: optuna.Study, objective: Callable[[optuna.Trial], float], lock: StorageLock,
                      gc_after_trial: bool = True) -> None:
    """One trial through Optuna's own loop (heartbeat, tell, logging), the storage lock held until the trial
    exists: the objective lets go of it first thing. Training errors (RuntimeError) fail the trial, not the run.
    A garbage collection after each trial returns a trial's tensors before the next one allocates its own."""

    def released_first(trial: optuna.Trial) -> float:
        lock.release()
        return objective(trial)

    try:
        study.optimize(released_first, n_trials=1, catch=(RuntimeError,), gc_after_trial=gc_after_trial)
    finally:
        lock.release()
