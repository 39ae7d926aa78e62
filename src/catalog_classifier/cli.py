"""``catalog-classifier``: one command, one subcommand per pipeline stage or action.

Entry points only parse arguments, configure logging, load params and call one library function; expected
errors (bad params, bad catalogue, unreachable tracking server) print one clear message and exit 2. An
interrupt (Ctrl-C, or SIGTERM from DVC/Prefect) leaves no partial output, marks the MLflow run KILLED and
exits 128 + the signal number.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from catalog_classifier.catalogue import CatalogueError
from catalog_classifier.config import PARAMS_FILE, ParamsError
from catalog_classifier.images import ImageLoadError
from catalog_classifier.interrupts import (
    exit_status,
    ignore_stop_signals,
    last_ended_run_id,
    mark_interrupted_run_killed,
    raise_terminated,
)
from catalog_classifier.tracking import TrackingUnavailable

EXPECTED_ERRORS = (ParamsError, CatalogueError, TrackingUnavailable, ImageLoadError, FileNotFoundError)
EXIT_USAGE = 2


def _project(args: argparse.Namespace) -> Any:
    from catalog_classifier.layout import Project

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
    from catalog_classifier.tracking import check_server, resolve_tracking_uri

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


def cmd_compare(args: argparse.Namespace) -> int:
    from catalog_classifier.stages.compare import run_compare

    run_compare(_project(args))
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from catalog_classifier.datacheck import check_data_folder
    from catalog_classifier.quality import format_report

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catalog-classifier", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _add_common(sub)
        sub.set_defaults(handler=handler)
        return sub

    add("split", cmd_split, "audit the catalogue and write stratified train/val/test manifests")
    add("train", cmd_train, "train one model (early stopping) and record the run in MLflow").add_argument(
        "--model", required=True, help="timm model name, one of params.models")
    add("evaluate", cmd_evaluate, "score one trained model on validation and test").add_argument(
        "--model", required=True, help="timm model name, one of params.models")
    add("compare", cmd_compare, "side-by-side comparison of all models (Markdown + JSON)")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    # DVC and Prefect stop stages with SIGTERM; as an interrupt it unwinds: temp files go, the run is closed.
    signal.signal(signal.SIGTERM, raise_terminated)
    ended_before = last_ended_run_id()
    try:
        return args.handler(args)
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
