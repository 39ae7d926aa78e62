"""Loopback unless asked: every service binds 127.0.0.1 by default, and one set to listen elsewhere without
authentication is refused before anything starts (the model server, a lone Prefect server); the team stack's
services all authenticate, so only there is another address accepted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from catalog_classifier.cli import main
from catalog_classifier.ops.exposure import ExposureError, is_loopback, require_loopback_or_auth

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.20", False), ("10.0.0.1", False),
    ("mlflow.internal", False),
])
def test_only_loopback_addresses_count_as_private(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_another_address_needs_authentication() -> None:
    require_loopback_or_auth("db", "0.0.0.0", "scram-sha-256", "stack.host")  # authenticated: allowed
    with pytest.raises(ExposureError, match=r"the box would listen on 0.0.0.0 \(x.host\), reachable from other "
                                            r"machines, and it has no authentication: refused, nothing started"):
        require_loopback_or_auth("the box", "0.0.0.0", None, "x.host")


def test_the_defaults_are_loopback() -> None:
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["stack"]["host"] == "127.0.0.1" and params["orchestration"]["server_host"] == "127.0.0.1"


def test_every_listening_service_of_the_stack_authenticates_so_another_address_may_be_set(tmp_path: Path) -> None:
    from catalog_classifier.config.layout import Project
    from catalog_classifier.infra.composition import StackPlan

    project = Project.load(REPO / "params.yaml", {"stack.host": "0.0.0.0", "orchestration.server_host": "10.1.2.3",
                                                  "stack.dir": str(tmp_path / "stack")})
    plan = StackPlan.from_params(project.params, project.root)
    assert {name: plan.authentication(name) for name in ("postgres", "mlflow", "prefect-server")} == {
        "postgres": "scram-sha-256 password (0600 file)", "mlflow": "MLflow basic-auth app",
        "prefect-server": "Prefect API auth string"}
    plan.check_exposure()  # allowed: each of them refuses anonymous clients
    assert plan.command("mlflow")[2:4] == ["--app-name", "basic-auth"]


def test_serve_on_a_public_address_is_refused_before_loading_anything(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["serve", "--host", "0.0.0.0", "--params", str(REPO / "params.yaml"), "--set",
                   "mlflow.tracking_uri=sqlite:////nonexistent/never/created.db"])
    assert status == 2
    assert "the model server would listen on 0.0.0.0 (serve --host)" in capsys.readouterr().err
    assert not Path("/nonexistent").exists()


def test_the_prefect_server_flow_refuses_a_public_address(monkeypatch: pytest.MonkeyPatch) -> None:
    from catalog_classifier.config.layout import Project
    from flows.retrain import start_server

    def never(*args: object) -> None:
        raise AssertionError("the server was started")

    monkeypatch.setattr(os, "execv", never)
    params = Project.load(REPO / "params.yaml", {"orchestration.server_host": "0.0.0.0"}).params
    with pytest.raises(ExposureError, match="the Prefect server would listen on 0.0.0.0"):
        start_server(params.orchestration)
