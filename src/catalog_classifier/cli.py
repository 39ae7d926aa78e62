"""``catalog-classifier``: one command, one subcommand per pipeline stage or action.

Entry points only parse arguments, configure logging, load params and call one library function; expected
errors print one clear message and exit 2 when permanent (bad params, bad catalogue, unknown model name,
weights that do not fit) or 75 when transient (unreachable tracking server, registry lock held): the Prefect
flow retries only the latter. An interrupt (Ctrl-C, or SIGTERM from DVC/Prefect) leaves no partial output,
marks the MLflow run KILLED and exits 128 + the signal number.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from catalog_classifier.config.params import PARAMS_FILE, ParamsError
from catalog_classifier.data.catalogue import CatalogueError
from catalog_classifier.data.images import ImageLoadError
from catalog_classifier.ops.exits import EXIT_REJECTED_INPUT, EXIT_TRANSIENT, InputError, ModelError
from catalog_classifier.ops.exposure import ExposureError
from catalog_classifier.ops.interrupts import (
    exit_status,
    ignore_stop_signals,
    last_ended_run_id,
    mark_interrupted_run_killed,
    raise_terminated,
)
from catalog_classifier.ops.io import CorruptFileError
from catalog_classifier.registry.tracking import TrackingUnavailable
from catalog_classifier.registry.versions import RegistryError, RegistryLockTimeout, RegistryLockUnavailable

# Permanent: the same command fails the same way until its input changes (exit 2, never retried by the flow).
EXPECTED_ERRORS = (ParamsError, CatalogueError, ImageLoadError, FileNotFoundError, RegistryError, CorruptFileError,
                   ModelError, InputError, ExposureError)
# Transient: something outside the command is briefly unavailable (exit 75: the flow retries the stage).
TRANSIENT_ERRORS = (TrackingUnavailable, RegistryLockTimeout, RegistryLockUnavailable)
EXIT_USAGE = EXIT_REJECTED_INPUT


def _project(args: argparse.Namespace) -> Any:
    from catalog_classifier.config.layout import Project

    overrides = dict(item.split("=", 1) for item in args.set or [])
    return Project.load(args.params, overrides)


def _key_value(item: str) -> str:
    """argparse type for ``--set``: refuse ``train.lr`` (no ``=``) with a usage error, not a traceback."""
    key, sep, _ = item.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. train.max_epochs=2; got {item!r}")
    return item


def _model_in_params(project: Any, model_name: str) -> None:
    """``--model`` must be one of params ``models``: DVC only runs those, and a typo should not train anything."""
    if model_name not in project.params.models:
        raise ParamsError(
            f"--model {model_name!r} is not one of the models in params.yaml ({', '.join(project.params.models)})"
        )


def _tracking_reachable(project: Any) -> None:
    """Fail before any work when the tracking server named by MLFLOW_TRACKING_URI is down."""
    from catalog_classifier.registry.tracking import check_server, resolve_tracking_uri

    check_server(resolve_tracking_uri(project.params.mlflow, project.root))


def cmd_split(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.split import run_split

    run_split(_project(args))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.train import run_train

    project = _project(args)
    _model_in_params(project, args.model)
    _tracking_reachable(project)  # before touching the previous outputs
    # run.json is written last: without it the model folder reads as unfinished. A stale one would pair the
    # weights of an interrupted attempt with the previous run's logged model.
    project.run_record(args.model).unlink(missing_ok=True)
    run_train(project, args.model)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.evaluate import run_evaluate

    project = _project(args)
    _model_in_params(project, args.model)
    _tracking_reachable(project)  # evaluate logs to MLflow only at the end: check before scoring anything
    run_evaluate(project, args.model)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.explain import run_explain

    run_explain(_project(args), args.model)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.compare import run_compare

    run_compare(_project(args))
    return 0


def _transient(args: argparse.Namespace, err: Exception) -> int:
    """A transient error met inside a handler (one the handler imports itself, so start-up never loads it)."""
    print(f"catalog-classifier {args.command}: error: {err}", file=sys.stderr)
    return EXIT_TRANSIENT


def cmd_tune(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.tune import run_tune, run_tune_workers
    from catalog_classifier.tuning.storage import StorageUnavailable

    project = _project(args)
    for family in args.family or list(project.params.tune.families):
        try:
            if args.workers == 1:
                run_tune(project, family, n_trials=args.n_trials, timeout_s=args.timeout,
                         publish=not args.no_publish)
                continue
            _, codes = run_tune_workers(project, family, args.workers, args.n_trials, args.timeout,
                                        _worker_args(args))
        except StorageUnavailable as err:  # Optuna's database down, or its lock held too long: retry later
            return _transient(args, err)
        failed = [code if code > 0 else 128 - code for code in codes if code]
        if failed:
            print(f"catalog-classifier tune: {len(failed)} of {args.workers} workers on family {family} failed "
                  f"(exit status {', '.join(map(str, failed))}); the study keeps what they finished", file=sys.stderr)
            return failed[0]
    return 0


def _worker_args(args: argparse.Namespace) -> list[str]:
    """What a worker process needs to load the same params: the file by absolute path, the same overrides."""
    worker_args = ["--params", str(Path(args.params).resolve()), *(f"--set={item}" for item in args.set or [])]
    return worker_args + (["-v"] if args.verbose else [])


def cmd_bench_tune(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.tune_bench import run_bench_tune
    from catalog_classifier.tuning.storage import StorageUnavailable

    project = _project(args)
    try:
        result = run_bench_tune(project, _worker_args(args), postgres_url=args.postgres_url,
                                throughput=args.only in (None, "throughput"), storage=args.only in (None, "storage"))
    except StorageUnavailable as err:
        return _transient(args, err)
    machine = result["machine"]
    print(f"machine: {machine['cores']} cores, load average {machine['load_before'][0]:.1f} before, "
          f"{machine['load_after'][0]:.1f} after (shared: other processes may have run)")
    for backend, figures in result.get("storage", {}).items():
        phases = ", ".join(f"{key} {value:.1f}" for key, value in figures["phases_ms_mean"].items())
        print(f"storage {backend:<10} {figures['ms_per_trial']['mean']:8.1f} ms/trial mean "
              f"(median {figures['ms_per_trial']['median']:.1f}, p95 {figures['ms_per_trial']['p95']:.1f}; "
              f"{figures['n_trials']} trials, {figures['n_reports']} reports each) [{phases}; "
              f"garbage collection apart: {figures['gc_ms_mean']:.1f}]")
    for row in result.get("throughput", []):
        print(f"throughput {row['workers']} worker(s) x {row['threads_per_worker']} thread(s): "
              f"{row['trials_per_hour']:.0f} trials/h end to end ({row['trials']} trials in {row['wall_s']:.0f} s), "
              f"{row['trials_per_hour_in_span']:.0f} trials/h over the trials, mean trial {row['mean_trial_s']:.1f} s")
    print(f"written: {project.path(project.params.bench.out_dir) / 'tune.json'}")
    return 0


def cmd_tune_overrides(args: argparse.Namespace) -> int:
    from catalog_classifier.tuning.study import override_flags, read_overrides

    project = _project(args)
    print("\n".join(override_flags(read_overrides(project.best_params(args.family)))))
    return 0


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def cmd_promote(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.promote import run_promote

    run_promote(_project(args), dry_run=args.dry_run, model_name=args.model)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.promote import run_rollback

    run_rollback(_project(args))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.predict import model_uri, run_predict

    if bool(args.paths) == bool(args.input):
        raise InputError("give what to predict either as --input DIR_OR_CSV or as PATH arguments (one of them)")
    if args.input and not Path(args.input).exists():  # PATH arguments may name missing files: they get a row each
        raise InputError(f"no such file or folder: {args.input}")
    project = _project(args)
    run_predict(project, [args.input] if args.input else args.paths, model_uri(project, args.version, args.model),
                Path(args.output) if args.output else None, resume=args.resume, rows=args.rows)
    return 0


def cmd_bench_predict(args: argparse.Namespace) -> int:
    from catalog_classifier.config.layout import Project
    from catalog_classifier.stages.bench_predict import QUICK_OVERRIDES, run_bench_predict

    overrides = {**(QUICK_OVERRIDES if args.quick else {}), **dict(item.split("=", 1) for item in args.set or [])}
    run_bench_predict(Project.load(args.params, overrides), quick=args.quick)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    project = _project(args)
    if (args.engine or project.params.serve.engine) == "ray":
        from catalog_classifier.stages.serve_engine import run_ray_serve

        run_ray_serve(project, args.host, args.port)
        return 0
    from catalog_classifier.stages.serve import run_serve

    run_serve(project, args.host, args.port)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from catalog_classifier.config.layout import Project
    from catalog_classifier.stages.bench import QUICK_OVERRIDES, run_bench

    overrides = {**(QUICK_OVERRIDES if args.quick else {}), **dict(item.split("=", 1) for item in args.set or [])}
    run_bench(Project.load(args.params, overrides), quick=args.quick)
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.stack import STACK_ERRORS, run_stack

    try:
        return run_stack(_project(args), args.action)
    except STACK_ERRORS as err:  # a port taken, a service that would not start: one message, exit 2
        print(f"catalog-classifier stack {args.action}: error: {str(err).rstrip()}", file=sys.stderr)
        return EXIT_USAGE


def cmd_bench_stack(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.stack import STACK_ERRORS, run_bench_stack

    try:
        run_bench_stack(_project(args))
    except STACK_ERRORS as err:
        print(f"catalog-classifier bench-stack: error: {str(err).rstrip()}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.bench_serve import run_bench_serve

    run_bench_serve(_project(args), args.engine or ["ray", "mlflow"], args.set or [])
    return 0


def cmd_spread(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.spread import run_spread

    project = _project(args)
    _model_in_params(project, args.model)
    run_spread(project, args.model, args.seeds)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.report import run_report

    run_report(_project(args), log_to_mlflow=not args.no_log)
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from catalog_classifier.data.datacheck import check_data_folder
    from catalog_classifier.data.quality import format_report

    project = _project(args)
    report = check_data_folder(Path(args.path), project.params.data, args.catalogue, args.images)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(f"catalogue:              {report['catalogue']}\nimages folder:          {report['images_dir']}")
        print(format_report(report))
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default=PARAMS_FILE, help="parameters file (default: %(default)s)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", type=_key_value,
                        help="override a parameter, e.g. --set train.max_epochs=2 (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


MODEL_HELP = "timm model name, one of params.models"
EPILOG = ("Pipeline stages first (dvc repro runs them in this order), then actions. Every command takes --params "
          "FILE, --set KEY=VALUE (repeatable) and -v; the per-model stages take --model NAME. "
          "`make help` lists the Makefile targets.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="catalog-classifier", epilog=EPILOG,
        description="catalog-classifier: one command, one subcommand per pipeline stage or action.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _add_common(sub)
        sub.set_defaults(handler=handler)
        return sub

    # The DVC stages, in pipeline order.
    add("split", cmd_split, "audit the catalogue and write stratified train/val/test manifests")
    add("train", cmd_train, "train one model (early stopping) and record the run in MLflow").add_argument(
        "--model", required=True, help=MODEL_HELP)
    add("evaluate", cmd_evaluate, "score one trained model on validation and test").add_argument(
        "--model", required=True, help=MODEL_HELP)
    add("explain", cmd_explain, "Grad-CAM and SHAP explanations of one model, and their faithfulness").add_argument(
        "--model", required=True, help=MODEL_HELP)
    add("compare", cmd_compare, "side-by-side comparison of all models (Markdown + JSON)")
    promote = add("promote", cmd_promote,
                  "register the best model as challenger; make it champion if it passes the gate")
    promote.add_argument("--dry-run", action="store_true", help="print the decision, change nothing")
    promote.add_argument("--model", help="a trained model of params.models (default: the best in the comparison)")
    add("report", cmd_report, "one self-contained HTML page of the latest run, attached to each model's MLflow "
        "run").add_argument(
        "--no-log", action="store_true", help="write the page only; attach nothing to MLflow")

    # Actions.
    add("rollback", cmd_rollback, "move the champion alias back to the previous champion")
    predict = add("predict", cmd_predict, "auto-label images with a registered model: predictions CSV (calibrated "
                  "confidence, top-3, needs_review), a review queue and a summary beside it")
    predict.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders (searched recursively)")
    predict.add_argument("-i", "--input", metavar="DIR_OR_CSV",
                         help="a folder of images, or a CSV with an 'image' column (paths relative to the CSV's "
                              "folder or absolute) and optionally 'label' (then precision and coverage are reported)")
    which = predict.add_mutually_exclusive_group()
    which.add_argument("--version", help="registered model version (default: the champion)")
    which.add_argument("--model-uri", dest="model", metavar="URI",
                       help="a registered version, models:/NAME/VERSION or models:/NAME@ALIAS (e.g. @challenger)")
    # The first spelling of --model-uri; hidden because everywhere else --model is one of params.models.
    which.add_argument("--model", dest="model", help=argparse.SUPPRESS)
    predict.add_argument("-o", "--output", help="predictions CSV to write, with <stem>_review.csv and "
                         "<stem>_summary.json beside it (default: predictions to standard output only)")
    predict.add_argument("--rows", metavar="START:STOP",
                         help="only the input rows [START, STOP) (0-based; one shard of a catalogue, see the "
                              "batch-label flow)")
    predict.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                         help="continue the partial output of an interrupted run of the same inputs and model "
                              "(<output>.partial), skipping the rows it holds (default: on); --no-resume starts over")
    serve = add("serve", cmd_serve, "serve the champion over HTTP: Ray Serve with adaptive batching, or the "
                "reference mlflow models serve (offline)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=5001, help="port (default: %(default)s)")
    serve.add_argument("--engine", choices=["ray", "mlflow"], help="default: serve.engine in params.yaml")
    tune = add("tune", cmd_tune, "Optuna search per model family on train/val (resumable), tracked in MLflow")
    tune.add_argument("--family", action="append",
                      help="family of tune.families (repeatable; default: every family)")
    tune.add_argument("--n-trials", type=_positive(int),
                      help="finished trials the study should hold (default: tune.n_trials)")
    tune.add_argument("--timeout", type=_positive(float), metavar="SECONDS",
                      help="start no trial after this many seconds (default: tune.timeout_s)")
    tune.add_argument("--workers", type=_positive(int), default=1,
                      help="local worker processes sharing each study (default: %(default)s); to add workers on "
                           "other machines, run `catalog-classifier tune` there against the same tune.storage")
    # A worker started by --workers: its launcher writes the study's results once, after every worker is done.
    tune.add_argument("--no-publish", action="store_true", help=argparse.SUPPRESS)
    bench_tune = add("bench-tune", cmd_bench_tune, "tuning throughput with 1..N workers (tune.bench) and Optuna's "
                     "storage cost per trial on sqlite and PostgreSQL (JSON in bench.out_dir)")
    bench_tune.add_argument("--postgres-url", metavar="URL",
                            help="PostgreSQL database to measure on (default: a temporary cluster of its own)")
    bench_tune.add_argument("--only", choices=("storage", "throughput"), help="measure one of the two")
    add("tune-overrides", cmd_tune_overrides,
        "print a family's best tuned params as `dvc exp run` flags (pipe into: xargs dvc exp run)").add_argument(
        "--family", required=True, help="family of tune.families")
    spread = add("spread", cmd_spread, "run-to-run spread: one model's recipe under N seeds, val and test "
                 "macro-F1 (JSON beside the models; the report shows it)")
    spread.add_argument("--model", required=True, help=MODEL_HELP)
    spread.add_argument("--seeds", type=int, default=5, help="how many seeds, from train.seed on (default: 5)")
    add("bench", cmd_bench, "speed: training and inference against a naive loop and the machine's peak "
        "(JSON in bench.out_dir, MLflow run 'bench')").add_argument(
        "--quick", action="store_true", help="a few images and steps, no compile: a smoke run, not a measurement")
    add("bench-predict", cmd_bench_predict, "prediction runtimes (PyTorch eager fp32/bf16, frozen, ONNX Runtime) "
        "with ONNX parity, the runtime choice, and streaming batch predict end to end with peak RSS "
        "(JSON in bench.out_dir/predict.json)").add_argument(
        "--quick", action="store_true", help="few repeats and 200 rows: a smoke run, not a measurement")
    add("stack", cmd_stack, "the team stack on this machine (PostgreSQL, MLflow and Prefect servers, a work pool "
        "and a worker): start, stop, status, client environment, register prefect.yaml's deployments").add_argument(
        "action", choices=["up", "down", "status", "env", "deploy"],
        help="up: start what is not running; down: stop everything; status: exit 3 when a part is down; env: export "
             "lines for a shell (eval \"$(catalog-classifier stack env)\"); deploy: prefect deploy --all")
    add("bench-stack", cmd_bench_stack, "MLflow log_batch latency on the running stack (server on PostgreSQL) against "
        "a local sqlite store (JSON in bench.out_dir)")
    bench_serve = add("bench-serve", cmd_bench_serve, "load test of the served champion: Ray Serve against mlflow "
                      "models serve with 1/8/32 clients (serve.bench; JSON and table in bench.out_dir)")
    bench_serve.add_argument("--engine", action="append", choices=["ray", "mlflow"],
                             help="measure only this engine (repeatable; default: both)")
    check = add("check-data", cmd_check_data, "print the data-quality report for any data folder")
    check.add_argument("path", help="data folder holding the catalogue CSV and the images folder")
    check.add_argument("--catalogue",
                       help="catalogue CSV (default: <path>/<name of data.catalogue>, else the folder's only CSV)")
    check.add_argument("--images", help="images folder (default: <path>/<name of data.images_dir>)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("urllib3", "matplotlib", "PIL", "filelock", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from catalog_classifier.ops.progress import interactive

    if not interactive():  # MLflow's download bars would fill CI and DVC logs with carriage returns
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    # DVC and Prefect stop stages with SIGTERM; as an interrupt it unwinds: temp files go, the run is closed.
    signal.signal(signal.SIGTERM, raise_terminated)
    ended_before = last_ended_run_id()
    try:
        return args.handler(args)
    except TRANSIENT_ERRORS as err:  # before EXPECTED_ERRORS: a lock timeout is also a RegistryError
        print(f"catalog-classifier {args.command}: error: {str(err).rstrip()}", file=sys.stderr)
        return EXIT_TRANSIENT
    except EXPECTED_ERRORS as err:
        print(f"catalog-classifier {args.command}: error: {str(err).rstrip()}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as interrupt:
        ignore_stop_signals()
        run_id = mark_interrupted_run_killed(ended_before)
        marked = f"; MLflow run {run_id} marked KILLED" if run_id else ""
        print(f"catalog-classifier {args.command}: interrupted ({str(interrupt) or 'Ctrl-C'}){marked}",
              file=sys.stderr)
        return exit_status(interrupt)


if __name__ == "__main__":
    raise SystemExit(main())
