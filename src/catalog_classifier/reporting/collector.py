"""The study report's inputs: one typed :class:`ReportInputs` read from the stages' own outputs and the registry.

:func:`collect` reads the stages' files (required ones missing: an error naming the file and the stage that writes
it; optional ones missing: recorded, so the page can say so), :func:`read_registry` reads the registry state through
the MLflow client it is given, and :func:`comparison_rows` / :func:`best_model` derive the comparison the page
shows. Why a plain data object: the page (:mod:`catalog_classifier.reporting.page`) and the charts
(:mod:`catalog_classifier.reporting.charts`) only render it, so what the report says can be tested without HTML.
Nothing here draws, renders or writes a file: the report stage does the I/O (:mod:`catalog_classifier.stages.report`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from catalog_classifier.ops.io import read_json
from catalog_classifier.registry.selection import select_candidate, weights_label
from catalog_classifier.registry.versions import CHAMPION, HISTORY_TAG, LAST_EVENT_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from catalog_classifier.config.layout import Project

log = logging.getLogger(__name__)

MISSING_VALUE = "—"


class ReportInputMissing(FileNotFoundError):
    """A file the report cannot do without is absent; the message names it and the stage that writes it."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ExplainInputs:
    """The explain stage's outputs for one model; figure paths in ``summary`` are relative to ``directory``."""

    directory: Path
    metrics: dict[str, Any]
    summary: dict[str, Any]


@dataclass(frozen=True)
class ModelInputs:
    name: str
    trained: dict[str, Any]
    evaluated: dict[str, Any]
    run_id: str | None = None
    history: list[dict[str, float]] | None = None  # one row per epoch (train.history_dir CSV)
    confusion: Path | None = None
    explain: ExplainInputs | None = None
    missing: dict[str, str] = field(default_factory=dict)  # section -> the optional file that was not there
    spread: dict[str, Any] | None = None  # catalog-classifier spread: the recipe under several seeds
    autolabel: dict[str, Any] | None = None  # evaluate's autolabel.json: temperature, threshold, test coverage
    precision_coverage: list[dict[str, Any]] | None = None  # precision_coverage.csv: split, threshold, coverage, ...
    reliability: Path | None = None  # reliability.png: test reliability diagram before | after calibration


@dataclass(frozen=True)
class VersionRecord:
    """One registered model version: its decision tags as the promote stage wrote them, and its aliases."""

    version: str
    created_at: str
    run_id: str
    tags: dict[str, str]
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegistryState:
    model_name: str
    registered: bool = False
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> version
    champion_history: list[str] = field(default_factory=list)  # oldest first
    last_event: str | None = None
    versions: list[VersionRecord] = field(default_factory=list)  # newest first
    error: str | None = None  # set when the registry could not be read: the page says why
    location: str = ""  # the registry's URI, credentials masked: which registry (local store or team server)

    @property
    def champion(self) -> str | None:
        return self.aliases.get(CHAMPION)


@dataclass(frozen=True)
class ReportInputs:
    classes: list[str]
    models: list[ModelInputs]
    quality: dict[str, Any]
    registry: RegistryState
    comparison: dict[str, Any] | None = None
    promotion: dict[str, Any] | None = None
    class_f1_floor: float | None = None
    generated_at: str = ""
    context: dict[str, str] = field(default_factory=dict)  # shown in the header, e.g. git commit, data version
    sources: list[str] = field(default_factory=list)  # the files read, relative to the project root
    images_dir: Path | None = None  # data.images_dir: thumbnails of the near-duplicate pairs



def _required(path: Path, what: str, stage: str) -> dict[str, Any]:
    if not path.is_file():
        raise ReportInputMissing(f"the report needs {path} ({what}); run `dvc repro {stage}` first")
    return read_json(path)


def _optional(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.is_file() else None


def _csv_rows(path: Path) -> list[dict[str, Any]] | None:
    if not path.is_file():
        return None
    return pd.read_csv(path).to_dict(orient="records")


def precision_coverage_file(project: Project, model: str) -> Path:
    return project.eval_dir(model) / "precision_coverage.csv"


def reliability_file(project: Project, model: str) -> Path:
    return project.eval_dir(model) / "reliability.png"


def _autolabel(project: Project, model: str, missing: dict[str, str]) -> dict[str, Any]:
    """The evaluate stage's auto-labelling outputs of ``model``; an evaluate run older than calibration wrote none
    of them, so each absent file is recorded in ``missing`` for the page to say."""
    summary = _optional(project.autolabel(model))
    curve = _csv_rows(precision_coverage_file(project, model))
    reliability = reliability_file(project, model)
    for key, path, found in (("autolabel", project.autolabel(model), summary is not None),
                             ("precision_coverage", precision_coverage_file(project, model), curve is not None),
                             ("reliability", reliability, reliability.is_file())):
        if not found:
            missing[key] = str(path)
    return {"autolabel": summary, "precision_coverage": curve,
            "reliability": reliability if reliability.is_file() else None}


def _explain(project: Project, model: str) -> tuple[ExplainInputs | None, str | None]:
    metrics, summary = project.explain_metrics(model), project.explain_summary(model)
    absent = [path for path in (metrics, summary) if not path.is_file()]
    if absent:
        return None, str(absent[0])
    return ExplainInputs(project.explain_dir(model), read_json(metrics), read_json(summary)), None


def collect_model(project: Project, model: str) -> ModelInputs:
    """Everything the report shows about one model; train and evaluate metrics are required."""
    trained = _required(project.train_metrics(model), f"training metrics of {model}", f"train@{model}")
    evaluated = _required(project.eval_metrics(model), f"test metrics of {model}", f"evaluate@{model}")
    missing: dict[str, str] = {}
    run = _optional(project.run_record(model))
    history = _csv_rows(project.history(model))
    if history is None:
        missing["curves"] = str(project.history(model))
    confusion = project.eval_dir(model) / "confusion.png"
    if not confusion.is_file():
        missing["confusion"] = str(confusion)
    explained, absent = _explain(project, model)
    if absent:
        missing["explain"] = absent
    # Not a DVC dependency: a measurement of training noise (like bench), shown as found when the page is written.
    spread = _optional(project.spread(model))
    autolabel = _autolabel(project, model, missing)
    return ModelInputs(model, trained, evaluated, run_id=(run or {}).get("run_id"), history=history,
                       confusion=confusion if confusion.is_file() else None, explain=explained, missing=missing,
                       spread=spread, **autolabel)


def collect(project: Project, registry: RegistryState, generated_at: str = "",
            context: dict[str, str] | None = None) -> ReportInputs:
    """Read every input of the page; the models are params ``models``, in that order."""
    params = project.params
    quality = _required(project.quality_report(), "data-quality report", "split")
    models = [collect_model(project, model) for model in params.models]
    comparison = _optional(project.comparison())
    promotion = _optional(project.promotion_report())
    sources = [project.quality_report(), project.comparison(), project.promotion_report()]
    for model in params.models:
        sources += [project.train_metrics(model), project.history(model), project.eval_metrics(model),
                    project.autolabel(model), precision_coverage_file(project, model), project.explain_summary(model)]
    return ReportInputs(
        classes=list(params.data.classes), models=models, quality=quality, registry=registry,
        comparison=comparison, promotion=promotion, class_f1_floor=params.registry.class_f1_floor,
        generated_at=generated_at, context=dict(context or {}),
        sources=[_relative(path, project.root) for path in sources if path.is_file()],
        images_dir=project.path(params.data.images_dir),
    )


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _timestamp(millis: int | None) -> str:
    if not millis:
        return MISSING_VALUE
    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")



def read_registry(client: MlflowClient, name: str) -> RegistryState:
    """Aliases, champion history and every version's decision tags of registered model ``name``."""
    found = client.search_registered_models(filter_string=f"name = '{name}'")
    model = next((item for item in found if item.name == name), None)
    if model is None:
        return RegistryState(name, registered=False)
    aliases = {alias: str(version) for alias, version in (model.aliases or {}).items()}
    by_version: dict[str, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        by_version.setdefault(version, []).append(alias)
    tags = model.tags or {}
    versions = [
        VersionRecord(version=str(item.version), created_at=_timestamp(item.creation_timestamp),
                      run_id=item.run_id or "", tags=dict(item.tags or {}),
                      aliases=tuple(by_version.get(str(item.version), ())))
        for item in client.search_model_versions(f"name = '{name}'")
    ]
    versions.sort(key=lambda record: int(record.version), reverse=True)
    return RegistryState(name, registered=True, aliases=aliases,
                         champion_history=[str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))],
                         last_event=tags.get(LAST_EVENT_TAG), versions=versions)


# --------------------------------------------------------------------------- the comparison table


@dataclass(frozen=True)
class ComparisonRow:
    model: str
    test_f1_macro: float
    val_f1_macro: float | None
    test_accuracy: float | None
    fit_time_s: float | None
    fit_cpu_time_s: float | None
    epochs_run: int | None
    best_epoch: int | None
    n_params: int | None
    images_per_s: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    weights_used: str | None
    test_interval: tuple[float, float] | None = None  # bootstrap interval of test macro-F1
    val_interval: tuple[float, float] | None = None
    cv_mean: float | None = None  # cross-validated macro-F1 on train+val (None: selected on val)
    cv_sd: float | None = None


def comparison_rows(models: list[ModelInputs]) -> list[ComparisonRow]:
    """One row per model, straight from train_metrics.json and metrics.json (the compare stage's sources)."""
    rows = []
    for model in models:
        trained, evaluated = model.trained, model.evaluated
        latency = evaluated.get("latency_ms") or {}
        rows.append(ComparisonRow(
            model=model.name, test_f1_macro=float(evaluated["test"]["f1_macro"]),
            val_f1_macro=(evaluated.get("val") or {}).get("f1_macro"),
            test_accuracy=evaluated["test"].get("accuracy"), fit_time_s=trained.get("fit_time_s"),
            fit_cpu_time_s=trained.get("fit_cpu_time_s"), epochs_run=trained.get("epochs_run"),
            best_epoch=trained.get("best_epoch"), n_params=trained.get("n_params"),
            images_per_s=evaluated.get("inference_images_per_s"), latency_p50_ms=latency.get("p50"),
            latency_p95_ms=latency.get("p95"), weights_used=weights_label(trained),
            test_interval=_interval(evaluated["test"]), val_interval=_interval(evaluated.get("val") or {}),
            cv_mean=trained.get("cv_f1_macro_mean"), cv_sd=trained.get("cv_f1_macro_sd"),
        ))
    return rows


def _interval(split: dict[str, Any]) -> tuple[float, float] | None:
    interval = split.get("f1_macro_interval")
    return None if not interval else (float(interval["low"]), float(interval["high"]))


def best_model(inputs: ReportInputs) -> str:
    """The compare stage's pick when it ran (it is what promote registered), else the same rule applied here."""
    names = [model.name for model in inputs.models]
    chosen = (inputs.comparison or {}).get("selected")
    if chosen in names:
        return chosen
    return select_candidate([{"model": row.model, "val_f1_macro": row.val_f1_macro or 0.0,
                              "cv_f1_macro_mean": row.cv_mean, "n_params": row.n_params or 0}
                             for row in comparison_rows(inputs.models)])
