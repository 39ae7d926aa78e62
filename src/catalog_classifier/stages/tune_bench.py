"""``catalog-classifier bench-tune``: tuning throughput with 1..N workers and the storage's cost per trial.

Throughput: for each entry of ``tune.bench.workers``, a new study of the fixed tiny configuration in
``tune.bench`` (one model, fine-tuning only, no pruning, the real train/val split) is run to
``tune.bench.n_trials`` finished trials by ``catalog-classifier tune --workers W``, timed from the command's start
(process start-up and image decoding included: a user pays them) and over the trials themselves. Each worker gets
``cores // W`` threads (so one worker is not handicapped against two), or ``tune.bench.threads_per_worker``.
Storage: ``tune.bench.storage_trials`` trivial trials on a sqlite file and on PostgreSQL
(:mod:`catalog_classifier.benchmarks.tuning_storage_cost`).
PostgreSQL is the one given (``--postgres-url``) or a temporary cluster of the project's own (Debian's binaries).
Timings describe this machine at this moment: the JSON records the core count and the load average around them.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna

from catalog_classifier.benchmarks.tuning_storage_cost import storage_overhead
from catalog_classifier.config.layout import Project
from catalog_classifier.ops.io import write_json

log = logging.getLogger(__name__)

FAMILY = "bench"


def run_bench_tune(project: Project, worker_args: list[str], postgres_url: str | None = None,
                   throughput: bool = True, storage: bool = True) -> dict[str, Any]:
    """Measure, write ``<bench.out_dir>/tune.json``, print nothing (the CLI prints the figures)."""
    bench = project.params.tune.bench
    for split in ("train", "val"):
        if not project.manifest(split).is_file():
            raise FileNotFoundError(f"{project.manifest(split)} is missing: run `dvc repro split` first")
    result: dict[str, Any] = {"machine": _machine(), "config": bench.model_dump(), "started": _now()}
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as scratch, _postgres(postgres_url, Path(scratch)) as pg:
        if storage:
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # a log line per trial is not the storage's cost
            result["storage"] = {
                backend: storage_overhead(url, project.params.tune, [bench.model], bench.storage_trials,
                                          bench.storage_reports)
                for backend, url in (("sqlite", f"sqlite:///{scratch}/optuna.db"), ("postgresql", pg))}
        if throughput:
            result["throughput"] = [_timed_study(project, worker_args, pg, workers, Path(scratch))
                                    for workers in bench.workers]
    result["finished"] = _now()
    result["machine"]["load_after"] = list(os.getloadavg())
    write_json(project.path(project.params.bench.out_dir) / "tune.json", result)
    return result


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _machine() -> dict[str, Any]:
    return {"host": socket.gethostname(), "cores": os.cpu_count(), "load_before": list(os.getloadavg()),
            "note": "shared machine: other processes may run during the measurement (see the load averages)"}


@contextmanager
def _postgres(url: str | None, scratch: Path) -> Iterator[str]:
    """The given PostgreSQL, or a temporary cluster (stopped and removed afterwards) with one new database."""
    if url:
        yield url
        return
    from catalog_classifier.infra.postgres import PostgresCluster
    from catalog_classifier.infra.services import free_port

    # Not under the scratch folder: as root the server runs as `postgres`, which must own its directory.
    root = Path(tempfile.mkdtemp(prefix="bench-tune-pg-"))
    cluster = PostgresCluster(root, free_port("127.0.0.1"))
    cluster.start()
    try:
        yield cluster.create_database("bench_tune")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _timed_study(project: Project, worker_args: list[str], url: str, workers: int, scratch: Path) -> dict[str, Any]:
    bench = project.params.tune.bench
    prefix = f"bench-w{workers}-{uuid.uuid4().hex[:6]}"
    threads = bench.threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
    overrides = {
        "tune.families": f"{{{FAMILY}: [{bench.model}]}}", "tune.study_prefix": prefix,
        "tune.out_dir": str(scratch / prefix), "tune.max_epochs": bench.max_epochs, "tune.baseline": "false",
        "tune.enqueue": "[]", "tune.pruner.type": "none", "tune.space.freeze_backbone": "[false]",
        "tune.space.augment": "[false]", "tune.space.batch_size": "[32]", "train.image_size": bench.image_size,
        "train.weights": "none", "train.num_threads": threads,
    }
    command = [sys.executable, "-m", "catalog_classifier", "tune", "--family", FAMILY, "--workers", str(workers),
               "--n-trials", str(bench.n_trials), *worker_args,
               *(f"--set={key}={value}" for key, value in overrides.items())]
    # Its own MLflow store: benchmark trials have no place among the project's tuning runs.
    env = {**os.environ, "CATALOG_TUNE_STORAGE": url, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch}/mlflow.db"}
    log.info("timing %d trial(s) with %d worker(s), %d thread(s) each", bench.n_trials, workers, threads)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"bench-tune: tune --workers {workers} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    study = optuna.load_study(study_name=f"{prefix}-{FAMILY}", storage=url)
    trials = [trial for trial in study.trials if trial.datetime_complete is not None]
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    return {
        "workers": workers, "threads_per_worker": threads, "trials": len(trials),
        "states": sorted({t.state.name for t in trials}), "wall_s": round(seconds, 1),
        "trials_per_hour": round(len(trials) / seconds * 3600, 1),
        "trial_span_s": round(span, 1), "trials_per_hour_in_span": round(len(trials) / span * 3600, 1),
        "mean_trial_s": round(sum(durations) / len(durations), 2),
    }
