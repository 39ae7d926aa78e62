"""The bench report as Markdown: the README's Speed tables from the figures ``benchmarks.suite`` measured.

Why apart from the measuring: the numbers are a machine's at a moment and stay in ``bench.json``; how they are
told (columns, targets met or not, what is extrapolated) is presentation, read and changed without touching the
timing code. Input is the bench report dict that :func:`catalog_classifier.stages.bench.run_bench` assembles.
"""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def _target(value: float | None, unit: str, met: bool | None) -> str:
    if value is None:
        return ""
    if met is None:  # nothing measured to hold against the target (e.g. no full fit recorded)
        return f" (target {value:g}{unit}: nothing to compare)"
    return f" (target {value:g}{unit}: {'met' if met else 'not met'})"


def markdown_tables(report: dict[str, Any]) -> str:
    """The README's Speed tables from a bench report."""
    peaks, machine = report["peak"], report["machine"]
    lines = [
        f"{machine['cpu']}, {machine['threads']} threads, bf16 autocast {machine['bf16']}, torch {machine['torch']}; "
        f"matmul peak fp32 {peaks['fp32']['gflops']:.0f} GFLOP/s, bf16 {peaks['bf16']['gflops']:.0f} GFLOP/s; "
        f"load average {machine['loadavg_start'][0]:.1f} at start. Training batch {report['settings']['batch_size']}; "
        f"epoch times are extrapolated to the {report['settings']['n_train']}-image train split."
        + (" **Quick run: not a measurement.**" if report["quick"] else ""),
        "",
        "| model | project img/s | naive img/s | project / naive | epoch s project / naive | "
        "train GFLOP/s | of peak | naive: of fp32 peak | ceiling (peak / naive GFLOP/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, figures in report["models"].items():
        train = figures["training"]
        lines.append(
            f"| {name} | {train['project']['images_per_s']:.2f} | {train['naive']['images_per_s']:.2f} | "
            f"{train['ratio']:.2f}x{_target(train['target_ratio'], 'x', train['meets_target'])} | "
            f"{train['project']['epoch_s_extrapolated']:.0f} / {train['naive']['epoch_s_extrapolated']:.0f} | "
            f"{train['project']['achieved_gflops']:.0f} | "
            f"{100 * train['project']['fraction_of_peak']:.0f} % ({train['project']['peak_dtype']}) | "
            f"{100 * train['naive']['fraction_of_peak']:.0f} % | {train['ceiling_ratio']:.1f}x |")
    lines += ["", "| model | inference img/s (batch) | 1 image p50 / p95 ms | of which decode+resize p50 | "
              "compile, train: s, speed-up, repays in 1 fit | compile, inference: s, speed-up, repays |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, figures in report["models"].items():
        batched = ", ".join(f"{v['images_per_s']:.1f} ({k})" for k, v in figures["inference"]["batched"].items())
        single = figures["inference"]["single_image"]
        lines.append(f"| {name} | {batched} | {single['p50_ms']:.1f} / {single['p95_ms']:.1f}"
                     f"{_target(single['target_p50_ms'], ' ms', single['meets_target'])} | "
                     f"{single['preprocess']['p50_ms']:.1f} | {_compile_cell(figures['compile'], 'train')} | "
                     f"{_compile_cell(figures['compile'], 'inference')} |")
    lines += _batch_predict_lines(report)
    frozen_rows = [(name, figures["frozen"]) for name, figures in report["models"].items() if "frozen" in figures]
    if frozen_rows:
        lines += ["", "| model | frozen fit s (features + head) | full fine-tuning fit s (recorded) | speed-up | "
                  "test macro-F1 frozen / full |", "|---|---:|---:|---:|---:|"]
        for name, frozen in frozen_rows:
            full = frozen["full"]
            star = " (extrapolated)" if frozen["extrapolated"] else ""
            speedup = "n/a" if frozen["speedup"] is None else f"{frozen['speedup']:.1f}x"
            lines.append(
                f"| {name} | {frozen['fit_s_for_speedup']:.1f}{star} ({frozen['feature_s']:.1f} + "
                f"{frozen['head_fit_s']:.1f}) | {_fmt(full.get('fit_time_s'), '.0f')} | "
                f"{speedup}{_target(frozen['speedup_target'], 'x', frozen['meets_target'])} | "
                f"{frozen['test_f1_macro']:.3f} / {_fmt(full.get('test_f1_macro'), '.3f')} |")
    return "\n".join(lines) + "\n"


def _batch_predict_lines(report: dict[str, Any]) -> list[str]:
    """One row per model: the end-to-end batch prediction users run, against the issue's images/s target."""
    rows = [(name, figures["inference"]["batch_predict"]) for name, figures in report["models"].items()
            if "batch_predict" in figures["inference"]]
    if not rows:
        return []
    lines = ["", "| model | end-to-end batch prediction | s: total (decode+resize / forward+softmax / rest) | "
             "batch, threads | weights |", "|---|---:|---:|---:|---|"]
    for name, run in rows:
        short = "" if run["n_images"] == run["n_requested"] else f" (of {run['n_requested']} asked: all there are)"
        weights = f"trained{', calibrated' if run['calibrated'] else ''}" if run["weights"] == "trained" else (
            "random (no trained model.pt)")
        lines.append(
            f"| {name} | batch predict, {run['n_images']} images{short}: {run['images_per_s']:.1f} img/s"
            f"{_target(run['target_img_s'], ' img/s', run['meets_target'])} | {run['seconds']:.1f} "
            f"({run['decode_resize_s']:.1f} / {run['forward_s']:.1f} / {run['other_s']:.1f}) | "
            f"{run['batch_size']}, {run['threads']} | {weights} |")
    return lines


def _compile_cell(compiled: dict[str, Any], part: str) -> str:
    if compiled.get("status") != "ok":
        return compiled.get("status", "n/a")
    figures = compiled[part]
    return (f"{figures['compile_s']:.0f} s, {figures['speedup']:.2f}x, "
            f"{'yes' if figures['repays_within_one_fit'] else 'no'}")
