"""The project's own PostgreSQL cluster (infra/postgres.py): databases, URLs, restart, and a clear error when down."""

from __future__ import annotations

import time

import pytest
import sqlalchemy

from catalog_classifier.infra.postgres import PostgresCluster, PostgresError


def test_create_database_is_idempotent_and_reachable_with_its_url(postgres: PostgresCluster) -> None:
    url = postgres.create_database("pg_smoke")
    assert postgres.create_database("pg_smoke") == url
    assert url.startswith(f"postgresql://catalog:{postgres.password()}@127.0.0.1:{postgres.port}/pg_smoke")
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection:
        assert connection.execute(sqlalchemy.text("SELECT current_user, current_database()")).one() == (
            "catalog", "pg_smoke")
    engine.dispose()
    assert postgres.psql("SELECT count(*) FROM pg_database WHERE datname = 'pg_smoke'").strip() == "1"


def test_password_is_required_over_tcp(postgres: PostgresCluster) -> None:
    wrong = postgres.url("postgres").replace(postgres.password(), "not-the-password")
    engine = sqlalchemy.create_engine(wrong)
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed"):
        engine.connect()
    engine.dispose()


def test_start_twice_is_harmless_and_data_survives_a_restart(postgres: PostgresCluster) -> None:
    postgres.create_database("pg_restart")
    postgres.psql("CREATE TABLE IF NOT EXISTS kept (value int); INSERT INTO kept VALUES (7)", "pg_restart")
    postgres.start()
    postgres.stop()
    assert not postgres.running()
    started = time.monotonic()
    with pytest.raises(PostgresError, match="psql failed"):
        postgres.psql("SELECT 1")
    assert time.monotonic() - started < 5
    postgres.start()
    assert postgres.running()
    assert postgres.psql("SELECT sum(value) FROM kept", "pg_restart").strip() == "7"


def test_uninitialised_cluster_says_so(tmp_path) -> None:
    with pytest.raises(PostgresError, match="no cluster initialised"):
        PostgresCluster(tmp_path / "nowhere", 1).password()
