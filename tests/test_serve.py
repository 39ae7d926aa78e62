"""``catalog-classifier serve`` (``mlflow models serve --env-manager local``) answers a real posted image with
the class the evaluate stage gave it, offline, on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from registry_helpers import cli_args, eval_predictions, promote, split_images
from server_helpers import free_port, stop_process_group, wait_until_answers

pytestmark = pytest.mark.slow

NAME = "serve"
# Starting the server imports torch, timm and mlflow and loads the model: slow on a busy 2-core machine.
STARTUP_TIMEOUT_S = 600


def test_the_served_champion_classifies_a_posted_image(tiny_pipeline: Path, tmp_path: Path) -> None:
    project = tiny_pipeline
    report = promote(project, NAME, tmp_path / "promotion.json")
    assert report["promote"]
    image = split_images(project)[0]
    expected = eval_predictions(project, report["source_model"]).set_index("image").loc[image.name]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    command = [sys.executable, "-m", "catalog_classifier", "serve", "--port", str(port), *cli_args(project, NAME)]
    with log.open("w") as log_handle:
        server = subprocess.Popen(command, cwd=project, env=environment, stdout=log_handle,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_answers(f"{url}/ping", server, log, STARTUP_TIMEOUT_S, interval_s=1)
        body = {"dataframe_records": [{"image": base64.b64encode(image.read_bytes()).decode("ascii")},
                                      {"image": "not base64!"}]}
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as answer:
            predictions = json.loads(answer.read())["predictions"]
    finally:
        stop_process_group(server)

    assert predictions[0]["label"] == expected["pred_label"]
    assert predictions[0]["probability"] == pytest.approx(expected["confidence"], abs=1e-5)
    assert predictions[0]["error"] == ""
    assert json.loads(predictions[0]["top3"])[0] == [expected["pred_label"], predictions[0]["probability"]]
    assert predictions[1] == {"label": "", "probability": None, "top3": "", "error": "not valid base64"}
    assert f"{NAME} v1 (champion)" in log.read_text()
