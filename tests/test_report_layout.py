"""The report's model-comparison table fits a 1,400 px wide browser window (real Chromium, via Playwright).

No pipeline runs: the table's own template (the one report.html.j2 includes) is rendered with the page's CSS from a
small hand-made set of rows as wide as real ones (long timm names, intervals, every column filled).
"""

from __future__ import annotations

from pathlib import Path

from test_report_browser import CHROMIUM, _unavailable, chromium

from catalog_classifier.reporting.collector import ComparisonRow
from catalog_classifier.reporting.page import COMPARISON_HEADER, comparison_cells, environment

VIEWPORT = {"width": 1400, "height": 900}
PAGE = ("<!doctype html><html><head><meta charset='utf-8'><style>{% include 'report.css' %}</style></head><body>"
        "<main><section id='comparison'><h2>Model comparison</h2>{% include 'comparison_table.html.j2' %}</section>"
        "</main></body></html>")


def wide_row(model: str, weights: str) -> ComparisonRow:
    return ComparisonRow(model=model, test_f1_macro=0.9123, val_f1_macro=0.9087, test_accuracy=0.9151,
                         fit_time_s=5423.0, fit_cpu_time_s=10811.0, epochs_run=30, best_epoch=27,
                         n_params=28_589_128, images_per_s=123.4, latency_p50_ms=145.2, latency_p95_ms=1234.5,
                         weights_used=weights, test_interval=(0.8876, 0.9345), val_interval=(0.8812, 0.9301),
                         cv_mean=0.9012, cv_sd=0.0123)


ROWS = [wide_row("convnext_tiny.in12k_ft_in1k", "imagenet"),
        wide_row("efficientnet_b0.ra_in1k", "imagenet"),
        wide_row("resnet50.a1_in1k", "random")]


def test_the_comparison_table_fits_a_1400_px_window(tmp_path: Path) -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is not installed")
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} not found")
    page_file = tmp_path / "comparison.html"
    page_file.write_text(environment().from_string(PAGE).render(
        rows=ROWS, best=ROWS[0].model, comparison_header=COMPARISON_HEADER, comparison_cells=comparison_cells),
        encoding="utf-8")
    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(page_file.as_uri())
        table = page.locator("#comparison-table").bounding_box()
        weights = page.locator("#comparison-table td.weights").first.bounding_box()
        assert page.locator("#comparison-table tbody tr").count() == 3
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
    assert table is not None and weights is not None
    assert table["x"] + table["width"] <= VIEWPORT["width"], table
    assert weights["x"] + weights["width"] <= table["x"] + table["width"], weights  # the last column is inside
    assert scroll_width <= VIEWPORT["width"]  # nothing sticks out sideways
