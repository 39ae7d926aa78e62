"""The study report page: :class:`ReportInputs` rendered with the Jinja2 template ``templates/report.html.j2``.

Why a template: the page's markup and style live in ``templates/`` (``report.html.j2``, ``report.css``), where
they read as HTML and CSS; this module only turns the collected inputs into the few values the template cannot
compute simply (sentences, table cells, which figure to show), and hands the template an ``embed`` function that
makes an image a data URI (:mod:`catalog_classifier.reporting.charts`). The output is one self-contained file: the
CSS is inlined and every image embedded, so it opens with no server and no network. Autoescaping is on: every
text read from a file is escaped, and the template marks nothing safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, partial
from pathlib import Path
from typing import Any

import jinja2

from catalog_classifier.registry.selection import SELECTION_RULE
from catalog_classifier.registry.versions import CHALLENGER, CHAMPION
from catalog_classifier.reporting.charts import (
    EmbedSettings,
    embed_image,
    learning_curves_png,
    near_duplicates_png,
    per_class_f1_png,
    precision_coverage_png,
)
from catalog_classifier.reporting.collector import (
    MISSING_VALUE,
    ComparisonRow,
    ExplainInputs,
    ModelInputs,
    RegistryState,
    ReportInputs,
    VersionRecord,
    best_model,
    comparison_rows,
)

TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE = "report.html.j2"
SECTIONS = [("overview", "Overview"), ("data", "Data"), ("comparison", "Model comparison"),
            ("curves", "Learning curves"), ("confusion", "Confusion matrices"), ("per-class", "Per-class F1"),
            ("autolabel", "Auto-labelling"), ("explanations", "Explanations"), ("registry", "Registry")]
COMPARISON_HEADER = ["model", "test macro-F1 [95% CI]", "val macro-F1 [95% CI]", "CV macro-F1 mean ± sd",
                     "test accuracy", "fit time", "fit CPU time", "epochs run (best)", "parameters (M)",
                     "throughput (img/s, batched)", "latency p50 / p95 (ms, 1 image)", "weights"]
FAITHFULNESS_METHODS = {"gradcam": "Grad-CAM", "shap": "SHAP", "random": "random baseline"}
CLASS_FIGURES = [
    ("gradcam_class_means.png", "Grad-CAM: mean heatmap of each true class (test split)"),
    ("shap_summary.png", "SHAP on a test sample: where the evidence for the predicted class lies"),
    ("faithfulness.png", "Faithfulness: deletion (lower is better) and insertion (higher is better) curves"),
]
AUTOLABEL_HEADER = ["model", "T", "test ECE before → after", "target precision", "threshold",
                    "fitted on: coverage, precision lower bound", "test coverage (n) [interval]",
                    "test precision [interval]", "weakest class (test coverage)"]
UNREACHABLE = "no threshold: the precision bound never reaches the target; nothing auto-labelled"
SETS_HEADER = ["model", "alpha", "LAC quantile (fitted on)", "test coverage [interval]", "mean set size",
               "sets by size", "lowest class coverage (its mean size)"]
VERSION_NOTES = [("previous_champion", "replaced v{}"), ("rolled_back_at", "rolled back at {}"),
                 ("rolled_back_to", "champion went back to v{}"), ("restored_at", "restored as champion at {}")]


# --------------------------------------------------------------------------- formatting (template filters)


def fmt(value: Any, spec: str = "") -> str:
    """``value`` formatted with ``spec``; None (not measured) is a dash; text is shown as it is."""
    if value is None:
        return MISSING_VALUE
    return value if isinstance(value, str) else format(value, spec)


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


def readable_time(iso: str | None, fallback: str = MISSING_VALUE) -> str:
    """``2026-01-02T10:00:00+00:00`` (the registry's decided_at tags) in the page's own time format."""
    if not iso:
        return fallback
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso


def version_label(version: str | None) -> str:
    return f"v{version}" if version else "none"


def alias_kind(alias: str) -> str:
    """The badge colour of an alias: champion and challenger have their own, any other alias a neutral one."""
    return alias if alias in (CHAMPION, CHALLENGER) else "alias"


def f1_colour(value: float) -> str:
    return f"hsl({round(120 * max(0.0, min(1.0, value)))}, 65%, 88%)"


# --------------------------------------------------------------------------- what the template shows


@dataclass(frozen=True)
class Story:
    """Two or three sentences a reader can take away without reading the tables."""

    leader: ComparisonRow
    runner: ComparisonRow
    notes: list[str]


def story(rows: list[ComparisonRow], best: str) -> Story | None:
    if len(rows) < 2:
        return None
    ranked = sorted(rows, key=lambda row: row.val_f1_macro or 0.0, reverse=True)
    leader = next(row for row in rows if row.model == best)
    runner = next(row for row in ranked if row.model != best)
    notes = []
    sized = [row for row in rows if row.n_params]
    if len(sized) >= 2:
        small = min(sized, key=lambda row: row.n_params)
        large = max(sized, key=lambda row: row.n_params)
        if small.model != large.model:
            notes.append(f"{small.model} has {large.n_params / small.n_params:.1f}× fewer parameters "
                         f"than {large.model}.")
    timed = [row for row in rows if row.fit_time_s]
    if len(timed) >= 2:
        fast = min(timed, key=lambda row: row.fit_time_s)
        notes.append(f"{fast.model} trained fastest ({duration(fast.fit_time_s)}).")
    measured = [row for row in rows if row.latency_p50_ms is not None]
    if len(measured) >= 2:
        quick = min(measured, key=lambda row: row.latency_p50_ms)
        notes.append(f"{quick.model} answers a single image fastest (p50 {quick.latency_p50_ms:.1f} ms).")
    return Story(leader, runner, notes)


def champion_record(registry: RegistryState) -> VersionRecord | None:
    return next((v for v in registry.versions if v.version == registry.champion), None)


def champion_card(registry: RegistryState) -> tuple[str, str]:
    """(value, note) of the overview's registry card."""
    if registry.error:
        return "unknown", "registry unreachable"
    if registry.champion:
        record = champion_record(registry)
        return f"v{registry.champion}", record.tags.get("source_model", "") if record else ""
    challenger = registry.aliases.get(CHALLENGER)
    return "none", "no version has passed the gate yet" + (f"; challenger v{challenger}" if challenger else "")


def overview_cards(inputs: ReportInputs, rows: list[ComparisonRow], best: str) -> list[dict[str, str]]:
    quality = inputs.quality
    counts = quality.get("split_counts", {})
    best_row = next(row for row in rows if row.model == best)
    champion, champion_sub = champion_card(inputs.registry)
    return [
        {"label": "usable images", "value": f"{quality.get('usable_images', MISSING_VALUE):,}",
         "sub": f"of {quality.get('rows', MISSING_VALUE):,} catalogue rows"},
        {"label": "train / val / test", "sub": "images per split",
         "value": " / ".join(str(counts.get(split, MISSING_VALUE)) for split in ("train", "val", "test"))},
        {"label": "selected model (validation macro-F1)", "value": best, "id": "best-model",
         "sub": f"val {fmt(best_row.val_f1_macro, '.4f')} · test {best_row.test_f1_macro:.4f}"},
        {"label": "registry champion", "value": champion, "sub": champion_sub, "id": "champion-card"},
    ]


def audit_facts(quality: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("catalogue rows", quality.get("rows")),
        ("usable images", quality.get("usable_images")),
        ("missing image files", len(quality.get("missing_files", []))),
        ("unreadable image files", len(quality.get("unreadable_files", []))),
        ("duplicate groups (identical files)", quality.get("duplicate_group_count")),
        ("images in duplicate groups", quality.get("images_in_duplicate_groups")),
        ("near-duplicate pairs (beyond identical files)", len(quality.get("near_duplicate_pairs", []))),
        ("near-duplicate groups (kept on one side of the split)", quality.get("near_duplicate_group_count")),
        ("images in near-duplicate groups", quality.get("images_in_near_duplicate_groups")),
        ("rows excluded", quality.get("excluded")),
        ("split", (quality.get("split_assignment") or {}).get("how")),
    ]


@dataclass(frozen=True)
class SplitTable:
    """Images per class and split, a total per class, and the totals row."""

    splits: list[str]
    rows: list[tuple[str, list[Any], Any]]  # (class, count per split, usable images of the class)
    totals: list[Any]
    usable: Any


def split_table(inputs: ReportInputs) -> SplitTable:
    quality = inputs.quality
    counts = quality.get("split_class_counts") or {}
    splits = [name for name in ("train", "val", "test") if name in counts]
    rows = []
    for name in inputs.classes:
        cells = [counts[split].get(name, 0) for split in splits]
        rows.append((name, cells, quality.get("class_counts", {}).get(name, sum(cells))))
    totals = quality.get("split_counts", {})
    return SplitTable(splits, rows, [totals.get(split, MISSING_VALUE) for split in splits],
                      quality.get("usable_images", MISSING_VALUE))


def left_out_files(quality: dict[str, Any]) -> list[tuple[str, str]]:
    problems = {"missing": quality.get("missing_files", []), "unreadable": quality.get("unreadable_files", [])}
    return [(kind, ", ".join(names)) for kind, names in problems.items() if names]


def comparison_cells(row: ComparisonRow) -> list[tuple[str, str]]:
    """(cell class, text) of a comparison row after its model cell; the tests find the cells by class."""
    latency = (MISSING_VALUE if row.latency_p50_ms is None
               else f"{row.latency_p50_ms:.1f} / {fmt(row.latency_p95_ms, '.1f')}")
    epochs = MISSING_VALUE if row.epochs_run is None else f"{row.epochs_run} ({fmt(row.best_epoch)})"
    return [
        ("f1-test", f"{row.test_f1_macro:.4f}{bracket(row.test_interval)}"),
        ("f1-val", fmt(row.val_f1_macro, ".4f") + ("" if row.val_f1_macro is None else bracket(row.val_interval))),
        ("f1-cv", MISSING_VALUE if row.cv_mean is None else f"{row.cv_mean:.4f} ± {fmt(row.cv_sd, '.4f')}"),
        ("accuracy", fmt(row.test_accuracy, ".4f")),
        ("fit-time", duration(row.fit_time_s)),
        ("fit-cpu", duration(row.fit_cpu_time_s)),
        ("epochs", epochs),
        ("params", fmt(None if row.n_params is None else row.n_params / 1e6, ".2f")),
        ("throughput", fmt(row.images_per_s, ".1f")),
        ("latency", latency),
        ("weights", fmt(row.weights_used)),
    ]


def bracket(pair: tuple[float, float] | None) -> str:
    """`` [0.861, 0.948]`` (a bootstrap interval under its figure), empty when the figure has none."""
    return "" if pair is None else f" [{pair[0]:.3f}, {pair[1]:.3f}]"


def spread_lines(models: list[ModelInputs]) -> list[str]:
    """How far a single run's figures move with the seed: the error bar of every comparison on the page."""
    lines = []
    for model in models:
        spread = model.spread
        if not spread:
            lines.append(f"{model.name}: not measured")
            continue
        test, val = spread["test"], spread["val"]
        lines.append(f"{model.name}: test {test['mean']:.4f} ± {test['std']:.4f} "
                     f"[{test['min']:.4f}, {test['max']:.4f}], val {val['mean']:.4f} ± {val['std']:.4f} over "
                     f"{spread['n_seeds']} seeds")
    return lines


@dataclass(frozen=True)
class F1Cell:
    value: float | None
    below: bool = False  # under the promotion gate's class floor


def per_class_rows(inputs: ReportInputs) -> list[tuple[str, list[F1Cell]]]:
    floor = inputs.class_f1_floor
    rows = []
    for name in inputs.classes:
        cells = []
        for model in inputs.models:
            value = model.evaluated["test"].get("per_class", {}).get(name, {}).get("f1")
            cells.append(F1Cell(value, value is not None and floor is not None and value < floor))
        rows.append((name, cells))
    return rows


def faithfulness_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(method, deletion AUC ± se, insertion AUC ± se, beats-random verdict) per method the explain stage ran."""
    rows = []
    for key, label in FAITHFULNESS_METHODS.items():
        values = metrics.get(key)
        if not isinstance(values, dict):
            continue
        beats = metrics.get(f"{key}_beats_random") or {}
        verdict = ", ".join(f"{kind} {'✓' if ok else '✗'}" for kind, ok in beats.items()) or MISSING_VALUE
        rows.append((label, f"{fmt(values.get('deletion_auc'), '.3f')} ± {fmt(values.get('deletion_auc_se'), '.3f')}",
                     f"{fmt(values.get('insertion_auc'), '.3f')} ± {fmt(values.get('insertion_auc_se'), '.3f')}",
                     verdict if key != "random" else ""))
    return rows


def interval(pair: list[float] | None) -> str:
    return "" if not pair else f" [{pair[0]:.3f}, {pair[1]:.3f}]"


def weakest_coverage(per_class: dict[str, float | None]) -> str:
    """The class the threshold leaves most to review (the first in class order on a tie); classes absent from
    the test split (None) are not candidates."""
    measured = [(name, share) for name, share in per_class.items() if share is not None]
    if not measured:
        return MISSING_VALUE
    name, share = min(measured, key=lambda item: item[1])
    return f"{name} {share:.3f}"


def autolabel_cells(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(cell class, text) of a model's auto-labelling row (autolabel.json) after its model cell."""
    test, ece = summary.get("test") or {}, summary.get("ece") or {}
    threshold = summary.get("threshold")
    reached = bool(summary.get("reachable")) and threshold is not None
    coverage = (f"{fmt(test.get('coverage'), '.3f')} ({fmt(test.get('n_auto'))}/{fmt(test.get('n'))})"
                f"{interval(test.get('coverage_interval'))}")
    return [
        ("al-temperature", fmt(summary.get("temperature"), ".3f")),
        ("al-ece", f"{fmt(ece.get('test_before'), '.3f')} → {fmt(ece.get('test_after'), '.3f')}"),
        ("al-target", fmt(summary.get("target_precision"), "g")),
        ("al-threshold", f"{threshold:.4f}" if reached else UNREACHABLE),
        ("al-calibration", calibration_fit(summary.get("calibration") or {})),
        ("al-coverage", coverage),
        ("al-precision", f"{fmt(test.get('precision'), '.3f')}{interval(test.get('precision_interval'))}"),
        ("al-weakest", weakest_coverage(test.get("per_class_coverage") or {})),
    ]


def calibration_fit(fitted: dict[str, Any]) -> str:
    """Where temperature and threshold were fitted, and what the threshold promises there."""
    if not fitted:
        return MISSING_VALUE
    return (f"{fitted.get('source', MISSING_VALUE)}: coverage {fmt(fitted.get('coverage'), '.3f')}, "
            f"bound {fmt(fitted.get('precision_lower_bound'), '.4f')}")
def set_cells(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(cell class, text) of a model's prediction-set row (autolabel.json "conformal"); empty when not recorded."""
    sets = summary.get("conformal")
    if not sets:
        return []
    test = sets.get("test") or {}
    measured = [(name, row) for name, row in (test.get("per_class") or {}).items() if row.get("coverage") is not None]
    lowest = MISSING_VALUE
    if measured:
        name, row = min(measured, key=lambda item: item[1]["coverage"])
        lowest = f"{name} {row['coverage']:.3f} ({fmt(row.get('mean_set_size'), '.2f')})"
    sizes = ", ".join(f"{size}: {count}" for size, count in (test.get("size_counts") or {}).items()) or MISSING_VALUE
    return [
        ("ps-alpha", fmt(sets.get("alpha"), "g")),
        ("ps-quantile", f"{fmt(sets.get('quantile'), '.4f')} ({sets.get('calibration', 'val')})"),
        ("ps-coverage", f"{fmt(test.get('coverage'), '.3f')}{interval(test.get('coverage_interval'))}"),
        ("ps-size", fmt(test.get("mean_set_size"), ".2f")),
        ("ps-sizes", sizes),
        ("ps-lowest", lowest),
    ]


def selected_inputs(inputs: ReportInputs, best: str) -> ModelInputs:
    return next(model for model in inputs.models if model.name == best)


def _number(text: str | None, spec: str) -> str:
    """A registry tag (a string) as a formatted number; left as it is when it is not one ("none")."""
    if text is None:
        return MISSING_VALUE
    try:
        return format(float(text), spec)
    except ValueError:
        return text


def calibration_text(tags: dict[str, str]) -> str | None:
    """What a registered version serves: its temperature, its auto-label threshold and the share of the gate's
    images it auto-labelled; None for a version registered before calibration (no such tags)."""
    if "temperature" not in tags:
        return None
    threshold = tags.get("autolabel_threshold", "none")
    if threshold == "none":
        rule = ("no auto-label threshold (its precision bound never reached the target on the calibration "
                "predictions: every prediction is reviewed)")
    else:
        rule = (f"auto-labels at calibrated confidence ≥ {_number(threshold, '.4f')} "
                f"(target precision {_number(tags.get('autolabel_target_precision'), 'g')})")
    coverage = tags.get("autolabel_coverage", "none")
    covered = "" if coverage == "none" else f", {_number(coverage, '.3f')} of the gate's test images auto-labelled"
    return f"temperature {_number(tags['temperature'], '.3f')}, {rule}{covered}"


def calibration_cell(tags: dict[str, str]) -> str:
    """The versions table's short form of :func:`calibration_text`."""
    if "temperature" not in tags:
        return MISSING_VALUE
    threshold = tags.get("autolabel_threshold", "none")
    rule = "no threshold" if threshold == "none" else f"≥ {_number(threshold, '.4f')}"
    coverage = tags.get("autolabel_coverage", "none")
    covered = "" if coverage == "none" else f", coverage {_number(coverage, '.3f')}"
    return f"T {_number(tags['temperature'], '.3f')}, {rule}{covered}"


def chance(record: dict[str, Any]) -> str:
    probability = record.get("probability")
    return f" (p = {probability:.2f})" if isinstance(probability, int | float) else ""


def class_figures(explained: ExplainInputs) -> list[tuple[Path, str]]:
    return [(explained.directory / "figures" / name, caption) for name, caption in CLASS_FIGURES]


@dataclass(frozen=True)
class StudyExample:
    """The study's own image (explain.images) explained by the champion: the page's closing figure."""

    model: str
    role: str
    explained: ExplainInputs | None = None
    record: dict[str, Any] | None = None  # None: nothing to show, the page says so


def study_example(inputs: ReportInputs, selected: str) -> StudyExample:
    """The model this run made champion, else the selected candidate (what a reader most wants explained)."""
    promotion = inputs.promotion or {}
    name, role = selected, "selected model (not champion)"
    if promotion.get("version") and promotion.get("champion_after") == promotion.get("version"):
        name, role = str(promotion.get("source_model") or selected), "champion"
    model = next((model for model in inputs.models if model.name == name), None)
    explained = model.explain if model else None
    records = [record for record in (explained.summary.get("local", []) if explained else [])
               if record.get("kind") == "named"]
    if explained is None or not records or not (explained.directory / str(records[0].get("figure", ""))).is_file():
        return StudyExample(name, role)
    return StudyExample(name, role, explained, records[0])


def compared_figures(figures: dict[str, Any]) -> list[str]:
    """What the promotion gate compared, one phrase per check."""
    own = figures.get("challenger_f1_macro_interval")
    compared = [f"challenger macro-F1 {fmt(figures.get('challenger_f1_macro'), '.4f')}"
                f"{bracket(tuple(own) if own else None)} on {fmt(figures.get('n_images'))} images"]
    if "champion_f1_macro" in figures:
        paired = figures.get("delta_interval")
        shown = "" if not paired else f", paired interval [{paired[0]:+.4f}, {paired[1]:+.4f}]"
        compared.append(f"champion macro-F1 {fmt(figures.get('champion_f1_macro'), '.4f')} "
                        f"(difference {fmt(figures.get('delta'), '+.4f')}{shown}; its lower end must exceed "
                        f"{fmt(figures.get('min_delta'), 'g')})")
    if figures.get("calibration_precision_bound") is not None:
        compared.append(f"precision promise: lower bound {figures['calibration_precision_bound']:.4f} at coverage "
                        f"{fmt(figures.get('calibration_coverage'), '.3f')} on {figures.get('calibration_source')}")
    if "weakest_class" in figures:
        compared.append(f"weakest class {figures['weakest_class']} {fmt(figures.get('weakest_class_f1'), '.3f')}"
                        f" (floor {fmt(figures.get('class_f1_floor'), 'g')})")
    if "challenger_coverage" in figures:
        compared.append(coverage_phrase(figures))
    return compared


def coverage_phrase(figures: dict[str, Any]) -> str:
    """The gate's min-coverage rule: the share the challenger auto-labelled at its own threshold, and the minimum."""
    threshold = figures.get("challenger_autolabel_threshold")
    at = ("no threshold (the precision bound never reached the target)" if threshold is None
          else f"threshold {threshold:.4f}")
    minimum = figures.get("min_coverage") or 0
    rule = f"minimum {minimum:g}" if minimum else "no minimum (registry.min_coverage 0)"
    return (f"auto-label coverage {figures['challenger_coverage']:.3f} at {at} (precision "
            f"{fmt(figures.get('challenger_autolabel_precision'), '.3f')}, target "
            f"{fmt(figures.get('challenger_autolabel_target_precision'), 'g')}; {rule})")


def version_notes(tags: dict[str, str]) -> str:
    return "; ".join(text.format(tags[key]) for key, text in VERSION_NOTES if tags.get(key))


def header_parts(inputs: ReportInputs) -> list[tuple[str, str | None]]:
    """(text, code or None) of the header's meta line, joined by the template with " · "."""
    parts: list[tuple[str, str | None]] = [(f"generated {inputs.generated_at}", None)] if inputs.generated_at else []
    parts += [(key, value) for key, value in inputs.context.items()]
    return [*parts, (f"models: {', '.join(model.name for model in inputs.models)}", None)]


# --------------------------------------------------------------------------- rendering


@cache
def environment() -> jinja2.Environment:
    """The template environment: the package's templates folder, autoescaping on, the page's filters."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(fmt=fmt, duration=duration, readable_time=readable_time, version_label=version_label,
                       alias_kind=alias_kind, f1_colour=f1_colour, chance=chance, version_notes=version_notes,
                       calibration_cell=calibration_cell)
    return env


def render_html(inputs: ReportInputs, settings: EmbedSettings | None = None) -> str:
    """The whole page as one string: no external URL, every image a data URI."""
    settings = settings or EmbedSettings()
    rows = comparison_rows(inputs.models)
    best = best_model(inputs)
    selected = selected_inputs(inputs, best)
    champion = champion_record(inputs.registry)
    template = environment().get_template(TEMPLATE)
    return template.render(
        inputs=inputs, registry=inputs.registry, promotion=inputs.promotion, rows=rows, best=best,
        sections=SECTIONS, header=header_parts(inputs), cards=overview_cards(inputs, rows, best),
        story=story(rows, best), facts=audit_facts(inputs.quality), left_out=left_out_files(inputs.quality),
        splits=split_table(inputs), comparison_header=COMPARISON_HEADER, comparison_cells=comparison_cells,
        selection_rule=SELECTION_RULE, spread=spread_lines(inputs.models),
        curves_png=learning_curves_png(inputs.models),
        per_class_png=per_class_f1_png(inputs.models, inputs.classes, inputs.class_f1_floor),
        per_class=per_class_rows(inputs), faithfulness_rows=faithfulness_rows, class_figures=class_figures,
        example=study_example(inputs, best), champion=champion,
        champion_calibration=calibration_text(champion.tags) if champion else None,
        autolabel_header=AUTOLABEL_HEADER, autolabel_cells=autolabel_cells, selected=selected,
        sets_header=SETS_HEADER, set_cells=set_cells,
        set_models=[model for model in inputs.models if (model.autolabel or {}).get("conformal")],
        precision_coverage_png=precision_coverage_png(selected),
        near_duplicates_png=near_duplicates_png(inputs.quality.get("near_duplicate_pairs") or [], inputs.images_dir),
        compared=compared_figures((inputs.promotion or {}).get("figures") or {}),
        embed=partial(embed_image, settings=settings), dash=MISSING_VALUE, CHAMPION=CHAMPION,
    ) + "\n"
