"""The 0009 migration on SQLite and PostgreSQL: it matches the models and goes down and up on its own (RA-2)."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from medsec.server.db import Base, make_engine
from medsec.server.migrate import downgrade, upgrade
from support.migrations import model_diffs

pytestmark = pytest.mark.req("RA-2")
TABLES = {"remote_device_uploads", "remote_device_entries"}


def test_migration_matches_the_models(database_url: str) -> None:
    assert set(Base.metadata.tables) >= TABLES
    assert model_diffs(database_url, TABLES) == []


def test_branch_goes_down_and_up_alone(database_url: str) -> None:
    downgrade(database_url, "0009@-1")
    engine = make_engine(database_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert not tables & TABLES
        assert "remote_sessions" in tables
        upgrade(database_url)
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()
