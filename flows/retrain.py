"""Scheduled retraining: newest data, retrain only when something changed, promote through the gate, push.

A run pulls the newest data version, asks DVC what changed since ``dvc.lock`` was written (the reproduction
the current champion came from) and stops with the reason in the logs when nothing did. Otherwise it runs
the pipeline flow, whose ``promote`` stage is the only way a model reaches the registry (the gate decides),
and pushes the outputs to the default DVC remote when that remote is writable.

    python -m flows.retrain server   # make prefect-server: a Prefect server (API + UI) on the host/port of params
    python -m flows.retrain serve    # make retrain-schedule: serve the deployment with the cron of params
    python -m flows.retrain run      # one retraining run now
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from catalog_classifier.config.params import PARAMS_FILE, OrchestrationParams, ParamsError, load_params
from catalog_classifier.ops import dvc_ops
from catalog_classifier.registry.tracking import data_version
from catalog_classifier.reporting.run_summary import PROMOTE_STAGE
from flows.pipeline import pipeline, prefect_api, project_root

RETRAIN_ARTIFACT = "retraining"
FLOW_NAME = "scheduled-retraining"


@task(name="pull-newest-data", task_run_name="pull-newest-data", cache_policy=NO_CACHE)
def pull_newest_data(project_dir: str) -> str:
    """``dvc update`` imported data, ``dvc pull`` every pointer; returns the data version now pinned."""
    root = Path(project_dir)
    logger = get_run_logger()
    done = dvc_ops.pull_data(root)
    logger.info("%s", "; ".join(done) if done else "no .dvc data pointers: data is not versioned by DVC here")
    version = data_version(root)
    logger.info("data version: %s", version)
    return version


@task(name="detect-changes", task_run_name="detect-changes", cache_policy=NO_CACHE)
def detect_changes(project_dir: str) -> list[str]:
    """What changed since dvc.lock (``dvc status``): data, params, code or missing outputs; empty: nothing."""
    changes = dvc_ops.describe_changes(dvc_ops.changed_stages(Path(project_dir)))
    for line in changes:
        get_run_logger().info("changed: %s", line)
    return changes


@task(name="push-outputs", task_run_name="push-outputs", cache_policy=NO_CACHE)
def push_outputs(project_dir: str, enabled: bool) -> str:
    """``dvc push`` when the default remote is writable; otherwise say why not. A failed push is reported,
    not raised: the models are trained and the gate has decided by then."""
    root = Path(project_dir)
    logger = get_run_logger()
    if not enabled:
        result = "not pushed: orchestration.push_outputs is false"
    elif (remote := dvc_ops.default_remote(root)) is None:
        result = "not pushed: no default DVC remote configured"
    elif dvc_ops.remote_writable(remote) is False:
        result = f"not pushed: remote '{remote.name}' ({remote.url}) is not writable"
    else:
        try:
            result = f"pushed to '{remote.name}' ({remote.url}): {dvc_ops.push(root, remote)}"
        except dvc_ops.DvcError as err:
            logger.warning("dvc push to %s failed: %s", remote.url, err)
            return f"push to '{remote.name}' ({remote.url}) failed: {str(err).splitlines()[-1]}"
    logger.info("%s", result)
    return result


def _report(status: str, reason: str, lines: list[str]) -> str:
    return "\n".join([f"# Retraining: {status}", "", reason, "", *[f"- {line}" for line in lines]]) + "\n"


@flow(name=FLOW_NAME, flow_run_name="retrain force={force}")
def retrain(project_dir: str | None = None, force: bool = False) -> dict[str, Any]:
    """Retrain when data, params or code changed since the last reproduction; skip with the reason otherwise."""
    root = project_root(project_dir)
    logger = get_run_logger()
    params = load_params(root / PARAMS_FILE)
    orchestration = params.orchestration
    # A remote that does not answer is the typical transient failure here: same retries as the stages.
    pull = pull_newest_data.with_options(retries=orchestration.task_retries,
                                         retry_delay_seconds=orchestration.retry_delay_s)
    version = pull(str(root))
    changes = detect_changes(str(root))
    if not changes and not force:
        reason = (f"skipped: neither data (version {version}) nor params nor code changed since dvc.lock was "
                  "written by the run the current models came from (dvc status: up to date)")
        logger.info("%s", reason)
        create_markdown_artifact(markdown=_report("skipped", reason, []), key=RETRAIN_ARTIFACT)
        return {"status": "skipped", "reason": reason, "data_version": version}
    reason = "forced" if force and not changes else f"{len(changes)} change(s) since dvc.lock"
    logger.info("retraining (%s) on data version %s", reason, version)
    summary = pipeline(project_dir=str(root), force=force)
    if PROMOTE_STAGE not in summary["stages"]:
        logger.warning("dvc.yaml has no '%s' stage: models trained and evaluated, registry unchanged",
                       PROMOTE_STAGE)
    pushed = push_outputs(str(root), orchestration.push_outputs)
    create_markdown_artifact(markdown=_report("retrained", f"Retrained ({reason}); {pushed}.", changes),
                             key=RETRAIN_ARTIFACT)
    return {"status": "retrained", "reason": reason, "changes": changes, "data_version": version,
            "summary": summary, "push": pushed}


def start_server(orchestration: OrchestrationParams) -> None:
    """Replace this process by ``prefect server start`` on the loopback host and port of params."""
    prefect = Path(sys.executable).parent / "prefect"
    executable = str(prefect) if prefect.is_file() else (shutil.which("prefect") or "prefect")
    # Analytics off: the server would only log failed telemetry calls on an offline machine.
    command = [executable, "server", "start", "--host", orchestration.server_host,
               "--port", str(orchestration.server_port), "--analytics-off"]
    print(f"Prefect API and UI on http://{orchestration.server_host}:{orchestration.server_port}", flush=True)
    os.execv(executable, command)


def serve(root: Path, orchestration: OrchestrationParams) -> None:
    """Register the retraining deployment with the cron of params and run its scheduled runs (blocks)."""
    from prefect.schedules import Cron

    with prefect_api(orchestration, required=True) as url:
        logging.getLogger(__name__).info("serving %s/%s on %s, cron %r (%s)", FLOW_NAME,
                                         orchestration.deployment, url, orchestration.retrain_cron,
                                         orchestration.timezone)
        retrain.serve(name=orchestration.deployment,
                      schedules=[Cron(orchestration.retrain_cron, timezone=orchestration.timezone)],
                      parameters={"project_dir": str(root)}, tags=["catalog-classifier", "retraining"],
                      description=__doc__.splitlines()[0])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["server", "serve", "run"])
    parser.add_argument("--project-dir", help="project root (default: this repository)")
    parser.add_argument("--force", action="store_true", help="run: retrain even when nothing changed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = project_root(args.project_dir)
    try:
        orchestration = load_params(root / PARAMS_FILE).orchestration
    except ParamsError as err:
        print(f"flows.retrain: error: {err}", file=sys.stderr)
        return 2
    if args.action == "server":
        start_server(orchestration)
    elif args.action == "serve":
        serve(root, orchestration)
    else:
        with prefect_api(orchestration):
            state = retrain(project_dir=str(root), force=args.force, return_state=True)
        return 0 if state.is_completed() else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
