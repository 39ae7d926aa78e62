"""Streaming, resumable batch prediction and the exit status of its failures, on a real (tiny) served model saved
as an MLflow pyfunc folder and run by the real CLI in a subprocess: killed with SIGKILL mid-way and resumed,
against a tracking server that answers 503 or never answers, and with a model URI that names nothing."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batch_helpers import CLASSES, load_folder, save_served_model
from conftest import REPO
from PIL import Image

from catalog_classifier.modeling.batch_prediction import (
    InputRow,
    _drop_torn_line,
    partial_paths,
    read_inputs,
)

N_IMAGES = 12
ROWS = 480
BATCH = 8


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(served model folder, CSV of ROWS rows): 12 noise images listed over and over, a missing and a corrupt one."""
    folder = tmp_path_factory.mktemp("batch")
    rng = np.random.default_rng(0)
    (folder / "img").mkdir()
    names = []
    for index in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / "img" / f"{index}.png")
        names.append(f"img/{index}.png")
    (folder / "img" / "corrupt.png").write_bytes(b"not a png")
    rows = [names[i % N_IMAGES] for i in range(ROWS)]
    rows[5], rows[200] = "img/missing.png", "img/corrupt.png"
    labels = [CLASSES[i % 3] for i in range(ROWS)]
    pd.DataFrame({"image": rows, "label": labels}).to_csv(folder / "todo.csv", index=False)
    return save_served_model(folder, BATCH), folder / "todo.csv"


def _command(model: Path, csv: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "catalog_classifier.cli", "predict", "--input", str(csv), "--output", str(output),
            "--model-uri", str(model), "--params", str(REPO / "params.yaml"),
            "--set", f"mlflow.tracking_uri=sqlite:///{output.parent / 'mlflow.db'}",
            "--set", "batch_predict.decode_workers=2", "--set", "batch_predict.runtime=torch", *extra]


def _environment(**extra: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    path = os.pathsep.join([str(REPO / "src"), str(REPO), environment.get("PYTHONPATH", "")])
    return {**environment, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", **extra}


def _rows_in(path: Path) -> int:
    return max(0, path.read_bytes().count(b"\n") - 1) if path.is_file() else 0


def test_a_run_killed_mid_way_resumes_and_ends_identical_to_an_uninterrupted_one(
        catalogue: tuple[Path, Path], tmp_path: Path) -> None:
    model, csv = catalogue
    whole = tmp_path / "whole" / "out.csv"
    whole.parent.mkdir()
    done = subprocess.run(_command(model, csv, whole), env=_environment(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    expected = pd.read_csv(whole, keep_default_na=False)
    assert len(expected) == ROWS

    output = tmp_path / "killed" / "out.csv"
    output.parent.mkdir()
    partial, state = partial_paths(output)
    process = subprocess.Popen(_command(model, csv, output), env=_environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _rows_in(partial) < 3 * BATCH and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    written = _rows_in(partial)
    assert 3 * BATCH <= written < ROWS, "the kill came too late to test anything"
    assert not output.exists() and state.is_file()  # the unfinished run left no output that looks complete

    resumed = subprocess.run(_command(model, csv, output), env=_environment(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    frame = pd.read_csv(output, keep_default_na=False)
    assert list(frame["image"]) == list(expected["image"])  # exactly one row per input row, in order
    for column in ("label", "top3", "needs_review", "error"):
        assert list(frame[column]) == list(expected[column]), column
    confidence = pd.to_numeric(frame["confidence"].replace("", np.nan))
    expected_confidence = pd.to_numeric(expected["confidence"].replace("", np.nan))
    np.testing.assert_allclose(confidence, expected_confidence, atol=1e-6)
    assert not partial.exists() and not state.exists()
    summary = pd.read_json(output.with_name("out_summary.json"), typ="series")
    assert summary["n_images"] == ROWS and summary["n_unreadable"] == 2
    assert summary["rows_resumed"] >= written - BATCH and summary["rows_resumed"] + summary["rows_predicted"] == ROWS
    # Precision over the whole file, resumed part included: the auto-labelled rows whose label is the CSV's.
    truth = pd.read_csv(csv, keep_default_na=False)["label"]
    auto = (frame["needs_review"].astype(str) == "False") & (frame["error"] == "")
    assert summary["n_auto_labelled"] == int(auto.sum())
    assert summary["n_auto_labelled_correct"] == int((auto & (frame["label"] == truth)).sum())


def test_unreadable_rows_never_shrink_a_batch(catalogue: tuple[Path, Path], tmp_path: Path) -> None:
    from catalog_classifier.modeling.batch_prediction import stream_predictions

    model, csv = catalogue
    classifier = load_folder(model)
    rows = list(read_inputs([csv]).rows())[:40]  # row 5 is missing: 39 readable
    chunks = list(stream_predictions(classifier, iter(rows)))
    readable = [sum(row["error"] == "" for row in chunk) for chunk in chunks]
    assert readable == [8, 8, 8, 8, 7]
    assert [row["image"] for chunk in chunks for row in chunk] == [row.name for row in rows]


def test_a_torn_last_line_is_cut_and_a_partial_of_other_inputs_is_refused(catalogue: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    from catalog_classifier.modeling.batch_prediction import open_output
    from catalog_classifier.ops.exits import InputError

    torn = tmp_path / "torn.csv"
    torn.write_bytes(b"image,label\na.png,x\nb.pn")
    _drop_torn_line(torn)
    assert torn.read_bytes() == b"image,label\na.png,x\n"

    output = tmp_path / "out.csv"
    partial, state_file = partial_paths(output)
    state = {"inputs": ["todo.csv"], "model_uri": "m", "model": {}}
    handle, done = open_output(output, state, True, iter([]))
    handle.write("image,label,confidence,top3,needs_review,prediction_set,error\na.png,x,0.9,x:0.9,False,x,\n")
    handle.close()
    rows = iter([InputRow("a.png", None), InputRow("b.png", None)])
    handle, done = open_output(output, state, True, rows)
    handle.close()
    assert done == 1 and next(rows).name == "b.png"
    with pytest.raises(InputError, match="other model_uri"):
        open_output(output, {**state, "model_uri": "other"}, True, iter([]))
    with pytest.raises(InputError, match="is not input row 1"):
        open_output(output, state, True, iter([InputRow("z.png", None)]))
    handle, done = open_output(output, {**state, "model_uri": "other"}, False, iter([]))  # --no-resume
    handle.close()
    assert done == 0 and partial.read_text() == ""


def test_folders_are_read_lazily_in_sorted_path_order(tmp_path: Path) -> None:
    for name in ["b/2.png", "b/10.png", "a.png", "a/z.jpg", "c.txt", ".hidden/x.png", "b.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    names = [Path(row.name).relative_to(tmp_path).as_posix() for row in read_inputs([tmp_path]).rows()]
    assert names == ["a/z.jpg", "a.png", "b/10.png", "b/2.png", "b.jpg"]  # == sorted(rglob), images only


# --- exit statuses --------------------------------------------------------------------------------------------

class _Answer503(http.server.BaseHTTPRequestHandler):
    def _fail(self) -> None:
        self.send_response(503)
        self.end_headers()
        self.wfile.write(b"upstream database down")

    do_GET = do_POST = _fail

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def failing_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer503)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers (a hung tracking server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """The CLI in this process (start-up paid once); returns the exit status and its one error line."""
    from registry_helpers import cli

    capsys.readouterr()
    status = cli(args)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("catalog-classifier")]
    assert len(lines) == 1, lines
    return status, lines[0]


@pytest.mark.parametrize("server", ["failing_server", "silent_server"])
def test_a_tracking_server_that_fails_or_hangs_is_transient(server: str, catalogue: tuple[Path, Path],
                                                            tmp_path: Path, request: pytest.FixtureRequest,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    url = request.getfixturevalue(server)
    _, csv = catalogue
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    status, line = _cli(["predict", "--input", str(csv), "--output", str(tmp_path / "o.csv"), "--params",
                         str(REPO / "params.yaml")], capsys)
    assert status == 75
    assert line.startswith("catalog-classifier predict: error: MLflow tracking server " + url)
    assert not (tmp_path / "o.csv").exists()


def test_a_5xx_met_while_loading_is_transient_and_a_4xx_is_the_users() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

    from catalog_classifier.ops.exits import InputError
    from catalog_classifier.registry.model_access import classify_load_error
    from catalog_classifier.registry.tracking import TrackingUnavailable

    remote, local = "http://mlflow:5000", "sqlite:////tmp/mlflow.db"
    busy = MlflowException("API request to endpoint /x failed with error code 503 != 200", TEMPORARILY_UNAVAILABLE)
    timeout = MlflowException("API request to http://mlflow:5000/x failed with timeout exception ReadTimeout.")
    missing = MlflowException("Registered Model with name=x not found", RESOURCE_DOES_NOT_EXIST)
    assert isinstance(classify_load_error(busy, "models:/x/1", remote), TrackingUnavailable)
    assert isinstance(classify_load_error(timeout, "models:/x/1", remote), TrackingUnavailable)
    assert isinstance(classify_load_error(missing, "models:/x/1", remote), InputError)
    assert isinstance(classify_load_error(timeout, "models:/x/1", local), InputError)  # nothing to wait for


@pytest.mark.parametrize(("what", "args", "expected"), [
    ("unknown model", ["--model-uri", "models:/no-such-model/3"], "error: cannot load models:/no-such-model/3: "),
    ("missing input", ["--input", "no/such.csv"], "error: no such file or folder: no/such.csv"),
    ("missing folder", ["--input", "no/such/folder"], "error: no such file or folder: no/such/folder"),
    ("empty folder", ["--input", "EMPTY"], "error: no image found in "),
])
def test_user_errors_exit_2_with_one_line(what: str, args: list[str], expected: str, catalogue: tuple[Path, Path],
                                          tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, csv = catalogue
    if "--input" not in args:
        args = [*args, "--input", str(csv)]
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if arg == "EMPTY" else arg for arg in args]
    status, line = _cli(["predict", *args, "--output", str(tmp_path / "o.csv"), "--params",
                         str(REPO / "params.yaml"), "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'm.db'}"],
                        capsys)
    assert status == 2, what
    assert expected in line
    assert not (tmp_path / "o.csv").exists()


# --- the ONNX Runtime path -------------------------------------------------------------------------------------

def test_the_onnx_export_agrees_with_pytorch_and_predicts_the_same_rows(catalogue: tuple[Path, Path],
                                                                        tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    from registry_helpers import cli

    from catalog_classifier.modeling.onnx_runtime import OnnxImageClassifier, export_onnx, parity

    model, csv = catalogue
    classifier = load_folder(model)
    onnx = OnnxImageClassifier(classifier, export_onnx(classifier.model, classifier.config, tmp_path / "m.onnx"), 2)
    images = sorted((csv.parent / "img").glob("[0-9]*.png"))
    agreement = parity(classifier, onnx, images)
    assert agreement["top1_agreement"] == 1.0 and agreement["n_images"] == N_IMAGES
    assert agreement["max_abs_logit_diff"] < 1e-4
    # A batch of 3 through a graph traced with 2: the batch axis is dynamic.
    assert onnx.predict_files(images[:3])["label"].tolist() == classifier.predict_files(images[:3])["label"].tolist()

    outputs = {}
    for runtime in ("torch", "onnx"):
        outputs[runtime] = tmp_path / f"{runtime}.csv"
        assert cli(["predict", "--input", str(csv), "--output", str(outputs[runtime]), "--model-uri", str(model),
                    "--params", str(REPO / "params.yaml"), "--set", f"batch_predict.runtime={runtime}",
                    "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'm.db'}"]) == 0
    torch_rows, onnx_rows = (pd.read_csv(outputs[name], keep_default_na=False) for name in ("torch", "onnx"))
    assert list(onnx_rows["label"]) == list(torch_rows["label"])
    summary = pd.read_json(tmp_path / "onnx_summary.json", typ="series")
    assert summary["runtime"] == "onnx" and summary["n_images"] == ROWS


def test_the_runtime_choice_is_the_faster_one_for_the_purpose(tmp_path: Path) -> None:
    from catalog_classifier.modeling.inference_runtime import choose_runtime, faster_runtime

    figures = {"torch": {"p50_ms": 11.6, "batch_images_per_s": 122.0},
               "onnx": {"p50_ms": 7.9, "batch_images_per_s": 118.0}}
    assert faster_runtime(figures, "single") == "onnx"
    assert faster_runtime(figures, "batch") == "torch"
    assert faster_runtime({"torch": {}, "onnx": {}}, "batch") == "torch"  # nothing measured: PyTorch
    # Batch prediction is judged streaming (decode sharing the cores) where the record has it, whatever the
    # forward-only figure says: the figures of this machine's bench-predict, bf16 PyTorch against ONNX Runtime.
    measured = {"torch": {"batch_images_per_s": 126.7, "streaming_images_per_s": 71.4},
                "onnx": {"batch_images_per_s": 112.1, "streaming_images_per_s": 91.1}}
    assert faster_runtime(measured, "batch") == "onnx"
    record = tmp_path / "predict.json"
    record.write_text(pd.Series({"choice_figures": figures}).to_json())
    assert choose_runtime("auto", record, "single") == "onnx"
    assert choose_runtime("auto", tmp_path / "absent.json", "single") == "torch"
    assert choose_runtime("torch", record, "single") == "torch"  # asked for by name: no measurement overrides it


def test_shards_cover_the_rows_in_order_and_merge_back_in_order(tmp_path: Path) -> None:
    from catalog_classifier.modeling.batch_prediction import merge_outputs, parse_row_range, plan_shards
    from catalog_classifier.ops.exits import InputError

    assert plan_shards(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert parse_row_range("4:8") == (4, 8) and parse_row_range("8:") == (8, None)
    for bad in ("8:4", "x:2", "5", "-1:3"):
        with pytest.raises(InputError, match="expected START:STOP"):
            parse_row_range(bad)
    header = "image,label,confidence,top3,needs_review,prediction_set,error\n"
    parts = [tmp_path / "0.csv", tmp_path / "1.csv"]
    parts[0].write_text(header + "a.png,x,0.9,x:0.9,False,x,\nb.png,,,,True,,missing file\n")
    parts[1].write_text(header + "c.png,y,0.5,y:0.5,True,y|x,\n")
    assert merge_outputs(parts, tmp_path / "all.csv") == 3
    assert (tmp_path / "all.csv").read_text() == header + ("a.png,x,0.9,x:0.9,False,x,\nb.png,,,,True,,missing file\n"
                                                           "c.png,y,0.5,y:0.5,True,y|x,\n")
    rows = [row.name for row in read_inputs([tmp_path / "rows.csv"], (1, 3)).rows()] if (
        (tmp_path / "rows.csv").write_text("image\np.png\nq.png\nr.png\ns.png\n")) else []
    assert rows == ["q.png", "r.png"]
