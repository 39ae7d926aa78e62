"""Scheduled retraining: newest data, retrain only when something changed, promote through the gate, push.

A run pulls the newest data version and compares each stage's own inputs (command, params, code, data version)
with the registry's record of the last successful retraining (registry/retraining.py), not with ``dvc.lock``
and outputs its clone may lack (a read-only DVC remote never holds them): nothing changed, it stops with the
reason and the record it compared with. Otherwise it runs the pipeline flow on the changed stages (forced), the
stages below them (DVC decides by content) and the unchanged ones they read (DVC restores or reproduces their
outputs); ``promote`` is the only way a model reaches the registry (the gate decides). The pipeline flow then
records what the stages ran on, and the outputs are pushed when the default DVC remote is writable.

Run by a deployment (``make deploy``), a run first looks for a later run of the same deployment that is also due
already: when no worker was up for a while, the scheduled runs pile up as Late and start together once one is.
Only the newest of them retrains; the others end at once, skipped, naming the run that supersedes them.

    python -m flows.retrain server   # make prefect-server: a Prefect server (API + UI) on the host/port of params
    python -m flows.retrain serve    # make retrain-schedule: serve the deployment with the cron of params
    python -m flows.retrain run      # one retraining run now
    python -m flows.retrain run --dry-run   # what a run would do now, stage by stage, and why; runs nothing
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from catalog_classifier.config.params import PARAMS_FILE, OrchestrationParams, ParamsError, load_params
from catalog_classifier.ops import dvc_ops
from catalog_classifier.ops.exits import EXIT_TRANSIENT
from catalog_classifier.registry.tracking import TrackingUnavailable, data_version
from catalog_classifier.reporting.run_summary import PROMOTE_STAGE
from catalog_classifier.stages import retrain_plan
from flows.pipeline import pipeline, prefect_api, project_root

RETRAIN_ARTIFACT = "retraining"
FLOW_NAME = "scheduled-retraining"


# A later run in one of these states does (or did) the retraining this one would do; a cancelled, failed or
# crashed one does not, so an earlier due run still goes ahead then.
TAKES_OVER = frozenset({"SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "PAUSED"})


@dataclass(frozen=True)
class ScheduledRun:
    """What the backlog rule needs of a flow run: its id, name, when it was due, and its state type."""

    id: str
    name: str
    expected_start: datetime
    state: str

    def describe(self) -> str:
        return f"run '{self.name}' ({self.id}, due {self.expected_start.isoformat(timespec='seconds')}, {self.state})"


def newer_due_run(mine: ScheduledRun, others: Iterable[ScheduledRun], now: datetime) -> ScheduledRun | None:
    """The newest run of the same deployment that is due by ``now`` and later than ``mine`` (ties: by id), if any
    is still going to do the work. Whatever order the backlog starts in, exactly one run finds none: the newest."""
    later = [run for run in others
             if run.id != mine.id and run.state in TAKES_OVER and run.expected_start <= now
             and (run.expected_start, run.id) > (mine.expected_start, mine.id)]
    return max(later, key=lambda run: (run.expected_start, run.id), default=None)


def _scheduled(flow_run: Any) -> ScheduledRun:
    state = flow_run.state.type.value if flow_run.state else "SCHEDULED"
    return ScheduledRun(str(flow_run.id), flow_run.name, flow_run.expected_start_time, state)


@task(name="check-backlog", task_run_name="check-backlog", cache_policy=NO_CACHE)
def check_backlog(flow_run_id: str, deployment_id: str) -> str | None:
    """A later run of this deployment that is due already (the newest of a backlog of Late runs) supersedes this
    one; returns it described, or None when this run is the one to retrain."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterExpectedStartTime,
    )

    with get_client(sync_client=True) as client:
        mine = client.read_flow_run(UUID(flow_run_id))
        candidates = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[UUID(deployment_id)]),
            expected_start_time=FlowRunFilterExpectedStartTime(after_=mine.expected_start_time)), limit=200)
    newer = newer_due_run(_scheduled(mine), [_scheduled(run) for run in candidates], datetime.now(UTC))
    get_run_logger().info("backlog: %s", f"superseded by {newer.describe()}" if newer else
                          "no later run of this deployment is due: this run goes ahead")
    return newer.describe() if newer else None


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
    """What changed since dvc.lock (``dvc status``): data, params, code or missing outputs; empty: nothing.

    Not the retraining's decision any more (``plan-retraining`` is): in a clone without the outputs every stage is
    listed here. It says what DVC alone sees in the clone it runs in."""
    changes = dvc_ops.describe_changes(dvc_ops.changed_stages(Path(project_dir)))
    for line in changes:
        get_run_logger().info("changed: %s", line)
    return changes


@task(name="plan-retraining", task_run_name="plan-retraining", cache_policy=NO_CACHE)
def plan_changes(project_dir: str) -> dict[str, Any]:
    """Each stage's own inputs (params, code, data version, command) against the registry's record of the last
    retraining (registry/retraining.py); one log line per stage: what this run does with it and why."""
    plan = retrain_plan.plan(Path(project_dir))
    logger = get_run_logger()
    logger.info("compared with %s", plan.baseline)
    for line in plan.lines():
        logger.info("plan: %s", line)
    return retrain_plan.plan_dict(plan)


@task(name="pull-outputs", task_run_name="pull-outputs", cache_policy=NO_CACHE)
def pull_outputs(project_dir: str, stages: list[str]) -> str:
    """``dvc pull`` of the outputs of ``stages`` from the default remote, as far as it holds them."""
    return dvc_ops.pull_stage_outputs(Path(project_dir), stages)


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
    """Retrain the stages whose data, params or code changed since the registry's record of the last retraining;
    skip with the reason and that record otherwise."""
    from prefect.runtime import deployment, flow_run

    root = project_root(project_dir)
    logger = get_run_logger()
    if deployment.id and (newer := check_backlog(str(flow_run.id), str(deployment.id))):
        reason = (f"skipped: superseded by {newer}, also due now (a backlog of scheduled runs that waited for a "
                  "worker): only the newest of them retrains")
        logger.info("%s", reason)
        create_markdown_artifact(markdown=_report("skipped", reason, []), key=RETRAIN_ARTIFACT)
        return {"status": "skipped", "reason": reason, "superseded_by": newer}
    params = load_params(root / PARAMS_FILE)
    orchestration = params.orchestration
    # A remote that does not answer is the typical transient failure here: same retries as the stages.
    pull = pull_newest_data.with_options(retries=orchestration.task_retries,
                                         retry_delay_seconds=orchestration.retry_delay_s)
    version = pull(str(root))
    plan = plan_changes(str(root))
    if plan["nothing_to_do"] and not force:
        reason = (f"skipped: neither data (version {version}) nor params nor code changed for any stage since "
                  f"{plan['baseline']}")
        logger.info("%s", reason)
        create_markdown_artifact(markdown=_report("skipped", reason, plan["lines"]), key=RETRAIN_ARTIFACT)
        return {"status": "skipped", "reason": reason, "data_version": version, "plan": plan}
    if plan["deferred"] and not force:
        # Only pages changed and their inputs are absent here: they may still be in the remote (pushed by an
        # earlier retraining); what it holds is pulled, then the plan is made again.
        logger.info("outputs read by the changed stages: %s", pull_outputs(str(root), plan["missing"]))
        plan = plan_changes(str(root))
    if plan["deferred"] and not force:
        reason = f"skipped: {plan['deferred']}"
        logger.warning("%s", reason)
        create_markdown_artifact(markdown=_report("skipped", reason, plan["lines"]), key=RETRAIN_ARTIFACT)
        return {"status": "skipped", "reason": reason, "data_version": version, "plan": plan}
    changes = plan["changes"]
    reason = ("forced" if force and plan["nothing_to_do"]
              else f"{len(plan['forced'])} stage(s) changed since {plan['baseline']}")
    logger.info("retraining (%s) on data version %s", reason, version)
    summary = pipeline(project_dir=str(root), force=force, only_stages=None if force else plan["to_run"],
                       forced_stages=plan["forced"])
    if PROMOTE_STAGE not in summary["stages"]:
        logger.warning("dvc.yaml has no '%s' stage: models trained and evaluated, registry unchanged",
                       PROMOTE_STAGE)
    pushed = push_outputs(str(root), orchestration.push_outputs)
    create_markdown_artifact(markdown=_report("retrained", f"Retrained ({reason}); {pushed}.", plan["lines"]),
                             key=RETRAIN_ARTIFACT)
    return {"status": "retrained", "reason": reason, "changes": changes, "data_version": version,
            "summary": summary, "push": pushed, "plan": plan}


def start_server(orchestration: OrchestrationParams) -> None:
    """Replace this process by ``prefect server start`` on the loopback host and port of params."""
    from catalog_classifier.ops.exposure import require_loopback_or_auth

    # This server has no API auth string: loopback only (the team stack is where authentication lives).
    require_loopback_or_auth("the Prefect server", orchestration.server_host, None, "orchestration.server_host")
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
    parser.add_argument("--dry-run", action="store_true",
                        help="run: print what a run would do with each stage, why, and against which record")
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
    elif args.dry_run:
        try:
            print(retrain_plan.dry_run_text(root))
        except TrackingUnavailable as err:
            print(f"flows.retrain: error: {err}", file=sys.stderr)
            return EXIT_TRANSIENT
    else:
        with prefect_api(orchestration):
            state = retrain(project_dir=str(root), force=args.force, return_state=True)
        return 0 if state.is_completed() else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
