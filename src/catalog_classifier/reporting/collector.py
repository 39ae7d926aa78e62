"""The study report: one static, self-contained HTML page that tells the latest run's story.

:func:`collect` reads the stages' own outputs into a typed :class:`ReportInputs` (required files missing: an error
naming the file; optional ones missing: the section says so), :func:`read_registry` adds the registry state
through the MLflow client it is given, and :func:`render_html` turns both into one page. Images are data URIs
(downscaled, PNG or JPEG for photographic figures) and the CSS is inline: the file opens from disk, from an MLflow
artifact view or a mail attachment, with no server and no network. Nothing here writes a file: the report stage
does the I/O (:mod:`catalog_classifier.stages.report`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from catalog_classifier.ops.io import read_json
from catalog_classifier.registry.selection import SELECTION_RULE, select_candidate, weights_label
from catalog_classifier.registry.versions import CHALLENGER, CHAMPION, HISTORY_TAG, LAST_EVENT_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from catalog_classifier.config.layout import Project

log = logging.getLogger(__name__)

MISSING_VALUE = "—"
FAITHFULNESS_METHODS = {"gradcam": "Grad-CAM", "shap": "SHAP", "random": "random baseline"}
CLASS_FIGURES = [
    ("gradcam_class_means.png", "Grad-CAM: mean heatmap of each true class (test split)"),
    ("shap_summary.png", "SHAP on a test sample: where the evidence for the predicted class lies"),
    ("faithfulness.png", "Faithfulness: deletion (lower is better) and insertion (higher is better) curves"),
]


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


@dataclass(frozen=True)
class EmbedSettings:
    max_width: int = 960
    png_max_kb: int = 120
    jpeg_quality: int = 82


def _required(path: Path, what: str, stage: str) -> dict[str, Any]:
    if not path.is_file():
        raise ReportInputMissing(f"the report needs {path} ({what}); run `dvc repro {stage}` first")
    return read_json(path)


def _optional(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.is_file() else None


def _history(path: Path) -> list[dict[str, float]] | None:
    if not path.is_file():
        return None
    return pd.read_csv(path).to_dict(orient="records")


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
    history = _history(project.history(model))
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
    return ModelInputs(model, trained, evaluated, run_id=(run or {}).get("run_id"), history=history,
                       confusion=confusion if confusion.is_file() else None, explain=explained, missing=missing,
                       spread=spread)


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
                    project.explain_summary(model)]
    return ReportInputs(
        classes=list(params.data.classes), models=models, quality=quality, registry=registry,
        comparison=comparison, promotion=promotion, class_f1_floor=params.registry.class_f1_floor,
        generated_at=generated_at, context=dict(context or {}),
        sources=[_relative(path, project.root) for path in sources if path.is_file()],
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


def readable_time(iso: str | None, fallback: str = MISSING_VALUE) -> str:
    """``2026-01-02T10:00:00+00:00`` (the registry's decided_at tags) in the page's own time format."""
    if not iso:
        return fallback
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso


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
        ))
    return rows


def best_model(inputs: ReportInputs) -> str:
    """The compare stage's pick when it ran (it is what promote registered), else the same rule applied here."""
    names = [model.name for model in inputs.models]
    chosen = (inputs.comparison or {}).get("selected")
    if chosen in names:
        return chosen
    return select_candidate([{"model": row.model, "val_f1_macro": row.val_f1_macro or 0.0,
                              "n_params": row.n_params or 0} for row in comparison_rows(inputs.models)])


def fmt(value: Any, spec: str = "") -> str:
    """``value`` formatted with ``spec``; None (not measured) is a dash."""
    if value is None:
        return MISSING_VALUE
    return format(value, spec)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING_VALUE
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# --------------------------------------------------------------------------- images and charts


@dataclass(frozen=True)
class Embedded:
    uri: str
    width: int
    height: int
    n_bytes: int


def embed_image(source: Path | bytes, settings: EmbedSettings) -> Embedded:
    """A data URI of the image, no wider than ``max_width``; JPEG when the PNG would be too heavy (photos)."""
    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
        image = opened.convert("RGBA") if opened.mode in ("P", "LA", "RGBA") else opened.convert("RGB")
    if image.mode == "RGBA":  # figures have white backgrounds: flatten, so JPEG and PNG look the same
        flat = Image.new("RGB", image.size, "white")
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    if image.width > settings.max_width:
        height = max(1, round(image.height * settings.max_width / image.width))
        image = image.resize((settings.max_width, height), Image.Resampling.LANCZOS)
    encoded, kind = io.BytesIO(), "png"
    image.save(encoded, format="PNG", optimize=True)
    if encoded.tell() > settings.png_max_kb * 1024:
        jpeg = io.BytesIO()
        image.save(jpeg, format="JPEG", quality=settings.jpeg_quality, optimize=True, progressive=True)
        if jpeg.tell() < encoded.tell():
            encoded, kind = jpeg, "jpeg"
    payload = encoded.getvalue()
    uri = f"data:image/{kind};base64,{base64.b64encode(payload).decode('ascii')}"
    return Embedded(uri, image.width, image.height, len(payload))


def _figure_png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def learning_curves_png(models: list[ModelInputs]) -> bytes | None:
    """Loss and macro-F1 per epoch, every model on the same axes (train dashed, validation solid, best epoch
    starred): the models' convergence is compared at a glance, not figure by figure."""
    from matplotlib.figure import Figure

    drawn = [model for model in models if model.history]
    if not drawn:
        return None
    figure = Figure(figsize=(11, 3.9))
    loss_axes, f1_axes = figure.subplots(1, 2)
    for index, model in enumerate(drawn):
        frame = pd.DataFrame(model.history)
        colour = f"C{index}"
        best = model.trained.get("best_epoch")
        for axes, metric in ((loss_axes, "loss"), (f1_axes, "f1_macro")):
            if f"val_{metric}" not in frame:
                continue
            if f"train_{metric}" in frame:
                axes.plot(frame["epoch"], frame[f"train_{metric}"], "--", color=colour, alpha=0.7,
                          label=f"{model.name} train")
            axes.plot(frame["epoch"], frame[f"val_{metric}"], "-o", color=colour, markersize=3,
                      label=f"{model.name} val")
            at_best = frame[frame["epoch"] == best]
            if not at_best.empty:
                axes.plot(at_best["epoch"], at_best[f"val_{metric}"], "*", color=colour, markersize=13,
                          markeredgecolor="black", markeredgewidth=0.6)
    loss_axes.set(title="loss (cross-entropy)", xlabel="epoch")
    f1_axes.set(title="macro-F1", xlabel="epoch", ylim=(0, 1))
    for axes in (loss_axes, f1_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    f1_axes.legend(fontsize=8, loc="best")
    return _figure_png(figure)


def per_class_f1_png(models: list[ModelInputs], classes: list[str], floor: float | None) -> bytes:
    """Test F1 per class, models side by side, with the promotion gate's class floor."""
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 0.5 * len(classes) + 1.3))
    axes = figure.subplots()
    height = 0.8 / len(models)
    positions = np.arange(len(classes))
    for index, model in enumerate(models):
        per_class = model.evaluated["test"].get("per_class", {})
        values = [per_class.get(name, {}).get("f1", 0.0) for name in classes]
        offset = (index - (len(models) - 1) / 2) * height
        bars = axes.barh(positions + offset, values, height=height * 0.95, color=f"C{index}", label=model.name)
        axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    if floor is not None:
        axes.axvline(floor, color="#cf222e", linestyle="--", linewidth=1, label=f"gate floor {floor:g}")
    axes.set_yticks(positions, labels=classes)
    axes.invert_yaxis()
    axes.set(xlim=(0, 1.08), xlabel="test F1")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return _figure_png(figure)


# --------------------------------------------------------------------------- HTML


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(embedded: Embedded, alt: str, **attributes: str) -> str:
    extra = "".join(f' {key.rstrip("_").replace("_", "-")}="{esc(value)}"' for key, value in attributes.items())
    return (f'<img src="{embedded.uri}" width="{embedded.width}" height="{embedded.height}" '
            f'alt="{esc(alt)}"{extra}>')


def _missing(text: str) -> str:
    return f'<p class="missing">{text}</p>'


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {esc(kind)}">{esc(text)}</span>'


def _card(label: str, value: str, sub: str = "", card_id: str = "") -> str:
    attribute = f' id="{esc(card_id)}"' if card_id else ""
    return (f'<div class="card"{attribute}><div class="label">{esc(label)}</div>'
            f'<div class="value">{value}</div><div class="sub">{sub}</div></div>')


def _overview(inputs: ReportInputs, rows: list[ComparisonRow], best: str) -> str:
    quality = inputs.quality
    counts = quality.get("split_counts", {})
    best_row = next(row for row in rows if row.model == best)
    registry = inputs.registry
    if registry.error:
        champion, champion_sub = "unknown", "registry unreachable"
    elif registry.champion:
        record = next((v for v in registry.versions if v.version == registry.champion), None)
        champion = f"v{esc(registry.champion)}"
        champion_sub = esc(record.tags.get("source_model", "")) if record else ""
    else:
        challenger = registry.aliases.get(CHALLENGER)
        champion = "none"
        champion_sub = "no version has passed the gate yet" + (f"; challenger v{esc(challenger)}" if challenger else "")
    cards = [
        _card("usable images", f"{quality.get('usable_images', MISSING_VALUE):,}",
              f"of {quality.get('rows', MISSING_VALUE):,} catalogue rows"),
        _card("train / val / test", " / ".join(str(counts.get(split, MISSING_VALUE))
                                               for split in ("train", "val", "test")), "images per split"),
        _card("selected model (validation macro-F1)", esc(best),
              f"val {fmt(best_row.val_f1_macro, '.4f')} · test {best_row.test_f1_macro:.4f}", "best-model"),
        _card("registry champion", champion, champion_sub, "champion-card"),
    ]
    return f'<div class="cards">{"".join(cards)}</div>{_story(rows, best)}'


def _story(rows: list[ComparisonRow], best: str) -> str:
    """Two or three sentences a reader can take away without reading the tables."""
    if len(rows) < 2:
        return ""
    ranked = sorted(rows, key=lambda row: row.val_f1_macro or 0.0, reverse=True)
    leader = next(row for row in rows if row.model == best)
    runner = next(row for row in ranked if row.model != best)
    lines = [f"<b>{esc(leader.model)}</b> is selected on validation macro-F1 "
             f"({fmt(leader.val_f1_macro, '.4f')} against {fmt(runner.val_f1_macro, '.4f')} for "
             f"{esc(runner.model)}); on the test split, which chose nothing, it scores "
             f"{leader.test_f1_macro:.4f} against {runner.test_f1_macro:.4f} "
             f"({leader.test_f1_macro - runner.test_f1_macro:+.4f})."]
    sized = [row for row in rows if row.n_params]
    if len(sized) >= 2:
        small = min(sized, key=lambda row: row.n_params)
        large = max(sized, key=lambda row: row.n_params)
        if small.model != large.model:
            lines.append(f"{esc(small.model)} has {large.n_params / small.n_params:.1f}× fewer parameters "
                         f"than {esc(large.model)}.")
    timed = [row for row in rows if row.fit_time_s]
    if len(timed) >= 2:
        fast = min(timed, key=lambda row: row.fit_time_s)
        lines.append(f"{esc(fast.model)} trained fastest ({duration(fast.fit_time_s)}).")
    measured = [row for row in rows if row.latency_p50_ms is not None]
    if len(measured) >= 2:
        quick = min(measured, key=lambda row: row.latency_p50_ms)
        lines.append(f"{esc(quick.model)} answers a single image fastest (p50 {quick.latency_p50_ms:.1f} ms).")
    return f'<p class="lead">{" ".join(lines)}</p>'


def _data_section(inputs: ReportInputs) -> str:
    quality = inputs.quality
    issues = [
        ("catalogue rows", quality.get("rows")),
        ("usable images", quality.get("usable_images")),
        ("missing image files", len(quality.get("missing_files", []))),
        ("unreadable image files", len(quality.get("unreadable_files", []))),
        ("duplicate groups (identical files)", quality.get("duplicate_group_count")),
        ("images in duplicate groups", quality.get("images_in_duplicate_groups")),
        ("rows excluded", quality.get("excluded")),
    ]
    facts = "".join(f"<tr><td>{esc(label)}</td><td>{esc(fmt(value, ','))}</td></tr>" for label, value in issues)
    splits = quality.get("split_class_counts") or {}
    split_names = [name for name in ("train", "val", "test") if name in splits]
    header = "".join(f"<th>{esc(name)}</th>" for name in split_names)
    body = []
    for name in inputs.classes:
        cells = [splits[split].get(name, 0) for split in split_names]
        total = quality.get("class_counts", {}).get(name, sum(cells))
        body.append(f"<tr><td>{esc(name)}</td>{''.join(f'<td>{c}</td>' for c in cells)}<td>{total}</td></tr>")
    totals = quality.get("split_counts", {})
    body.append("<tr class='total'><td>all classes</td>"
                + "".join(f"<td>{totals.get(split, MISSING_VALUE)}</td>" for split in split_names)
                + f"<td>{quality.get('usable_images', MISSING_VALUE)}</td></tr>")
    details = ""
    problems = {"missing": quality.get("missing_files", []), "unreadable": quality.get("unreadable_files", [])}
    listed = "".join(f"<li>{esc(kind)}: {esc(', '.join(names))}</li>" for kind, names in problems.items() if names)
    if listed:
        details = f"<details><summary>files left out</summary><ul>{listed}</ul></details>"
    return (f'<div class="two"><div><h3>Audit</h3><table class="facts"><tbody>{facts}</tbody></table>{details}</div>'
            f'<div><h3>Images per class and split (stratified)</h3><table id="split-counts"><thead><tr>'
            f'<th>class</th>{header}<th>usable</th></tr></thead><tbody>{"".join(body)}</tbody></table></div></div>')


COMPARISON_HEADER = ["model", "test macro-F1", "val macro-F1", "test accuracy", "fit time", "fit CPU time",
                     "epochs run (best)", "parameters (M)", "throughput (img/s, batched)",
                     "latency p50 / p95 (ms, 1 image)", "weights"]


def _spread_note(models: list[ModelInputs]) -> str:
    """How far a single run's figures move with the seed: the error bar of every comparison above."""
    lines = []
    for model in models:
        spread = model.spread
        if not spread:
            lines.append(f"{esc(model.name)}: not measured")
            continue
        test, val = spread["test"], spread["val"]
        lines.append(f"{esc(model.name)}: test {test['mean']:.4f} ± {test['std']:.4f} "
                     f"[{test['min']:.4f}, {test['max']:.4f}], val {val['mean']:.4f} ± {val['std']:.4f} over "
                     f"{spread['n_seeds']} seeds")
    return ("<p class='note' id='spread'>Run-to-run spread (same data, split and recipe, another seed; "
            "`catalog-classifier spread`): " + "; ".join(lines) + ". Training is bit-identical only with the same "
            "seed, threads, bf16 and CPU instruction set, so a run on another machine moves like a new seed: read "
            "a difference between two rows against these spreads (one test image is 0.6 % of the split).</p>")


def _comparison_section(rows: list[ComparisonRow], best: str) -> str:
    header = "".join(f"<th>{esc(title)}</th>" for title in COMPARISON_HEADER)
    body = []
    for row in rows:
        is_best = row.model == best
        latency = (MISSING_VALUE if row.latency_p50_ms is None
                   else f"{row.latency_p50_ms:.1f} / {fmt(row.latency_p95_ms, '.1f')}")
        epochs = MISSING_VALUE if row.epochs_run is None else f"{row.epochs_run} ({fmt(row.best_epoch)})"
        cells = [
            f'<td class="model">{esc(row.model)}{" " + _badge("selected", "best") if is_best else ""}</td>',
            f'<td class="f1-test">{row.test_f1_macro:.4f}</td>',
            f'<td class="f1-val">{fmt(row.val_f1_macro, ".4f")}</td>',
            f'<td class="accuracy">{fmt(row.test_accuracy, ".4f")}</td>',
            f'<td class="fit-time">{duration(row.fit_time_s)}</td>',
            f'<td class="fit-cpu">{duration(row.fit_cpu_time_s)}</td>',
            f'<td class="epochs">{epochs}</td>',
            f'<td class="params">{fmt(None if row.n_params is None else row.n_params / 1e6, ".2f")}</td>',
            f'<td class="throughput">{fmt(row.images_per_s, ".1f")}</td>',
            f'<td class="latency">{latency}</td>',
            f'<td class="weights">{esc(fmt(row.weights_used))}</td>',
        ]
        css = ' class="best"' if is_best else ""
        body.append(f'<tr data-model="{esc(row.model)}"{css}>{"".join(cells)}</tr>')
    note = (f"<p class='note'>Selection: {esc(SELECTION_RULE)}. The promotion gate then scores the selected model "
            "and the champion on test images neither was trained on. Test macro-F1 and accuracy are reported, "
            "never used to choose; "
            "fit time is wall-clock time of the whole fit, early stopping included; throughput is batched "
            "inference, latency one image at a time through the served predict path.</p>")
    return (f'<table id="comparison-table"><thead><tr>{header}</tr></thead><tbody>{"".join(body)}</tbody>'
            f"</table>{note}")


def _curves_section(inputs: ReportInputs, settings: EmbedSettings) -> str:
    notes = "".join(_missing(f"No learning curve for {esc(m.name)}: {esc(m.missing['curves'])} is missing.")
                    for m in inputs.models if "curves" in m.missing)
    chart = learning_curves_png(inputs.models)
    if chart is None:
        return notes
    image = _img(embed_image(chart, settings), "learning curves of every model", id="curves-chart")
    caption = ("Train (dashed) and validation (solid) per epoch; ★ marks the best validation epoch, whose weights "
               "were kept (early stopping on validation loss).")
    return f"<figure class='wide'>{image}<figcaption>{caption}</figcaption></figure>{notes}"


def _confusion_section(inputs: ReportInputs, settings: EmbedSettings) -> str:
    figures = []
    for model in inputs.models:
        if model.confusion is None:
            note = f"{esc(model.name)}: {esc(model.missing['confusion'])} is missing (run the evaluate stage)."
            figures.append(f"<figure>{_missing(note)}</figure>")
            continue
        image = _img(embed_image(model.confusion, settings), f"confusion matrix of {model.name}",
                     data_model=model.name, class_="confusion")
        figures.append(f"<figure>{image}<figcaption>{esc(model.name)}: test split, rows are the true class"
                       "</figcaption></figure>")
    return f'<div class="grid">{"".join(figures)}</div>'


def _f1_colour(value: float) -> str:
    return f"hsl({round(120 * max(0.0, min(1.0, value)))}, 65%, 88%)"


def _per_class_section(inputs: ReportInputs, settings: EmbedSettings) -> str:
    chart = _img(embed_image(per_class_f1_png(inputs.models, inputs.classes, inputs.class_f1_floor), settings),
                 "test F1 per class and model", id="per-class-chart")
    header = "".join(f"<th>{esc(model.name)}</th>" for model in inputs.models)
    floor = inputs.class_f1_floor
    body = []
    for name in inputs.classes:
        cells = []
        for model in inputs.models:
            value = model.evaluated["test"].get("per_class", {}).get(name, {}).get("f1")
            if value is None:
                cells.append(f"<td>{MISSING_VALUE}</td>")
                continue
            below = floor is not None and value < floor
            cells.append(f'<td style="background:{_f1_colour(value)}"{" class=below" if below else ""}>'
                         f"{value:.3f}</td>")
        body.append(f"<tr><td>{esc(name)}</td>{''.join(cells)}</tr>")
    caption = f" Cells in bold are below the promotion gate's floor ({floor:g})." if floor is not None else ""
    return (f"<div class='side'><figure>{chart}</figure><div><table id='per-class-table'><thead><tr>"
            f"<th>class</th>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<p class='note'>Test F1 per class.{caption}</p></div></div>")


def _faithfulness_table(metrics: dict[str, Any]) -> str:
    rows = []
    for key, label in FAITHFULNESS_METHODS.items():
        values = metrics.get(key)
        if not isinstance(values, dict):
            continue
        beats = metrics.get(f"{key}_beats_random") or {}
        verdict = ", ".join(f"{kind} {'✓' if ok else '✗'}" for kind, ok in beats.items()) or MISSING_VALUE
        rows.append(f"<tr><td>{esc(label)}</td>"
                    f"<td>{fmt(values.get('deletion_auc'), '.3f')} ± {fmt(values.get('deletion_auc_se'), '.3f')}</td>"
                    f"<td>{fmt(values.get('insertion_auc'), '.3f')} ± {fmt(values.get('insertion_auc_se'), '.3f')}"
                    f"</td><td>{esc(verdict) if key != 'random' else ''}</td></tr>")
    return ("<table class='faithfulness'><thead><tr><th>method</th><th>deletion AUC (lower is better)</th>"
            "<th>insertion AUC (higher is better)</th><th>beats random</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
            f"<p class='note'>On {esc(fmt(metrics.get('n_images')))} test images, ± standard error.</p>")


def _local_caption(record: dict[str, Any]) -> str:
    kind = str(record.get("kind", ""))
    probability = record.get("probability")
    chance = f" (p = {probability:.2f})" if isinstance(probability, int | float) else ""
    return (f"{_badge(kind, kind)} <b>{esc(record.get('image', ''))}</b> ({esc(record.get('split', ''))}): "
            f"true {esc(record.get('true', ''))} → predicted {esc(record.get('predicted', ''))}{chance}")


def _local_figure(directory: Path, record: dict[str, Any], model: str, settings: EmbedSettings,
                  css: str = "") -> str:
    """One explained image (original | SHAP | Grad-CAM) with its caption, or a note that its figure is missing."""
    path = directory / str(record.get("figure", ""))
    if not path.is_file():
        return f"<figure>{_missing(f'figure {esc(path)} is missing')}</figure>"
    image = _img(embed_image(path, settings), f"{record.get('image')}: image, SHAP, Grad-CAM", class_="local",
                 data_model=model)
    css_attr = f" class='{css}'" if css else ""
    return f"<figure{css_attr}>{image}<figcaption>{_local_caption(record)}</figcaption></figure>"


def _explain_model(model: ModelInputs, settings: EmbedSettings) -> str:
    title = f"<h3>{esc(model.name)}</h3>"
    explained = model.explain
    if explained is None:
        return title + _missing(f"Explanations of {esc(model.name)} are missing ({esc(model.missing['explain'])} "
                                f"not found): run <code>dvc repro explain@{esc(model.name)}</code>.")
    parts = [title, _faithfulness_table(explained.metrics)]
    local = []
    for record in explained.summary.get("local", []):
        local.append(_local_figure(explained.directory, record, model.name, settings))
    missing_named = explained.summary.get("named_missing") or []
    if missing_named:
        local.append(_missing(f"Named in params but not found in any split: {esc(', '.join(missing_named))}"))
    parts.append("<h4>Single images: original | SHAP | Grad-CAM</h4>"
                 + (f"<div class='grid'>{''.join(local)}</div>" if local else _missing("No local figure.")))
    class_level = []
    for name, caption in CLASS_FIGURES:
        path = explained.directory / "figures" / name
        if path.is_file():
            image = _img(embed_image(path, settings), f"{model.name}: {caption}", class_="class-level")
            class_level.append(f"<figure>{image}<figcaption>{esc(caption)}</figcaption></figure>")
        else:
            class_level.append(f"<figure>{_missing(f'{esc(path)} is missing')}</figure>")
    parts.append(f"<h4>Class level</h4><div class='grid three'>{''.join(class_level)}</div>")
    return f'<div class="explain-model" data-model="{esc(model.name)}">{"".join(parts)}</div>'


def _serving_model(inputs: ReportInputs, selected: str) -> tuple[str, str]:
    """The model this run made champion, else the selected candidate (what a reader most wants explained)."""
    promotion = inputs.promotion or {}
    if promotion.get("version") and promotion.get("champion_after") == promotion.get("version"):
        return str(promotion.get("source_model") or selected), "champion"
    return selected, "selected model (not champion)"


def _study_example(inputs: ReportInputs, settings: EmbedSettings, selected: str) -> str:
    """The study's own image (explain.images), SHAP beside Grad-CAM, for the champion: the study's closing figure."""
    name, role = _serving_model(inputs, selected)
    model = next((model for model in inputs.models if model.name == name), None)
    explained = model.explain if model else None
    records = [record for record in (explained.summary.get("local", []) if explained else [])
               if record.get("kind") == "named"]
    if explained is None or not records or not (explained.directory / str(records[0].get("figure", ""))).is_file():
        return _missing(f"No explanation of a named example image for {esc(name)}.")
    return (f"<div id='study-example'><h3>The study's example image, explained by the {role} ({esc(name)})</h3>"
            f"{_local_figure(explained.directory, records[0], name, settings, css='wide')}</div>")


def _explain_section(inputs: ReportInputs, settings: EmbedSettings, selected: str = "") -> str:
    return _study_example(inputs, settings, selected) + "".join(
        _explain_model(model, settings) for model in inputs.models)


def _version_label(version: str | None) -> str:
    return f"v{version}" if version else "none"


def _promotion_block(promotion: dict[str, Any] | None) -> str:
    if promotion is None:
        return _missing("No promotion decision recorded for this run (promotion.json is missing): run "
                        "<code>dvc repro promote</code>.")
    figures = promotion.get("figures") or {}
    decision = str(promotion.get("decision", ""))
    compared = [f"challenger macro-F1 {fmt(figures.get('challenger_f1_macro'), '.4f')}"]
    if "champion_f1_macro" in figures:
        compared.append(f"champion macro-F1 {fmt(figures.get('champion_f1_macro'), '.4f')} "
                        f"(delta {fmt(figures.get('delta'), '+.4f')}, needed ≥ {fmt(figures.get('min_delta'), 'g')})")
    if "weakest_class" in figures:
        compared.append(f"weakest class {esc(figures['weakest_class'])} {fmt(figures.get('weakest_class_f1'), '.3f')}"
                        f" (floor {fmt(figures.get('class_f1_floor'), 'g')})")
    return (
        f'<div class="decision" id="decision"><p>{_badge(decision, decision)} '
        f"<b>{esc(promotion.get('registered_model', ''))} {esc(_version_label(promotion.get('version')))}</b> "
        f"({esc(promotion.get('source_model', ''))}) — {esc(promotion.get('reason', ''))}</p>"
        f"<ul><li>champion before: {esc(_version_label(promotion.get('champion_before')))}, after: "
        f"{esc(_version_label(promotion.get('champion_after')))}</li>"
        f"<li>{esc(fmt(figures.get('n_images')))} test images compared "
        f"({esc(fmt(figures.get('n_excluded')))} excluded: in the champion's training set)</li>"
        f"<li>{'; '.join(compared)}</li></ul></div>"
    )


VERSION_NOTES = [("previous_champion", "replaced v{}"), ("rolled_back_at", "rolled back at {}"),
                 ("rolled_back_to", "champion went back to v{}"), ("restored_at", "restored as champion at {}")]


def _registry_section(inputs: ReportInputs) -> str:
    registry = inputs.registry
    decision = "<h3>This run's promotion decision</h3>" + _promotion_block(inputs.promotion)
    if registry.error:
        return (f'<p class="error" id="registry-error">Registry unreachable: {esc(registry.error)}. The state of '
                f"registered model {esc(registry.model_name)} is not shown.</p>{decision}")
    if not registry.registered:
        return (f'<p class="champion" id="champion">No registered model named <b>{esc(registry.model_name)}</b> '
                f"yet: no champion.</p>{decision}")
    if registry.champion:
        record = next((v for v in registry.versions if v.version == registry.champion), None)
        origin = (f" ({esc(record.tags.get('source_model', '?'))}, macro-F1 "
                  f"{esc(record.tags.get('challenger_f1_macro', MISSING_VALUE))} when promoted "
                  f"{esc(readable_time(record.tags.get('decided_at'), record.created_at))})") if record else ""
        champion = f"Champion: <b>{esc(registry.model_name)} v{esc(registry.champion)}</b>{origin}."
    else:
        champion = f"No champion: no version of {esc(registry.model_name)} has passed the gate yet."
    aliases = ", ".join(f"{_badge(alias, alias if alias in (CHAMPION, CHALLENGER) else 'alias')} → "
                        f"v{esc(version)}" for alias, version in sorted(registry.aliases.items())) or "none"
    history = " → ".join(f"v{esc(v)}" for v in registry.champion_history) or "none yet"
    event = f" Last change: {esc(registry.last_event)}." if registry.last_event else ""
    rows = []
    for record in registry.versions:
        tags = record.tags
        badges = " ".join(_badge(alias, alias if alias in (CHAMPION, CHALLENGER) else "alias")
                          for alias in record.aliases)
        verdict = tags.get("decision", "")
        notes = "; ".join(text.format(tags[key]) for key, text in VERSION_NOTES if tags.get(key))
        rows.append(
            f'<tr data-version="{esc(record.version)}"><td>v{esc(record.version)} {badges}</td>'
            f"<td>{esc(tags.get('source_model', MISSING_VALUE))}</td>"
            f"<td><code>{esc(record.run_id[:12])}</code></td>"
            f"<td>{esc(readable_time(tags.get('decided_at'), record.created_at))}</td>"
            f"<td>{_badge(verdict, verdict) if verdict else MISSING_VALUE}</td>"
            f"<td>{esc(tags.get('challenger_f1_macro', MISSING_VALUE))}</td>"
            f"<td>{esc(tags.get('compared_with', MISSING_VALUE))}</td>"
            f"<td class='text'>{esc(tags.get('reason', ''))}{' <i>(' + esc(notes) + ')</i>' if notes else ''}</td>"
            "</tr>")
    table = ("<table id='versions'><thead><tr><th>version</th><th>model</th><th>run</th><th>decided</th>"
             "<th>decision</th><th>macro-F1</th><th>compared with</th><th class='text'>reason</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>")
    return (f'<p class="champion" id="champion">{champion}</p>'
            f"<p>Aliases: {aliases}. Champion history (oldest first): {history}.{event}</p>"
            f"{decision}<h3>Every version and its decision</h3>{table}")


CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#f6f8fa;--accent:#0969da;--good:#1a7f37;--bad:#cf222e;
--warn:#9a6700}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--fg);background:#fff}
header.top{background:linear-gradient(135deg,#0b3d91,#1f6feb);color:#fff;padding:26px 40px 18px}
header.top h1{margin:0 0 4px;font-size:27px}
header.top .meta{opacity:.9;font-size:13px}
header.top code{background:rgba(255,255,255,.15);color:#fff}
nav{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:8px 40px;
display:flex;gap:18px;flex-wrap:wrap;font-size:14px}
nav a{color:var(--accent);text-decoration:none}
main{max-width:1320px;margin:0 auto;padding:4px 40px 48px}
section{margin-top:34px}
h2{font-size:21px;border-bottom:1px solid var(--line);padding-bottom:6px;margin-bottom:12px}
h3{font-size:17px;margin:18px 0 8px}
h4{font-size:15px;margin:16px 0 8px;color:var(--muted)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(230px,1fr));gap:14px;margin-top:22px}
.card{border:1px solid var(--line);border-radius:10px;padding:12px 16px;background:var(--bg)}
.card .label{font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted)}
.card .value{font-size:25px;font-weight:650;overflow-wrap:anywhere}
.card .sub{font-size:13px;color:var(--muted)}
.lead{font-size:16px;margin:16px 0 0}
.two{display:grid;grid-template-columns:minmax(280px,1fr) 2fr;gap:28px}
table{border-collapse:collapse;width:100%;font-size:14px;margin:6px 0 10px}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th:first-child,td:first-child,.text{text-align:left}
td.text,th.text{white-space:normal}
thead th{background:var(--bg);font-weight:600;vertical-align:bottom;white-space:normal}
tr.best{background:#dafbe1}
tr.total td{font-weight:600}
td.below{font-weight:700}
.facts td:last-child{font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:0 8px;border-radius:999px;font-size:12px;font-weight:600;color:#fff;
background:#6e7781;vertical-align:1px}
.badge.best,.badge.promoted,.badge.champion,.badge.correct{background:var(--good)}
.badge.rejected,.badge.wrong{background:var(--bad)}
.badge.challenger,.badge.named{background:var(--warn)}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:16px;align-items:start}
.grid.three{grid-template-columns:repeat(auto-fit,minmax(340px,1fr))}
.side{display:grid;grid-template-columns:3fr 2fr;gap:24px;align-items:start}
table.faithfulness{width:auto;min-width:60%}
#versions td,#versions th{text-align:left}
figure{margin:0;border:1px solid var(--line);border-radius:8px;padding:10px;background:#fff}
figure.wide{max-width:1100px}
figure img{width:100%;height:auto;display:block}
figcaption{font-size:13px;color:var(--muted);margin-top:6px}
.missing{border-left:4px solid var(--warn);background:#fff8c5;padding:8px 12px;border-radius:4px}
.error{border-left:4px solid var(--bad);background:#ffebe9;padding:8px 12px;border-radius:4px}
.decision{border:1px solid var(--line);border-radius:8px;padding:4px 16px;background:var(--bg)}
.note{font-size:13px;color:var(--muted)}
.explain-model{margin-bottom:26px}
code{background:var(--bg);padding:0 4px;border-radius:4px;font-size:90%}
footer{max-width:1320px;margin:0 auto;padding:16px 40px 40px;font-size:12px;color:var(--muted);
border-top:1px solid var(--line)}
@media (max-width:900px){.two,.side{grid-template-columns:1fr}.grid{grid-template-columns:1fr}
main,nav,header.top{padding-left:16px;padding-right:16px}}
"""

SECTIONS = [("overview", "Overview"), ("data", "Data"), ("comparison", "Model comparison"),
            ("curves", "Learning curves"), ("confusion", "Confusion matrices"), ("per-class", "Per-class F1"),
            ("explanations", "Explanations"), ("registry", "Registry")]


def render_html(inputs: ReportInputs, settings: EmbedSettings | None = None) -> str:
    """The whole page as one string: no external URL, every image a data URI."""
    settings = settings or EmbedSettings()
    rows = comparison_rows(inputs.models)
    best = best_model(inputs)
    bodies = {
        "overview": _overview(inputs, rows, best),
        "data": _data_section(inputs),
        "comparison": _comparison_section(rows, best) + _spread_note(inputs.models),
        "curves": _curves_section(inputs, settings),
        "confusion": _confusion_section(inputs, settings),
        "per-class": _per_class_section(inputs, settings),
        "explanations": _explain_section(inputs, settings, best),
        "registry": _registry_section(inputs),
    }
    nav = "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title in SECTIONS)
    sections = "".join(
        f'<section id="{key}">{"" if key == "overview" else f"<h2>{esc(title)}</h2>"}{bodies[key]}</section>'
        for key, title in SECTIONS)
    meta = " · ".join([f"generated {esc(inputs.generated_at)}" if inputs.generated_at else "",
                       *(f"{esc(key)} <code>{esc(value)}</code>" for key, value in inputs.context.items()),
                       f"models: {esc(', '.join(model.name for model in inputs.models))}"])
    sources = ", ".join(f"<code>{esc(source)}</code>" for source in inputs.sources)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<title>Catalogue classifier: study report</title>"
        f"<style>{CSS}</style></head><body>"
        "<header class=\"top\"><h1>Catalogue classifier: study report</h1>"
        f"<div class=\"meta\">{meta.strip(' ·')}</div></header>"
        f"<nav>{nav}</nav><main>{sections}</main>"
        f"<footer>Built by <code>catalog-classifier report</code> from {sources}.</footer>"
        "</body></html>\n"
    )
