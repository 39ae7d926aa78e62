"""The DVC pipeline as one Prefect flow: one task per DVC stage, retries, logs, and a summary artifact.

Each task runs ``dvc repro --single-item <stage>``, so DVC still decides what is stale and ``dvc.lock`` stays
the record of what ran; Prefect adds retries of transient failures, the logs and the UI. The tasks are read
from the project's ``dvc.yaml`` (``dvc dag``), so stages added there (explain, promote, ...) join the flow
without a change here.

    python -m flows.pipeline [--force] [--set models=[resnet50]] [--project-dir DIR]   # or: make pipeline-flow
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from catalog_classifier.config.layout import Project
from catalog_classifier.config.overrides import validate_overrides, write_overrides
from catalog_classifier.config.params import PARAMS_FILE, OrchestrationParams, ParamsError, load_params
from catalog_classifier.ops import dvc_ops
from catalog_classifier.reporting.run_summary import model_rows, promotion_record, summary_markdown
from catalog_classifier.stages import retrain_plan

REPO_ROOT = Path(__file__).resolve().parents[1]
SUMMARY_ARTIFACT = "pipeline-summary"
HEALTH_TIMEOUT_S = 2.0
EPHEMERAL_STARTUP_TIMEOUT_S = 180


def project_root(project_dir: str | None) -> Path:
    return Path(project_dir).resolve() if project_dir else REPO_ROOT


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a stage only when retrying can help (see ``StageFailed.transient``): never a rejected input.

    Prefect 3 calls this with the failed state; ``state.result(raise_on_failure=False)`` is the raised exception.
    Anything but a stage failure (DVC itself not starting, say) is not retried either.
    """
    error = state.result(raise_on_failure=False)
    return isinstance(error, dvc_ops.StageFailed) and error.transient


@task(name="apply-params", task_run_name="apply-params", cache_policy=NO_CACHE)
def apply_params(project_dir: str, overrides: dict[str, Any]) -> list[str]:
    """Validate the overrides, then write them into params.yaml (see param_overrides: dvc.lock records them)."""
    params = write_overrides(Path(project_dir) / PARAMS_FILE, overrides)
    get_run_logger().info("params.yaml now has %s", ", ".join(f"{k}={v!r}" for k, v in overrides.items()))
    return params.models


@task(name="plan-stages", task_run_name="plan-stages", cache_policy=NO_CACHE)
def plan_stages(project_dir: str, models: list[str]) -> list[str]:
    """The stages of dvc.yaml in run order (DVC's DAG; split, train, evaluate, explain, compare, promote)."""
    stages = dvc_ops.pipeline_stages(Path(project_dir), models)
    get_run_logger().info("stages: %s", " -> ".join(stages))
    return stages


@task(name="dvc-stage", task_run_name="{stage}", cache_policy=NO_CACHE, retry_condition_fn=_retry_transient)
def run_stage(project_dir: str, stage: str, force: bool = False) -> str:
    """``dvc repro --single-item <stage>``; the stage's own output goes to the Prefect logs as it comes."""
    logger = get_run_logger()

    def relay(line: str) -> None:
        failed = line.startswith("ERROR") or ": error: " in line or line.startswith("Traceback")
        (logger.error if failed else logger.info)("%s | %s", stage, line)

    outcome = dvc_ops.repro_stage(Path(project_dir), stage, force=force, on_line=relay)
    logger.info("stage %s: %s", stage, {"ran": "ran", "skipped": "unchanged since dvc.lock, skipped",
                                        "restored": "restored from DVC's run-cache"}[outcome.action])
    return outcome.action


@task(name="publish-summary", task_run_name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(project_dir: str, outcomes: list[tuple[str, str]]) -> dict[str, Any]:
    """A Markdown artifact: each model's MLflow run id, test macro-F1, fit time and the promotion decision."""
    root = Path(project_dir)
    project = Project.load(root / PARAMS_FILE)
    rows = model_rows(project)
    promotion = promotion_record(root)
    create_markdown_artifact(markdown=summary_markdown(rows, promotion, outcomes), key=SUMMARY_ARTIFACT,
                             description=f"catalog-classifier pipeline in {root}")
    return {"models": rows, "promotion": promotion, "stages": dict(outcomes)}


@task(name="record-retraining", task_run_name="record-retraining", cache_policy=NO_CACHE)
def record_retraining_task(project_dir: str, recorded_by: str) -> str:
    """Store in the registry what every stage now ran on: the next scheduled retraining compares against it."""
    line = retrain_plan.record(Path(project_dir), recorded_by)
    get_run_logger().info("%s", line)
    return line


@flow(name="catalog-pipeline", flow_run_name="pipeline force={force}")
def pipeline(project_dir: str | None = None, params_overrides: dict[str, Any] | None = None,
             force: bool = False, only_stages: list[str] | None = None, forced_stages: list[str] | None = None,
             record: bool = True) -> dict[str, Any]:
    """Run every DVC stage of the project in order, one task each; a failing stage fails the run.

    ``params_overrides`` (``{"models": ["resnet50"], "train.lr": 0.001}``) are validated, then written into
    params.yaml before any stage runs; ``force`` reruns stages DVC would skip. ``only_stages`` (the scheduled
    retraining's plan) runs those stages and leaves the others alone, ``forced_stages`` of them with ``--force``.
    Once every stage succeeded, ``record`` stores in the registry what they ran on (registry/retraining.py).
    """
    root = project_root(project_dir)
    # Validate before anything runs or is written: a bad override fails the run with the key named.
    params = load_params(root / PARAMS_FILE, params_overrides)
    models = apply_params(str(root), params_overrides) if params_overrides else params.models
    orchestration = params.orchestration
    stage_task = run_stage.with_options(retries=orchestration.task_retries,
                                        retry_delay_seconds=orchestration.retry_delay_s)
    outcomes = []
    for stage in plan_stages(str(root), models):
        # Sequential on purpose: DVC holds one lock per repository, and each stage needs its upstream outputs.
        if only_stages is not None and stage not in only_stages:
            outcomes.append((stage, "unchanged"))
            continue
        outcomes.append((stage, stage_task(str(root), stage, force or stage in (forced_stages or []))))
    summary = publish_summary(str(root), outcomes)
    if record:
        from prefect.runtime import flow_run

        summary["record"] = record_retraining_task(str(root), f"flow run '{flow_run.name}' ({flow_run.id})")
    return summary


def _server_answers(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=HEALTH_TIMEOUT_S):
            return True
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def prefect_api(orchestration: OrchestrationParams, *, required: bool = False) -> Iterator[str | None]:
    """Use ``PREFECT_API_URL`` if set, else the local server of params when it answers (runs show in its UI).

    Without either, Prefect starts a temporary server for the run, unless ``required`` (schedules need a
    real server): then fail with the command that starts one.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    url = os.environ.get("PREFECT_API_URL") or orchestration.api_url()
    if _server_answers(url):
        os.environ["PREFECT_API_URL"] = url  # processes the runner starts inherit it
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
        return
    if required or os.environ.get("PREFECT_API_URL"):
        raise SystemExit(f"no Prefect server answers at {url}: start one with `make prefect-server`")
    logging.getLogger(__name__).info("no Prefect server at %s: using a temporary one for this run", url)
    # The temporary server can take far longer than Prefect's default wait to start on a busy machine.
    timeout = int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_S))
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: timeout}):
        yield None


def parse_overrides(items: Sequence[str] | None) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in items or []]
    bad = [item for item, pair in zip(items or [], pairs, strict=True) if len(pair) != 2]
    if bad:
        raise SystemExit(f"--set expects KEY=VALUE, got {', '.join(bad)}")
    return dict(pairs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", help="project root (default: this repository)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="params override written into params.yaml, e.g. --set train.max_epochs=2")
    parser.add_argument("--force", action="store_true", help="rerun every stage, even unchanged ones")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = project_root(args.project_dir)
    overrides = parse_overrides(args.set)
    try:  # reject bad overrides here, in one line, before a Prefect server is even contacted
        params = validate_overrides(root / PARAMS_FILE, overrides)
    except ParamsError as err:
        print(f"flows.pipeline: error: {err}", file=sys.stderr)
        return 2
    with prefect_api(params.orchestration):
        state = pipeline(project_dir=str(root), params_overrides=overrides or None, force=args.force,
                         return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    raise SystemExit(main())
