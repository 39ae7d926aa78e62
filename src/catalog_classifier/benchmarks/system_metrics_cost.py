"""What MLflow's system-metrics logging costs a training run, measured two ways on this machine.

1. A/B fits: one small real training (a timm model, a few epochs, real catalogue images decoded once), repeated
   with system metrics off and at each sampling interval, in a shuffled order per repeat, inside MLflow runs on
   a throw-away sqlite store (the project's default backend). Wall time moves with whatever else the machine runs;
   process CPU time (which includes the monitor's thread) barely does, so both are reported, as medians and as
   the ratio to the same repeat's run without system metrics. Each run with system metrics also reports the CPU
   time of MLflow's monitor thread itself over the fit (from psutil's per-thread times): the monitor's whole cost,
   as a share of the fit's wall time, an upper bound on the training time it can take, and one that load elsewhere
   on the machine hardly moves.
2. The monitor's own cost per sample: MLflow's SystemMetricsMonitor cycle (psutil readings, the run-status read
   it does after every sample, the batch write) timed in a loop. Cost per sample / interval bounds the share of
   one core it takes.

    python -m catalog_classifier.benchmarks.system_metrics_cost --out artifacts/bench/system_metrics.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import psutil
import torch

from catalog_classifier.config.layout import Project
from catalog_classifier.data.catalogue import read_catalogue
from catalog_classifier.data.imageset import decode_manifest
from catalog_classifier.modeling.fit_loop import settings_from
from catalog_classifier.modeling.frozen import fit_model
from catalog_classifier.modeling.models import create_classifier
from catalog_classifier.modeling.torch_setup import resolve_runtime, seed_everything

OFF = "off"


def _images(project: Project, n_train: int, n_val: int, seed: int) -> tuple[Any, Any]:
    params = project.params
    images_dir = project.path(params.data.images_dir)
    frame = read_catalogue(project.path(params.data.catalogue), params.data.classes)
    frame = frame[frame["image"].map(lambda name: (images_dir / name).is_file())]
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return frame.iloc[:n_train], frame.iloc[n_train:n_train + n_val]


def _decode(project: Project, args: argparse.Namespace, frames: tuple[Any, Any]) -> tuple[Any, Any]:
    """Decoded once for every fit (as the train stage does per run, outside the fit time)."""
    model, _ = create_classifier(args.model, len(project.params.data.classes), weights="none",
                                 image_size=args.image_size)
    images_dir = project.path(project.params.data.images_dir)
    return tuple(decode_manifest(frame, images_dir, model.data_config) for frame in frames)


def _fit_once(project: Project, args: argparse.Namespace, data: tuple[Any, Any], experiment_id: str,
              interval: float | None) -> dict[str, float]:
    params = project.params
    train_params = params.train.model_copy(update={
        "max_epochs": args.epochs, "patience": args.epochs, "batch_size": args.batch_size, "weights": "none",
        "freeze_backbone": False, "augment": False})
    runtime = resolve_runtime(train_params.channels_last, train_params.bf16, train_params.num_threads)
    generator = seed_everything(args.seed)
    model, _ = create_classifier(args.model, len(params.data.classes), weights="none", image_size=args.image_size)
    train_images, val_images = data
    if interval is not None:
        mlflow.set_system_metrics_sampling_interval(interval)
        mlflow.set_system_metrics_samples_before_logging(1)

    def log_epoch(epoch: int, row: dict[str, float]) -> None:  # what the train stage logs per epoch
        mlflow.log_metrics({"train/loss": row["train_loss"], "val/loss": row["val_loss"],
                            "val/f1_macro": row["val_f1_macro"]}, step=epoch)

    with mlflow.start_run(experiment_id=experiment_id, log_system_metrics=interval is not None) as run:
        result = fit_model(model, train_images, val_images, settings_from(train_params), runtime, generator,
                           len(params.data.classes), frozen_backbone=False, on_epoch=log_epoch)
        monitor_cpu = _monitor_cpu_seconds(run.info.run_id)
    points = len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "system/cpu_utilization_percentage"))
    return {"fit_s": result.fit_seconds, "cpu_s": result.fit_cpu_seconds, "system_points": points,
            "monitor_cpu_s": monitor_cpu, "monitor_share_of_fit": monitor_cpu / result.fit_seconds}


def _monitor_cpu_seconds(run_id: str) -> float:
    """CPU seconds the run's SystemMetricsMonitor thread has used so far (0 without one): its whole cost to the
    process, since it alone samples, reads the run status and writes the points. Little moved by other load."""
    from mlflow.tracking.fluent import run_id_to_system_metrics_monitor

    monitor = run_id_to_system_metrics_monitor.get(run_id)
    if monitor is None or monitor._process is None:
        return 0.0
    native = monitor._process.native_id
    return next((t.user_time + t.system_time for t in psutil.Process().threads() if t.id == native), 0.0)


def _per_sample_cost(experiment_id: str, cycles: int) -> dict[str, float]:
    """One monitor cycle as MLflow runs it, without the sleep: readings, run-status read, batch write."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    with mlflow.start_run(experiment_id=experiment_id) as run:
        monitor = SystemMetricsMonitor(run.info.run_id, sampling_interval=1, samples_before_logging=1)
        client = mlflow.MlflowClient()
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(cycles):
            monitor.collect_metrics()
            client.get_run(run.info.run_id)
            monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    return {"cycles": cycles, "wall_ms": 1000 * wall / cycles, "cpu_ms": 1000 * cpu / cycles}


def _summary(rows: list[dict[str, Any]], label: str) -> dict[str, Any]:
    mine = [row for row in rows if row["condition"] == label]
    base = {row["repeat"]: row for row in rows if row["condition"] == OFF}
    out: dict[str, Any] = {"n": len(mine), "system_points_median": statistics.median(r["system_points"] for r in mine)}
    if label != OFF:
        shares = sorted(row["monitor_share_of_fit"] for row in mine)
        out["monitor_share_of_fit_median"] = statistics.median(shares)
        out["monitor_share_of_fit_min_max"] = [shares[0], shares[-1]]
    for key in ("fit_s", "cpu_s"):
        values = sorted(row[key] for row in mine)
        out[f"{key}_median"] = statistics.median(values)
        out[f"{key}_min_max"] = [values[0], values[-1]]
        if label != OFF:
            ratios = sorted(row[key] / base[row["repeat"]][key] for row in mine)
            quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
            out[f"{key}_ratio_median"] = statistics.median(ratios)
            out[f"{key}_ratio_iqr"] = [quartiles[0], quartiles[2]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--train-images", type=int, default=128)
    parser.add_argument("--val-images", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--intervals", type=float, nargs="+", default=[10.0, 1.0, 0.1])
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    project = Project.load(Path(args.params))
    data = _decode(project, args, _images(project, args.train_images, args.val_images, args.seed))
    conditions: list[tuple[str, float | None]] = [(OFF, None), *((f"{i:g}s", i) for i in args.intervals)]
    order = random.Random(args.seed)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as store:
        mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
        experiment_id = mlflow.create_experiment("overhead", artifact_location=Path(store, "artifacts").as_uri())
        _fit_once(project, args, data, experiment_id, None)  # warm-up: imports, allocator, first-run caches
        for repeat in range(args.repeats):
            for label, interval in order.sample(conditions, len(conditions)):
                row = {"repeat": repeat, "condition": label, **_fit_once(project, args, data, experiment_id, interval)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        cost = _per_sample_cost(experiment_id, args.cycles)
    report = {
        "setup": {**{key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
                  "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                  "loadavg_at_end": os.getloadavg()},
        "per_condition": {label: _summary(rows, label) for label, _ in conditions},
        "per_sample": cost,
        "per_sample_share_of_one_core": {f"{i:g}s": cost["cpu_ms"] / 1000 / i for i in args.intervals},
        "runs": rows,
    }
    print(json.dumps({key: report[key] for key in ("per_condition", "per_sample", "per_sample_share_of_one_core")},
                     indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
