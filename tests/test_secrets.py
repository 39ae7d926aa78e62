"""Secrets of the team stack: generated into owner-only files, handed to servers and clients through the
environment, never onto a command line, into params, a config file or the ``stack env`` text."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from catalog_classifier.config.layout import Project
from catalog_classifier.infra.composition import SECRETS, StackPlan
from catalog_classifier.infra.secrets import SecretFileError, ensure_secret, read_secret
from catalog_classifier.stages.stack import env_lines

REPO = Path(__file__).resolve().parents[1]


def test_a_secret_is_generated_once_into_an_owner_only_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "one"
    value = ensure_secret(path)
    assert len(value) == 32 and value.replace("-", "").replace("_", "").isalnum()  # 24 random bytes, url-safe
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_secret(path) == value == read_secret(path)
    assert ensure_secret(tmp_path / "secrets" / "two") != value


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "open"
    path.write_text("hunter2\n")
    path.chmod(0o644)
    with pytest.raises(SecretFileError, match=r"mode 0644: a secret file must be readable by its owner only"):
        read_secret(path)


def test_servers_and_clients_get_credentials_from_the_environment_only(tmp_path: Path) -> None:
    project = Project.load(REPO / "params.yaml", {"stack.dir": str(tmp_path / "stack")})
    plan = StackPlan.from_params(project.params, project.root)
    assert "MLFLOW_TRACKING_PASSWORD" not in plan.client_env()  # nothing generated before the stack starts
    # What initdb leaves: the database password file (the servers' environments carry it too).
    plan.cluster().root.mkdir(parents=True)
    plan.cluster().password_file.write_text("pg-password-for-test\n")
    plan.cluster().password_file.chmod(0o600)
    server = plan.service_env("mlflow", {})
    prefect = plan.service_env("prefect-server", {})
    values = {name: plan.secret_file(name).read_text().strip() for name in SECRETS if plan.secret_file(name).exists()}
    assert set(values) == {"mlflow-admin", "mlflow-flask-key", "prefect-api"}
    assert server["MLFLOW_AUTH_ADMIN_PASSWORD"] == values["mlflow-admin"]
    assert server["MLFLOW_FLASK_SERVER_SECRET_KEY"] == values["mlflow-flask-key"]
    assert server["MLFLOW_AUTH_CONFIG_PATH"] == str(plan.auth_config)
    assert prefect["PREFECT_SERVER_API_AUTH_STRING"] == values["prefect-api"]
    import re

    source = server["MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX"]
    assert re.search(source, "mlflow-artifacts:/1/0a1b/artifacts/classifier/0123456789abcdef")
    for bad in ("file:///etc", "/etc/passwd", "mlflow-artifacts:/1/../../etc", "mlflow-artifacts:/x#/../../etc",
                "s3://bucket/x", "runs:/0a1b/model"):
        assert not re.search(source, bad), bad
    plan.secret("mlflow-trainer")
    client = plan.client_env()
    assert client["MLFLOW_TRACKING_USERNAME"] == "trainer"
    assert client["MLFLOW_TRACKING_PASSWORD"] == plan.secret_file("mlflow-trainer").read_text().strip()
    assert client["PREFECT_API_AUTH_STRING"] == values["prefect-api"]
    assert plan.service_env("worker", {})["PREFECT_API_AUTH_STRING"] == values["prefect-api"]
    # No secret on a command line, in MLflow's auth config, in params or in the text `stack env` prints.
    texts = {"commands": " ".join(" ".join(plan.command(name)) for name in ("mlflow", "prefect-server", "worker")),
             "auth config": plan.auth_config_text(), "params": (REPO / "params.yaml").read_text(),
             "stack env": env_lines(plan)}
    every = [*values.values(), client["MLFLOW_TRACKING_PASSWORD"]]
    assert [(where, value) for where, text in texts.items() for value in every if value in text] == []
    assert "default_permission = READ" in plan.auth_config_text()
    assert f'export PREFECT_API_AUTH_STRING="$(cat {plan.secret_file("prefect-api")})"' in texts["stack env"]
