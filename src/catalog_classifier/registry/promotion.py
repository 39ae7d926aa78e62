"""Promotion: register the selected model as the ``challenger``; the gate decides on ``champion``.

The challenger is the model the compare stage selected on validation macro-F1 (never on test). Both it and the
current champion are run, each with its own stored preprocessing, on the same images: today's test split minus
the champion's training images. The rule itself is :func:`catalog_classifier.registry.gate.decide`; the registry
writes are in :mod:`catalog_classifier.registry.versions`. ``dry_run`` scores and decides but logs, registers and
writes nothing. The pipeline's stage is idempotent: a run whose served files are registered already gets no new
version (``reuse_registered``); naming a model on the command line always registers and judges it.

Each version also gets a markdown description (:mod:`catalog_classifier.registry.descriptions`), rendered from
its tags, so a reviewer reads the decision and its figures in the registry UI; a rollback renders it again.

The registered version is data only (:mod:`catalog_classifier.registry.artifact`): safetensors weights, JSON
configs and the training manifest, each file's sha256 recorded in the version's tags when it is created; the
champion it is compared with is loaded through the same checks.

The registered model carries its calibration (the evaluate stage's ``autolabel.json``: temperature and auto-label
threshold), so whoever serves it gets calibrated confidences and review flags; the version's tags say which, and
how much of the gate's images the challenger auto-labelled at that threshold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from catalog_classifier.config.layout import Project
from catalog_classifier.config.params import ParamsError
from catalog_classifier.data.manifests import read_manifest
from catalog_classifier.modeling.onnx_runtime import export_classifier_dir
from catalog_classifier.modeling.prediction import (
    Calibration,
    ImageClassifier,
    pipeline_inference_settings,
    write_classifier_dir,
)
from catalog_classifier.ops.io import read_json
from catalog_classifier.registry.artifact import (
    ONNX_FILE,
    SHA256_TAG,
    TRAIN_MANIFEST,
    fetch_legacy_weights,
    fetch_verified,
    log_classifier_folder,
    registration_tags,
)
from catalog_classifier.registry.descriptions import refresh_description
from catalog_classifier.registry.gate import (
    AutolabelPromise,
    Decision,
    autolabel_figures,
    decide,
    shared_test_images,
)
from catalog_classifier.registry.locking import choose_lock
from catalog_classifier.registry.selection import weights_label
from catalog_classifier.registry.tracking import data_version, git_tags, setup_mlflow
from catalog_classifier.registry.versions import (
    CLASSIFIER_TAG,
    champion_version,
    now,
    record_decision,
    register_challenger,
    registered_version,
    rollback,
    tag_value,
    version_tags,
)

log = logging.getLogger(__name__)

# The train stage logs the manifests it trained on under this artifact path of its run.
RUN_TRAIN_MANIFEST = "splits/train.csv"


def _read_train_manifest(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image": str, "label": str, "sha256": str})


def _challenger_dir(project: Project, model_name: str, run_id: str, folder: Path) -> Path:
    """Weights, preprocessing config, inference settings, calibration and the run's own training manifest."""
    import mlflow

    autolabel = project.autolabel(model_name)
    if not autolabel.is_file():
        log.warning("%s is missing (evaluate stage older than calibration?): %s is registered uncalibrated "
                    "(temperature 1, every prediction needs review, auto-label coverage 0)", autolabel, model_name)
    directory = write_classifier_dir(project.weights(model_name), folder / "classifier",
                                     pipeline_inference_settings(project.params),
                                     autolabel if autolabel.is_file() else None)
    manifest = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=RUN_TRAIN_MANIFEST,
                                                   dst_path=str(folder / "download"))
    shutil.copyfile(manifest, directory / TRAIN_MANIFEST)
    # The ONNX graph of these weights rides along: a deployer runs the version on ONNX Runtime without the training
    # stack, and predict/serve load it instead of exporting at every start.
    export_classifier_dir(directory)
    return directory


def classifier_fingerprint(directory: Path) -> str:
    """sha256 over the served folder's files (relative names and bytes, in name order): two folders with this
    digest serve the same predictions, sets and review flags. ``model.onnx`` is left out: it is derived from the
    weights in the same folder, and a folder registered before it was exported is the same model."""
    digest = hashlib.sha256()
    for path in sorted(item for item in directory.rglob("*") if item.is_file() and item.name != ONNX_FILE):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def _labels(classifier: ImageClassifier, paths: list[Path]) -> list[str]:
    return _predictions(classifier, paths)[0]


def _predictions(classifier: ImageClassifier, paths: list[Path]) -> tuple[list[str], list[float]]:
    """Predicted label and calibrated confidence of each image."""
    probabilities, classes = classifier.probabilities_for_files(paths)
    return [classes[i] for i in probabilities.argmax(1)], [float(value) for value in probabilities.max(1)]


def calibration_tags(calibration: Calibration, figures: dict[str, Any]) -> dict[str, str]:
    """Registry tags of the version's calibration: what its served confidences and review flags rest on."""
    def text(value: float | None) -> str:
        return "none" if value is None else str(value)

    return {"temperature": text(calibration.temperature), "autolabel_threshold": text(calibration.threshold),
            "autolabel_target_precision": text(calibration.target_precision),
            "autolabel_coverage": text(figures.get("challenger_coverage"))}


def model_facts(project: Project, model_name: str) -> dict[str, Any]:
    """The model's own figures beside the gate's: validation and test macro-F1 from the evaluate stage (the whole
    splits) and what initialised it; a file missing (promote run outside the pipeline) leaves its keys out."""
    facts: dict[str, Any] = {}
    evaluated = project.eval_metrics(model_name)
    if evaluated.is_file():
        metrics = read_json(evaluated)
        facts.update(val_f1_macro=round(metrics["val"]["f1_macro"], 6),
                     test_f1_macro=round(metrics["test"]["f1_macro"], 6))
        for split in ("val", "test"):
            interval = metrics[split].get("f1_macro_interval")
            if interval:
                facts[f"{split}_f1_macro_interval"] = json.dumps([interval["low"], interval["high"]])
    trained = project.train_metrics(model_name)
    if trained.is_file():
        trained_metrics = read_json(trained)
        facts["weights"] = weights_label(trained_metrics)
        if trained_metrics.get("cv_f1_macro_mean") is not None:
            facts.update(cv_f1_macro_mean=trained_metrics["cv_f1_macro_mean"],
                         cv_f1_macro_sd=trained_metrics["cv_f1_macro_sd"])
    return facts


def judge(project: Project, challenger: ImageClassifier, model_name: str, champion: str | None) -> tuple[
        Decision, list[str]]:
    """Score challenger and champion (registered version ``champion``) on the shared images and decide."""
    params = project.params
    test = read_manifest(project, "test")
    champion_model = None
    champion_train = None
    with tempfile.TemporaryDirectory(prefix="catalog-champion-") as folder:
        if champion is not None:
            directory = _champion_folder(params.registry.model_name, champion, Path(folder))
            champion_model = ImageClassifier.from_dir(directory)
            if (directory / TRAIN_MANIFEST).is_file():
                champion_train = _read_train_manifest(directory / TRAIN_MANIFEST)
            else:
                log.warning("champion v%s carries no training manifest: judged on the whole test split", champion)
    shared, excluded = shared_test_images(test, champion_train)
    paths = [project.path(params.data.images_dir) / name for name in shared["image"]]
    champion_labels = _labels(champion_model, paths) if champion_model is not None else None
    truth = list(shared["label"])
    labels, confidences = _predictions(challenger, paths)
    auto = autolabel_figures(truth, labels, confidences, challenger.calibration.threshold)
    calibration = challenger.calibration
    # A calibration written before thresholds carried a precision bound has no promise to check (coverage only).
    promise = None if calibration.calibration_source is None else AutolabelPromise(
        threshold=calibration.threshold, coverage=calibration.calibration_coverage,
        precision_lower_bound=calibration.precision_lower_bound, target_precision=calibration.target_precision,
        source=calibration.calibration_source)
    decision = decide(truth, labels, champion_labels, params.data.classes, min_delta=params.registry.min_delta,
                      class_f1_floor=params.registry.class_f1_floor, uncertainty=params.uncertainty,
                      coverage=auto["coverage"] if truth else None, min_coverage=params.registry.min_coverage,
                      promise=promise)
    decision.figures.update(n_excluded=len(excluded), compared_with=champion or "none", challenger_model=model_name)
    if truth:
        precision = auto["precision"]
        decision.figures.update(challenger_n_auto_labelled=auto["n_auto_labelled"],
                                challenger_autolabel_precision=None if precision is None else round(precision, 6),
                                challenger_autolabel_threshold=challenger.calibration.threshold,
                                challenger_autolabel_target_precision=challenger.calibration.target_precision)
    return decision, excluded


def _champion_folder(name: str, champion: str, folder: Path) -> Path:
    """The champion's data files, verified against its recorded hashes; a champion registered before artifacts
    became data only is read as data (state dict under ``weights_only``, JSON), never through its code."""
    import mlflow

    client = mlflow.MlflowClient()
    version = client.get_model_version(name, champion)
    if SHA256_TAG in (version.tags or {}):
        return fetch_verified(f"models:/{name}/{champion}", folder, client).directory
    log.warning("champion v%s predates data-only registry artifacts: its weights are read as data (no code run, "
                "torch.load weights_only) but no sha256 vouches for them; serve and predict refuse it", champion)
    return fetch_legacy_weights(version, folder)


def require_configured(project: Project, model_name: str) -> None:
    """Only a model of ``params.models`` can be promoted: its recipe and run are the pipeline's own."""
    if model_name not in project.params.models:
        raise ParamsError(f"{model_name!r} is not one of params.models ({', '.join(project.params.models)})")


def promote(project: Project, model_name: str, run_id: str, *, dry_run: bool = False,
            reuse_registered: bool = False) -> dict[str, Any]:
    """Register ``model_name``'s run as challenger, apply the gate, move ``champion`` if it passes; the report.

    ``reuse_registered`` (the pipeline's promote stage): when a version of the same run with the same classifier
    files is registered already, register, log and move nothing and report that version ("unchanged"). DVC runs
    the stage again whenever any model's outputs change, e.g. after a model that was not selected is retrained.

    The served model is logged only once the lock is held and the gate has decided: a promote that times out on
    the lock, or fails before registering, leaves no logged model behind for its retry to add to."""
    import mlflow

    require_configured(project, model_name)
    params = project.params
    name = params.registry.model_name
    setup_mlflow(params.mlflow, project.root)
    client = mlflow.MlflowClient()
    context = {"data_version": data_version(project.root), **git_tags(project.root),
               "source_model": model_name, "source_run_id": run_id}
    facts = model_facts(project, model_name)
    with tempfile.TemporaryDirectory(prefix="catalog-promote-") as tmp:
        classifier_dir = _challenger_dir(project, model_name, run_id, Path(tmp))
        context[CLASSIFIER_TAG] = classifier_fingerprint(classifier_dir)
        challenger = ImageClassifier.from_dir(classifier_dir)
        if dry_run:
            champion = champion_version(client, name)
            decision, excluded = judge(project, challenger, model_name, champion)
            return _report(name, None, champion, decision, excluded, {**context, **facts}, dry_run=True)
        # The lock is chosen and its database reached before anything is logged: a registry no lock can guard, or
        # a lock database that is down, fails the command with nothing written.
        lock = choose_lock(mlflow.get_registry_uri(), project.root, params.registry, "promote")
        lock.check()
        with lock.held():
            # Read the champion only once the lock is held: a concurrent promote may just have moved it.
            champion = champion_version(client, name)
            existing = registered_version(client, name, run_id, context[CLASSIFIER_TAG]) if reuse_registered else None
            if existing is not None:
                return unchanged_report(name, str(existing.version), existing.tags or {}, champion,
                                        {**context, **facts})
            decision, excluded = judge(project, challenger, model_name, champion)
            # Logged only now (lock held, gate decided): a promote that times out on the lock logs nothing, and
            # the folder is content-addressed, so a retry of a failed registration writes the same folder again.
            with mlflow.start_run(run_id=run_id):
                source, hashes = log_classifier_folder(classifier_dir)
            version = register_challenger(client, name, source, run_id,
                                          {**context, **registration_tags(hashes)}).version
            tags = version_tags(decision.to_dict(), {**context, "decided_at": now(),
                                                     **{key: str(value) for key, value in facts.items()},
                                                     **calibration_tags(challenger.calibration, decision.figures)})
            record_decision(client, name, str(version), decision.promote, tags)
            refresh_description(client, name, str(version))
    return _report(name, str(version), champion, decision, excluded, {**context, **facts}, dry_run=False)


# Tags of a version that are not figures of its gate decision (context, facts, calibration, registry events).
_NOT_FIGURES = frozenset({"decision", "reason", "decided_at", "data_version", "git_commit", "git_dirty_files",
                          "source_model", "source_run_id", CLASSIFIER_TAG, "val_f1_macro", "test_f1_macro",
                          "weights", "temperature", "autolabel_threshold", "autolabel_target_precision",
                          "autolabel_coverage", "previous_champion", "rolled_back_at", "rolled_back_to",
                          "restored_at"})


def unchanged_report(name: str, version: str, tags: dict[str, str], champion: str | None,
                     context: dict[str, Any]) -> dict[str, Any]:
    """The report of a promote stage that found its model registered already: that version's decision and figures
    (from its tags), the registry as it is, nothing changed."""
    then = tags.get("decision", "unknown")
    reason = (f"{context['source_model']} run {context['source_run_id'][:12]} is already registered as v{version} "
              f"with the same files (classifier sha256 {context[CLASSIFIER_TAG][:12]}): nothing registered, champion "
              f"unchanged; v{version} was {then}: {tags.get('reason', 'no reason recorded')}")
    figures = {key: tag_value(value) for key, value in tags.items() if key not in _NOT_FIGURES}
    report = _report(name, version, champion, Decision(False, reason, figures), [], context, dry_run=False)
    return {**report, "decision": "unchanged", "champion_after": champion, "registered_decision": then}


def roll_back(project: Project) -> tuple[str, str]:
    """Give ``champion`` back to the previous champion, under the same lock as promote; both versions'
    descriptions are rendered again with the rollback in them."""
    import mlflow

    params = project.params
    setup_mlflow(params.mlflow, project.root)
    with choose_lock(mlflow.get_registry_uri(), project.root, params.registry, "rollback").held():
        client = mlflow.MlflowClient()
        demoted, restored = rollback(client, params.registry.model_name)
        for version in (demoted, restored):
            refresh_description(client, params.registry.model_name, version)
        return demoted, restored


def _report(name: str, version: str | None, champion: str | None, decision: Decision, excluded: list[str],
            context: dict[str, str], *, dry_run: bool) -> dict[str, Any]:
    after = (version if decision.promote else champion) if not dry_run else None
    return {
        "registered_model": name,
        "version": version,
        "dry_run": dry_run,
        "promote": decision.promote,
        "decision": "promoted" if decision.promote else "rejected",
        "reason": decision.reason,
        "champion_before": champion,
        "champion_after": after,
        "figures": decision.figures,
        "excluded_images": excluded,
        **context,
    }


def describe(report: dict[str, Any]) -> str:
    """One human paragraph: what was decided, on which figures, and what the registry now says."""
    figures = report["figures"]
    who = f"{report['registered_model']} v{report['version']}" if report["version"] else (
        f"{report['registered_model']} candidate")
    verdict = "becomes champion" if report["promote"] else "stays challenger"
    if report["decision"] == "unchanged":
        verdict = "is registered already: nothing changed"
    if report["dry_run"]:
        verdict = "would become champion" if report["promote"] else "would not become champion"
    lines = [
        f"promote{' (dry run: nothing changed)' if report['dry_run'] else ''}: {who} "
        f"({report['source_model']}, run {report['source_run_id'][:12]}) {verdict}",
        f"  reason: {report['reason']}",
        f"  champion before: {_version(report['champion_before'])}; test images compared: "
        f"{figures.get('n_images', 0)} ({figures.get('n_excluded', 0)} excluded: in the champion's training set)",
    ]
    if "challenger_f1_macro" in figures:
        low, high = figures.get("challenger_f1_macro_interval") or (float("nan"), float("nan"))
        lines.append(f"  challenger macro-F1 {figures['challenger_f1_macro']:.4f} [{low:.4f}, {high:.4f}], "
                     f"weakest class {figures['weakest_class']} {figures['weakest_class_f1']:.3f} "
                     f"(floor {figures['class_f1_floor']:g})")
    if "challenger_coverage" in figures:
        lines.append(_coverage_line(figures))
    if "champion_f1_macro" in figures:
        low, high = figures["delta_interval"]
        lines.append(f"  champion macro-F1 {figures['champion_f1_macro']:.4f}, difference {figures['delta']:+.4f}, "
                     f"paired {figures['interval_confidence']:.0%} interval [{low:+.4f}, {high:+.4f}] on "
                     f"{figures['n_images']} images (lower end needed > {figures['min_delta']:g})")
    if not report["dry_run"]:
        lines.append(f"  champion now: {_version(report['champion_after'])}")
    return "\n".join(lines)


def _coverage_line(figures: dict[str, Any]) -> str:
    def shown(value: float | None, spec: str) -> str:
        return "none" if value is None else format(value, spec)

    return (f"  auto-label coverage {figures['challenger_coverage']:.3f} (minimum {figures['min_coverage']:g}) at "
            f"threshold {shown(figures.get('challenger_autolabel_threshold'), '.4f')}, precision "
            f"{shown(figures.get('challenger_autolabel_precision'), '.3f')} "
            f"(target {shown(figures.get('challenger_autolabel_target_precision'), 'g')})")


def _version(version: str | None) -> str:
    return f"v{version}" if version else "none"
