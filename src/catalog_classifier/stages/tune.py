"""Tune stage: one Optuna study per model family, one MLflow parent run per study and a nested run per trial.

Optuna's database (``tune.storage``: a sqlite file, or PostgreSQL for workers on several machines) is the record a
killed study resumes from and every worker shares; MLflow is where people look: the parent run carries the study's
figures, best params and trial table, each nested run a trial's sampled values, per-epoch metrics and final state.
The study, its shared-worker and resume rules are in :mod:`catalog_classifier.tuning`; this stage writes the
study's files, logs them to the parent run, and (``tune --workers N``) starts local workers and waits for them.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from typing import Any

import optuna

from catalog_classifier.config.layout import Project
from catalog_classifier.ops.io import write_csv, write_json, write_text
from catalog_classifier.tuning.runner import finish_family, prepare_family, tune_family
from catalog_classifier.tuning.shared import started_trials
from catalog_classifier.tuning.study import best_params_text, save_figures, trials_frame
from catalog_classifier.tuning.trial_runs import close_parent_run

log = logging.getLogger(__name__)

WORKER_STOP_TIMEOUT_S = 60  # after SIGTERM, a worker marks its trial FAIL and closes its MLflow run within this


def run_tune(project: Project, family: str, n_trials: int | None = None, timeout_s: float | None = None,
             publish: bool = True) -> dict[str, Any]:
    """Work on the family's study until it holds ``n_trials`` finished trials; write and log its results.

    Run it once per machine (or process) to share the study: the trial cap is the study's, not this process's.
    ``publish=False`` is for the workers of ``tune --workers``, whose launcher writes the results once.
    """
    return tune_family(project, family, n_trials, timeout_s, _publisher(project, family) if publish else None)


def run_tune_workers(project: Project, family: str, workers: int, n_trials: int | None, timeout_s: float | None,
                     worker_args: list[str]) -> tuple[dict[str, Any], list[int]]:
    """``tune --workers N``: the study set up once, N local worker processes on it, then its results written once.

    ``worker_args`` are the command-line options every worker gets (params file, overrides). Returns the summary
    and each worker's exit status.
    """
    n_trials = n_trials or project.params.tune.n_trials
    shared, opened, before = prepare_family(project, family)
    command = [sys.executable, "-m", "catalog_classifier", "tune", "--family", family, "--n-trials", str(n_trials),
               "--no-publish", *worker_args]
    if timeout_s:
        command += ["--timeout", str(timeout_s)]
    log.info("starting %d workers on study %s (%s)", workers, shared.name, shared.storage)
    started = time.perf_counter()
    processes = [subprocess.Popen(command) for _ in range(workers)]
    try:
        codes = [process.wait() for process in processes]
    except KeyboardInterrupt:
        _stop(processes)
        close_parent_run(opened.study, opened.parent_run_id, "KILLED")
        raise
    summary = finish_family(shared, opened, n_trials, started_trials(opened.study) - before,
                            time.perf_counter() - started, _publisher(project, family))
    return summary, codes


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM every worker (each fails its trial cleanly), then SIGKILL what is still there after the grace time."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _publisher(project: Project, family: str) -> Any:
    def publish(study: optuna.Study, summary: dict[str, Any]) -> None:
        _write_outputs(project, family, study, summary)
        _log_parent(project, family, summary)

    return publish


def _write_outputs(project: Project, family: str, study: optuna.Study, summary: dict[str, Any]) -> None:
    out_dir = project.tune_dir(family)
    if summary["best"] is not None:
        write_text(project.best_params(family), best_params_text(study, family))
    else:
        log.warning("study %s has no complete trial yet: no best params written", study.study_name)
    write_csv(out_dir / "trials.csv", trials_frame(study))
    save_figures(study, out_dir)
    write_json(project.tune_summary(family), summary)


def _log_parent(project: Project, family: str, summary: dict[str, Any]) -> None:
    """Onto the study's parent run, by id: no worker holds it as its active run (several may share it)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    client, run_id = MlflowClient(), summary["mlflow_parent_run_id"]
    states = summary["states"]
    now = int(time.time() * 1000)
    metrics = {f"trials/{state.lower()}": states.get(state, 0) for state in ("COMPLETE", "PRUNED", "FAIL")}
    tags = {}
    if summary["best"] is not None:
        metrics["best/val_f1_macro"] = summary["best"]["val_f1_macro"]
        tags = {"best_trial": str(summary["best"]["trial"]), "dvc_exp_run": summary["best"]["dvc_exp_run"]}
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
                     tags=[RunTag(key, value) for key, value in tags.items()])
    out_dir = project.tune_dir(family)
    for path in sorted(out_dir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            client.log_artifact(run_id, str(path))
