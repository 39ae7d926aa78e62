"""``catalog-classifier serve --engine ray``: the champion on Ray Serve, started for real on loopback once for this
file. Concurrent clients get exactly the answers single requests get (and the evaluate stage's labels); every
limit answers with its name and value; overload sheds with 503 + Retry-After; health and readiness name the
version; a promotion then a rollback under traffic drop no request (blue/green inside the replica)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_MODELS
from PIL import Image
from registry_helpers import cli_args, eval_f1, eval_predictions, promote, split_images
from server_helpers import free_port, wait_until_answers

from catalog_classifier.infra.services import stop_tree, tree

pytestmark = pytest.mark.slow

NAME = "serve-engine"
STARTUP_TIMEOUT_S = 600
MAX_ROWS = 4
MAX_IN_FLIGHT = 3
MAX_BODY_BYTES = 3_000_000
RELOAD_POLL_S = 1


class Server:
    def __init__(self, port: int, process: subprocess.Popen, log: Path, max_pixels: int, model: str,
                 better: str) -> None:
        self.port, self.process, self.log, self.max_pixels = port, process, log, max_pixels
        self.model, self.better = model, better  # v1 serves the weaker tiny model; the better one is promoted later

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
             ) -> tuple[int, dict[str, str], Any]:
        connection = self.connection()
        try:
            connection.request(method, path, body=body, headers={"Content-Type": "application/json",
                                                                  **(headers or {})})
            answer = connection.getresponse()
            raw = answer.read()
            headers = {k.lower(): v for k, v in answer.getheaders()}
            try:
                return answer.status, headers, json.loads(raw or b"null")
            except ValueError:  # Ray's own answers (router backpressure, no replica yet) are plain text
                return answer.status, headers, raw.decode(errors="replace")
        finally:
            connection.close()


def encode(paths: list[Path]) -> bytes:
    return json.dumps({"dataframe_records": [{"image": base64.b64encode(path.read_bytes()).decode("ascii")}
                                             for path in paths]}).encode()


def invoke_until_answered(server: Server, body: bytes) -> tuple[int, dict[str, str], Any]:
    """POST, honouring 503 + Retry-After as a well-behaved client does; the first other answer."""
    for _ in range(200):
        status, headers, payload = server.call("POST", "/invocations", body)
        if status != 503:
            return status, headers, payload
        # Ray's router may also answer 503 while a replica starts (after a champion move): retry all the same.
        time.sleep(float(headers.get("retry-after", "1")) / 10)
    raise AssertionError("still 503 after 200 tries")


@pytest.fixture(scope="module")
def served(tiny_pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    project = tiny_pipeline
    worse, better = sorted(TINY_MODELS, key=lambda model: eval_f1(project, model))
    assert eval_f1(project, better) - eval_f1(project, worse) >= 0.01, "tiny models scored alike: change seeds"
    report = promote(project, NAME, tmp_path_factory.mktemp("serve-engine") / "promotion.json", "--model", worse)
    assert report["promote"]
    images = split_images(project)[:8]
    max_pixels = 0
    for path in images:
        with Image.open(path) as image:
            max_pixels = max(max_pixels, image.size[0] * image.size[1])
    port = free_port()
    log = tmp_path_factory.mktemp("serve-engine-log") / "server.log"
    settings = {"serve__max_rows": MAX_ROWS, "serve__max_in_flight": MAX_IN_FLIGHT,
                "serve__max_body_bytes": MAX_BODY_BYTES, "serve__max_pixels": max_pixels,
                "serve__reload_poll_s": RELOAD_POLL_S, "serve__retry_after_s": 1,
                # The runtime `auto` picks on this machine kind (ONNX Runtime on the version's model.onnx).
                "batch_predict__runtime": "onnx"}
    command = [sys.executable, "-m", "catalog_classifier", "serve", "--engine", "ray", "--port", str(port),
               *cli_args(project, NAME, **settings)]
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=project, env=environment, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/ready", process, log, STARTUP_TIMEOUT_S, interval_s=1)
        yield Server(port, process, log, max_pixels, worse, better)
    finally:
        started = tree(process.pid)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)  # the server shuts Ray Serve and its cluster down itself
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
        for pid in started:  # whatever of Ray did not stop with it
            stop_tree(pid, 10)


def test_concurrent_clients_get_the_single_request_answers(served: Server, tiny_pipeline: Path) -> None:
    images = split_images(tiny_pipeline)[:8]
    expected_labels = eval_predictions(tiny_pipeline, served.model).set_index("image")["pred_label"]
    single = {}
    for path in images:
        status, headers, payload = invoke_until_answered(served, encode([path]))
        assert status == 200 and headers["x-model-version"] == "1" and payload["model_version"] == "1"
        single[path.name] = payload["predictions"][0]
        # The served answer is the evaluate stage's, image for image.
        assert single[path.name]["label"] == expected_labels[path.name]
        assert set(single[path.name]) == {"label", "confidence", "top3", "needs_review", "error"}

    # 8 clients at once, each sending requests of 1 to 4 images in its own order: batches mix requests.
    requests = [[images[(client + k) % len(images)] for k in range(1 + client % MAX_ROWS)]
                for client in range(8) for _ in range(3)]
    answers: list[tuple[list[Path], int, Any]] = []
    lock = threading.Lock()

    def send(group: list[Path]) -> None:
        status, _, payload = invoke_until_answered(served, encode(group))
        with lock:
            answers.append((group, status, payload))

    threads = [threading.Thread(target=send, args=(group,)) for group in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert len(answers) == len(requests)
    for group, status, payload in answers:
        assert status == 200
        assert len(payload["predictions"]) == len(group)
        for path, row in zip(group, payload["predictions"], strict=True):
            reference = single[path.name]
            assert (row["label"], row["needs_review"], row["error"]) == (
                reference["label"], reference["needs_review"], reference["error"])
            assert [label for label, _ in parse(row["top3"])] == [label for label, _ in parse(reference["top3"])]
            # A forward pass in a batch of another size may differ in the last bf16 bits, nothing more.
            assert row["confidence"] == pytest.approx(reference["confidence"], abs=2e-3)


def parse(top3: str) -> list[tuple[str, float]]:
    from catalog_classifier.modeling.prediction import parse_top3

    return parse_top3(top3)


def test_each_limit_answers_with_its_name_and_value(served: Server, tiny_pipeline: Path) -> None:
    images = split_images(tiny_pipeline)[:MAX_ROWS + 1]
    status, _, payload = served.call("POST", "/invocations", encode(images))
    assert (status, payload["error"]) == (413, f"{MAX_ROWS + 1} rows exceed serve.max_rows {MAX_ROWS}")

    big = b'{"dataframe_records": [{"image": "' + b"A" * MAX_BODY_BYTES + b'"}]}'
    status, _, payload = served.call("POST", "/invocations", big)
    assert (status, payload["error"]) == (413, f"body of {len(big)} bytes exceeds serve.max_body_bytes "
                                               f"{MAX_BODY_BYTES}")

    # One pixel over the cap (a blank PNG, tiny on the wire) is that row's error; the other rows are answered.
    side = int(served.max_pixels ** 0.5) + 1
    oversized = Path(served.log.parent / "oversized.png")
    Image.new("RGB", (side, side), "white").save(oversized)
    status, _, payload = served.call("POST", "/invocations", encode([images[0], oversized]))
    assert status == 200
    first, second = payload["predictions"]
    assert first["error"] == "" and first["label"]
    assert second == {"label": "", "confidence": None, "top3": "", "needs_review": True,
                      "error": f"image of {side}x{side} = {side * side} pixels exceeds serve.max_pixels "
                               f"{served.max_pixels}"}

    status, _, payload = served.call("POST", "/invocations", b'{"dataframe_records": [{"image": "not base64!"}]}')
    assert status == 200 and payload["predictions"][0]["error"] == "not valid base64"
    status, _, payload = served.call("POST", "/invocations", b"{oops")
    assert status == 400 and payload["error"].startswith("the body is not JSON")


def test_overload_is_shed_with_503_and_retry_after(served: Server, tiny_pipeline: Path) -> None:
    body = encode(split_images(tiny_pipeline)[:MAX_ROWS])
    results: list[tuple[int, dict[str, str], Any]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def send() -> None:
        barrier.wait()
        result = served.call("POST", "/invocations", body)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=send) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    statuses = sorted(status for status, _, _ in results)
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1
    shed = [(headers, payload) for status, headers, payload in results if status == 503]
    assert shed, f"16 simultaneous requests never exceeded serve.max_in_flight {MAX_IN_FLIGHT}: {statuses}"
    # Every 503 says when to come back; the replica's own (JSON) name the limit. Past max_in_flight + 8 requests
    # Ray's router queue answers first, in plain text, with the same Retry-After.
    assert all(headers.get("retry-after") == "1" for headers, _ in shed), [headers for headers, _ in shed]
    ours = [payload["error"] for _, payload in shed if isinstance(payload, dict)]
    assert ours
    assert all(error.endswith(f"requests in flight reach serve.max_in_flight {MAX_IN_FLIGHT}; retry after 1 s")
               for error in ours)


def test_health_and_readiness_report_the_served_version(served: Server) -> None:
    status, headers, payload = served.call("GET", "/health")
    assert (status, payload, headers["x-model-version"]) == (200, {"status": "ok", "model_version": "1"}, "1")
    status, _, payload = served.call("GET", "/ready")
    assert status == 200 and payload["ready"] is True and payload["model_version"] == "1"
    assert payload["runtime"] == "onnx"
    assert payload["limits"]["max_rows"] == MAX_ROWS and payload["limits"]["max_in_flight"] == MAX_IN_FLIGHT
    assert payload["batched_images"] >= payload["batches"] >= 1


def test_an_image_whose_deadline_passed_is_never_computed(served: Server, tiny_pipeline: Path) -> None:
    """The batch step drops images of requests already answered 504: they cost no forward pass."""
    import mlflow

    from catalog_classifier.data.images import load_rgb
    from catalog_classifier.endpoint.batching import BatchModel, QueuedImage
    from catalog_classifier.registry.artifact import load_champion

    uri = f"sqlite:///{tiny_pipeline}/mlruns/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = BatchModel(load_champion(f"models:/{NAME}/1")[0])
    path = split_images(tiny_pipeline)[0]
    pixels = model.preprocess(load_rgb(path))
    now = 1000.0
    rows = model.forward([QueuedImage(pixels, deadline=now - 0.001), QueuedImage(pixels, deadline=now + 1)], now=now)
    assert rows[0] is None
    status, _, payload = invoke_until_answered(served, encode([path]))
    assert rows[1]["label"] == payload["predictions"][0]["label"]
    assert model.forward([QueuedImage(pixels, deadline=now)], now=now) == [None]  # at the deadline: too late


# Last in this file: it moves the champion (and leaves it on v1 again).
def test_a_promotion_then_a_rollback_under_traffic_drop_no_request_and_each_answer_names_its_version(
        served: Server, tiny_pipeline: Path, tmp_path: Path) -> None:
    from registry_helpers import cli

    images = split_images(tiny_pipeline)[:8]
    labels = {version: eval_predictions(tiny_pipeline, model).set_index("image")["pred_label"]
              for version, model in (("1", served.model), ("2", served.better))}
    answers: list[tuple[int, str, str, str]] = []  # status, version header, image, label
    stop = threading.Event()

    def client() -> None:  # one client sending without a pause, as a listing tool would
        index = 0
        while not stop.is_set():
            path = images[index % len(images)]
            status, headers, payload = served.call("POST", "/invocations", encode([path]))
            label = payload["predictions"][0]["label"] if status == 200 else str(payload)
            answers.append((status, headers.get("x-model-version", ""), path.name, label))
            index += 1

    def wait_for_version(version: str, timeout_s: float) -> float:
        started = time.monotonic()
        seen = len(answers)
        while not any(answer[1] == version for answer in answers[seen:]):
            assert time.monotonic() - started < timeout_s, f"v{version} not served after {timeout_s}s: {answers[-3:]}"
            time.sleep(0.2)
        return time.monotonic() - started

    sender = threading.Thread(target=client)
    sender.start()
    try:
        time.sleep(2)
        report = promote(tiny_pipeline, NAME, tmp_path / "promotion.json", "--model", served.better, min_delta=0.0)
        assert report["promote"] and report["version"] == "2", report["reason"]
        to_new = wait_for_version("2", 120)
        time.sleep(2)
        assert cli(["rollback", *cli_args(tiny_pipeline, NAME)]) == 0
        to_old = wait_for_version("1", 120)
        time.sleep(2)
    finally:
        stop.set()
        sender.join(timeout=120)
    assert [answer for answer in answers if answer[0] != 200] == []  # not one request dropped or refused
    versions = [answer[1] for answer in answers]
    changes = [later for earlier, later in zip(versions, versions[1:], strict=False) if later != earlier]
    assert versions[0] == "1" and changes == ["2", "1"], changes  # 1 ... 2 ... 1: no flapping between them
    # Each answer is its version's model's (the evaluate stage's label for that image).
    assert all(label == labels[version][image] for _, version, image, label in answers)
    print(f"switch to v2 seen after {to_new:.1f}s, back to v1 after {to_old:.1f}s; {len(answers)} requests, all 200")
