"""In a real browser (Debian's headless Chromium, driven by Playwright): the report shows what the stage files say,
its images load, and the MLflow UI lists both models' runs of the pipeline.

``make test`` installs chromium first (``make browser``). Without it, or without the playwright package, these tests
skip on a developer machine and fail under ``CI=true``, where a skipped browser check would hide a broken setup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pytest
from conftest import TINY_MODELS
from server_helpers import free_port, stop_process_group, wait_until_answers

from catalog_classifier.config.layout import Project

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# Headless in a closed network: no GPU, no QUIC, and none of the background fetches (component updates, sync,
# field trials) that otherwise stall start-up waiting for servers that cannot be reached. Playwright adds
# --headless and a fresh temporary --user-data-dir itself.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 120_000
SERVER_STARTUP_S = 180


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; run `make browser` (apt-get install chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _browser_available() -> None:
    """Checked before the session's tiny pipeline is built: a missing browser costs nothing to find out."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is not installed")
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} not found")


@contextmanager
def chromium() -> Iterator[Any]:
    """One headless Chromium for one test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def test_report_in_chromium(tiny_pipeline: Path, tmp_path: Path) -> None:
    from catalog_classifier.stages.report import write_report

    project = Project.load(tiny_pipeline / "params.yaml", {"report.out_dir": str(tmp_path / "report")})
    page_file = write_report(project)
    promotion = json.loads(project.promotion_report().read_text())
    store = f"sqlite:///{tiny_pipeline}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    champion = client.get_registered_model("catalog-classifier").aliases.get("champion")

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(page_file.as_uri())
        page.wait_for_load_state("load")
        assert page.title() == "Catalogue classifier: study report"
        for model in TINY_MODELS:
            evaluated = json.loads(project.eval_metrics(model).read_text())
            cell = page.locator(f'#comparison-table tr[data-model="{model}"] td.f1-test')
            assert cell.is_visible()
            interval = evaluated["test"]["f1_macro_interval"]
            assert cell.inner_text() == (f"{evaluated['test']['f1_macro']:.4f} "
                                         f"[{interval['low']:.3f}, {interval['high']:.3f}]")
            latency = evaluated.get("latency_ms")
            expected = f"{latency['p50']:.1f} / {latency['p95']:.1f}" if latency else "—"
            assert page.locator(f'#comparison-table tr[data-model="{model}"] td.latency').inner_text() == expected
            autolabel = json.loads(project.autolabel(model).read_text())
            row = page.locator(f'#autolabel-table tr[data-model="{model}"]')
            assert row.locator("td.al-temperature").inner_text() == f"{autolabel['temperature']:.3f}"
            threshold = autolabel["threshold"]
            assert row.locator("td.al-threshold").inner_text() == (
                f"{threshold:.4f}" if autolabel["reachable"] else
                "no threshold: the precision bound never reaches the target; nothing auto-labelled")
        confusion = page.locator("img.confusion")
        assert confusion.count() == len(TINY_MODELS)
        widths = confusion.evaluate_all("images => images.map(image => image.complete ? image.naturalWidth : 0)")
        assert all(width > 0 for width in widths), widths
        broken = page.evaluate("[...document.images].filter(image => !image.complete || !image.naturalWidth).length")
        assert broken == 0
        assert page.locator("#curves-chart").is_visible() and page.locator("#per-class-chart").is_visible()
        for chart in ("precision-coverage-chart", "reliability-chart"):
            assert page.locator(f"#{chart}").is_visible(), chart
        champion_text = page.locator("#champion").inner_text()
        assert (f"Champion: catalog-classifier v{champion}" in champion_text if champion
                else "No champion" in champion_text)
        decision = page.locator("#decision")
        assert decision.is_visible()
        assert decision.inner_text().startswith(
            f"{promotion['decision']} catalog-classifier v{promotion['version']} ({promotion['source_model']}) — "
            f"{promotion['reason']}")
        assert all(url.startswith(("file:", "data:")) for url in requested), requested  # self-contained
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mlflow_ui_lists_both_models_runs(tiny_pipeline: Path, tmp_path: Path) -> None:
    database = tiny_pipeline / "mlruns" / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("catalog-classifier")
    n_runs = len(client.search_runs([experiment.experiment_id]))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "mlflow-server.log"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{database}",
               "--default-artifact-root", str(tiny_pipeline / "mlruns" / "artifacts")]
    with chromium() as browser, log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_answers(f"{url}/health", server, log, SERVER_STARTUP_S)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # MLflow 3's experiment page opens on a GenAI overview: the runs table is the "Training runs" view.
            page.goto(f"{url}/#/experiments/{experiment.experiment_id}/runs")
            for model in TINY_MODELS:  # a React app: wait until the runs table has rendered each run's name
                page.get_by_role("link", name=model, exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)
            page.get_by_text(f"{n_runs} matching runs").wait_for(timeout=UI_TIMEOUT_MS)
            page.screenshot(path=str(tmp_path / "mlflow-ui.png"))
        finally:
            stop_process_group(server)
    assert (tmp_path / "mlflow-ui.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
