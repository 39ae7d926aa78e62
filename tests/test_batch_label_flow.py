"""The ``batch-label`` Prefect flow on a real local Dask cluster of 2 workers: one worker is killed (SIGKILL)
while it labels a shard, and every catalogue row still comes out exactly once, in input order, with the labels a
single uninterrupted ``predict`` gives."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from batch_helpers import load_folder, save_served_model
from conftest import REPO
from PIL import Image

ROWS = 160
SHARD_ROWS = 80
BATCH = 4


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings(updates={PREFECT_SERVER_ANALYTICS_ENABLED: False}), \
            prefect_test_harness(server_startup_timeout=240):
        yield


def _kill_the_worker_labelling_a_shard(shards: Path, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the Dask worker whose predict child has written a few rows of a shard (once)."""
    while not stop.is_set():
        for partial in sorted(shards.glob("*.csv.partial")):
            if partial.read_bytes().count(b"\n") - 1 < 2 * BATCH:
                continue
            for process in psutil.process_iter(["cmdline"]):
                cmdline = process.info["cmdline"] or []
                if str(partial.with_suffix("")) in cmdline and "predict" in cmdline:
                    worker = process.parent()
                    killed.append(int(partial.name.split(".")[0]))
                    os.kill(worker.pid, signal.SIGKILL)
                    return
        time.sleep(0.01)


@pytest.mark.slow
def test_a_killed_worker_loses_no_row_and_duplicates_none(harness: None, tmp_path: Path) -> None:
    from catalog_classifier.stages.batch_label import shard_file
    from flows.batch_label import run_batch_label

    rng = np.random.default_rng(1)
    (tmp_path / "img").mkdir()
    for index in range(10):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{index}.png")
    catalogue = tmp_path / "catalogue.csv"
    pd.DataFrame({"image": [f"img/{i % 10}.png" for i in range(ROWS)]}).to_csv(catalogue, index=False)
    model = save_served_model(tmp_path / "model", BATCH)
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text().replace(
        "  runtime: auto ", "  runtime: torch ").replace(
        "tracking_uri: sqlite:///mlruns/mlflow.db", f"tracking_uri: sqlite:///{tmp_path / 'mlflow.db'}"))
    output = tmp_path / "labelled.csv"

    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_the_worker_labelling_a_shard,
                              args=(output.with_name(output.name + ".shards"), killed, stop), daemon=True)
    killer.start()
    try:
        result = run_batch_label(str(params), str(catalogue), str(output), model_uri=str(model), workers=2,
                                 shard_rows=SHARD_ROWS)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was killed mid-shard: the test proved nothing"
    frame = pd.read_csv(output, keep_default_na=False)
    assert result["rows"] == ROWS and result["shards"] == ROWS // SHARD_ROWS
    assert list(frame["image"]) == [f"img/{i % 10}.png" for i in range(ROWS)]  # each row once, in input order
    # The killed shard was finished by another worker, resuming its partial file.
    summary = pd.read_json(shard_file(output, killed[0]).with_name(f"{killed[0]:05d}_summary.json"), typ="series")
    assert summary["n_images"] == SHARD_ROWS and summary["rows_resumed"] >= 2 * BATCH
    # The same labels as one uninterrupted pass of the same model over the whole catalogue.
    from catalog_classifier.modeling.batch_prediction import predict_batch, read_inputs

    whole = predict_batch(load_folder(model), read_inputs([catalogue]))
    assert list(frame["label"]) == list(whole["label"])
