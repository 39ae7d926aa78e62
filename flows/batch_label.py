"""Prefect flow ``batch-label``: label a large catalogue CSV in shards on a Dask cluster, then merge in input order.

    python -m flows.batch_label CATALOGUE.csv --output predictions.csv [--workers 2] [--address tcp://host:8786]

The catalogue is cut into shards of ``batch_predict.shard_rows`` rows (thousands: Prefect records every task run,
so never one task per image). Each shard is one task, ``catalog-classifier predict --input CATALOGUE --rows A:B``
into ``<output>.shards/NNNNN.csv``, run by Prefect's ``DaskTaskRunner`` (prefect-dask) on a local cluster of
``--workers`` processes, or on an existing scheduler (``--address`` or ``batch_predict.dask_scheduler``). A shard
whose file exists is skipped (a rerun does only what is missing); a shard interrupted by a lost worker is rerun
by Dask on another worker and resumes its own ``.partial`` file. Last, the shard files are merged in input order.

Why Dask: ``prefect-dask`` is maintained with Prefect, a ``LocalCluster`` needs nothing but pip, and an existing
cluster is one scheduler address; a worker that dies takes its shard's child process with it (PDEATHSIG) and its
task is rescheduled by the scheduler. Ray would add a second runtime with its own object store for no gain here:
shards pass file paths, never data.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from catalog_classifier.ops.exits import EXIT_TRANSIENT
from catalog_classifier.stages.batch_label import merge_shards, shard_file, shard_ranges

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the shard's child process: SIGKILL it when the worker that started it dies (Linux), so a lost worker
    never leaves a child appending to a shard file another worker has taken over."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class ShardFailed(RuntimeError):
    """A shard's predict exited non-zero for a reason a retry cannot fix (exit 2: bad input or model)."""


class ShardUnavailable(ShardFailed):
    """A shard's predict met a transient failure (exit 75: tracking server down): worth a retry."""


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    return isinstance(state.result(raise_on_failure=False), ShardUnavailable)


@task(name="label-shard", task_run_name="shard-{index}", cache_policy=NO_CACHE, retries=2,
      retry_condition_fn=_retry_transient)
def label_shard(params_file: str, catalogue: str, model_uri: str | None, index: int, start: int, stop: int,
                output: str) -> dict[str, Any]:
    """``catalog-classifier predict`` on rows [start, stop) of the catalogue into the shard's file."""
    target = Path(output)
    if target.is_file():
        get_run_logger().info("shard %d: %s exists, skipped", index, target)
        return {"index": index, "rows": stop - start, "skipped": True, "seconds": 0.0}
    command = [sys.executable, "-m", "catalog_classifier.cli", "predict", "--input", catalogue,
               "--rows", f"{start}:{stop}", "--output", output, "--params", params_file]
    if model_uri:
        command += ["--model-uri", model_uri]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=_die_with_parent)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        failure = ShardUnavailable if done.returncode == EXIT_TRANSIENT else ShardFailed
        raise failure(f"shard {index} (rows {start}:{stop}): {last}")
    get_run_logger().info("shard %d: rows %d:%d labelled", index, start, stop)
    return {"index": index, "rows": stop - start, "skipped": False, "seconds": time.perf_counter() - started}


def task_runner(workers: int, address: str | None) -> Any:
    """Prefect's Dask task runner: an existing scheduler, else a local cluster of ``workers`` processes."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


@flow(name="batch-label", flow_run_name="batch-label-{catalogue}")
def batch_label(params_file: str, catalogue: str, output: str, model_uri: str | None = None,
                shard_rows: int = 5000) -> dict[str, Any]:
    """Shards of the catalogue labelled on the task runner's workers, merged into ``output`` in input order."""
    from catalog_classifier.config.layout import Project
    from catalog_classifier.registry.tracking import setup_mlflow

    logger = get_run_logger()
    target = Path(output)
    project = Project.load(params_file)
    # Once, before the shards start together: a new sqlite store created by several processes at once is locked.
    setup_mlflow(project.params.mlflow, project.root)
    shards = shard_ranges(Path(catalogue), shard_rows)
    logger.info("%d shards of up to %d rows", len(shards), shard_rows)
    started = time.perf_counter()
    futures = [label_shard.submit(params_file, catalogue, model_uri, index, start, stop,
                                  str(shard_file(target, index)))
               for index, (start, stop) in enumerate(shards)]
    results = [future.result() for future in futures]
    rows = merge_shards(target, len(shards))
    seconds = time.perf_counter() - started
    labelled = sum(result["rows"] for result in results if not result["skipped"])
    logger.info("merged %d rows into %s (%d labelled now, %.1f images/s)", rows, target, labelled,
                labelled / seconds if seconds else 0.0)
    return {"rows": rows, "shards": len(shards), "labelled_now": labelled, "seconds": seconds,
            "images_per_s": labelled / seconds if seconds and labelled else None}


def run_batch_label(params_file: str, catalogue: str, output: str, model_uri: str | None = None,
                    workers: int | None = None, address: str | None = None,
                    shard_rows: int | None = None) -> dict[str, Any]:
    """The flow with its task runner and shard size from params (arguments win)."""
    from catalog_classifier.config.params import load_params

    settings = load_params(params_file).batch_predict
    runner = task_runner(workers or settings.dask_workers, address or settings.dask_scheduler)
    return batch_label.with_options(task_runner=runner)(
        params_file=str(Path(params_file).resolve()), catalogue=str(Path(catalogue).resolve()),
        output=str(Path(output).resolve()), model_uri=model_uri, shard_rows=shard_rows or settings.shard_rows)


def bench(params_file: str, model_uri: str | None) -> list[dict[str, Any]]:
    """``make bench-batch-label``: the flow on ``batch_predict.bench_label_rows`` rows (the images listed over and
    over), once per local worker count; prints a table and writes ``<bench.out_dir>/batch_label.json``."""
    import os
    import tempfile

    from catalog_classifier.benchmarks.prediction_runtimes import write_repeated_csv
    from catalog_classifier.benchmarks.suite import cpu_name
    from catalog_classifier.config.layout import Project
    from catalog_classifier.ops.io import write_json

    project = Project.load(params_file)
    settings = project.params.batch_predict
    images = sorted(project.path(project.params.data.images_dir).glob("*.jpg"))
    rows = settings.bench_label_rows
    shard_rows = max(1, -(-rows // (2 * max(settings.bench_label_workers))))  # two shards per worker at least
    figures = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-label-") as scratch:
        catalogue = write_repeated_csv(Path(scratch) / "catalogue.csv", images, rows)
        for workers in settings.bench_label_workers:
            load = os.getloadavg()[0]
            started = time.perf_counter()
            result = run_batch_label(params_file, str(catalogue), str(Path(scratch) / f"labelled_{workers}.csv"),
                                     model_uri, workers, None, shard_rows)
            wall = time.perf_counter() - started
            figures.append({"workers": workers, "rows": result["rows"], "shards": result["shards"],
                            "flow_s": result["seconds"], "wall_s": wall, "images_per_s": result["images_per_s"],
                            "images_per_s_with_startup": result["rows"] / wall, "loadavg_start": load})
    lines = [f"CPU {cpu_name()}, {os.cpu_count()} cores; {rows} rows in shards of {shard_rows}", "",
             "| workers | shards | images/s (shards) | images/s with start-up | wall s | load avg at start |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {f['workers']} | {f['shards']} | {f['images_per_s']:.1f} | {f['images_per_s_with_startup']:.1f} | "
              f"{f['wall_s']:.1f} | {f['loadavg_start']:.2f} |" for f in figures]
    print("\n".join(lines))
    write_json(project.path(project.params.bench.out_dir) / "batch_label.json",
               {"cpu": cpu_name(), "rows": rows, "shard_rows": shard_rows, "runs": figures})
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.batch_label", description=__doc__.splitlines()[0])
    parser.add_argument("catalogue", nargs="?", help="CSV with an 'image' column (paths absolute or relative to it)")
    parser.add_argument("--output", help="merged predictions CSV")
    parser.add_argument("--bench", action="store_true", help="measure the flow with batch_predict.bench_label_workers "
                        "local workers on bench_label_rows rows (no catalogue, no output)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model-uri", help="served model URI (default: the champion)")
    parser.add_argument("--workers", type=int, help="local Dask worker processes (default: batch_predict.dask_workers)")
    parser.add_argument("--address", help="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 "
                                          "(default: batch_predict.dask_scheduler; none: a local cluster)")
    parser.add_argument("--shard-rows", type=int, help="rows per shard (default: batch_predict.shard_rows)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.bench:
        bench(args.params, args.model_uri)
        return 0
    if not args.catalogue or not args.output:
        parser.error("a CATALOGUE and --output are required (or --bench)")
    result = run_batch_label(args.params, args.catalogue, args.output, args.model_uri, args.workers, args.address,
                             args.shard_rows)
    print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
