"""``catalog-classifier serve`` (``mlflow models serve --env-manager local``) answers a real posted image with
the class the evaluate stage gave it, its calibrated confidence and review flag, offline, on 127.0.0.1."""

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
import yaml
from registry_helpers import calibrated, cli_args, eval_predictions, promote, split_images, write_autolabel
from server_helpers import free_port, stop_process_group, wait_until_answers

from catalog_classifier.modeling.prediction import parse_top3

pytestmark = pytest.mark.slow

NAME = "serve"
# Starting the server imports torch, timm and mlflow and loads the model: slow on a busy 2-core machine.
STARTUP_TIMEOUT_S = 600


def test_the_served_champion_classifies_a_posted_image(tiny_pipeline: Path, tmp_path: Path) -> None:
    project = tiny_pipeline
    model = json.loads((project / "artifacts/comparison.json").read_text())["selected"]
    classes = yaml.safe_load((project / "params.yaml").read_text())["data"]["classes"]
    image = split_images(project)[0]
    evaluated = eval_predictions(project, model).set_index("image")
    expected = evaluated.loc[image.name]
    # A hand-made calibration: temperature 0.5, threshold just under this image's calibrated confidence.
    probabilities = calibrated(evaluated, classes, 0.5).loc[image.name]
    write_autolabel(tmp_path / "eval", model, 0.5, round(float(probabilities.max()) - 1e-3, 6))
    report = promote(project, NAME, tmp_path / "promotion.json", "--set", f"evaluate.out_dir={tmp_path / 'eval'}")
    assert report["promote"] and report["source_model"] == model

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    command = [sys.executable, "-m", "catalog_classifier", "serve", "--engine", "mlflow", "--port", str(port),
               *cli_args(project, NAME)]
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

    assert set(predictions[0]) == {"label", "confidence", "top3", "needs_review", "prediction_set", "error"}
    assert isinstance(predictions[0]["prediction_set"], list)  # its content: tests/test_predict.py
    assert predictions[0]["label"] == expected["pred_label"]
    assert isinstance(predictions[0]["confidence"], float)
    assert predictions[0]["confidence"] == pytest.approx(probabilities.max(), abs=1e-5)  # calibrated
    assert predictions[0]["needs_review"] is False  # at or above the threshold
    assert predictions[0]["error"] == ""
    top3 = parse_top3(predictions[0]["top3"])
    assert [label for label, _ in top3] == list(probabilities.sort_values(ascending=False).index[:3])
    assert top3[0][1] == pytest.approx(predictions[0]["confidence"], abs=1e-6)
    assert predictions[1] == {"label": "", "confidence": None, "top3": "", "needs_review": True,
                              "prediction_set": [], "error": "not valid base64"}
    assert f"{NAME} v1 (champion)" in log.read_text()
