"""The 0009 migration on SQLite and PostgreSQL: it matches the models and goes down and up on its own (RA-2)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from medsec.server.db import Base, make_engine
from medsec.server.migrate import downgrade, upgrade

pytestmark = pytest.mark.req("RA-2")
TABLES = {"remote_device_uploads", "remote_device_entries"}


def _names(diff: object) -> set[str]:
    names: set[str] = set()
    for item in diff if isinstance(diff, list) else [diff]:
        for part in item if isinstance(item, tuple) else (item,):
            table = getattr(part, "table", None)
            name = getattr(table, "name", None) or getattr(part, "name", None)
            if isinstance(name, str):
                names.add(name)
            if isinstance(part, str):
                names.add(part)
    return names


def test_migration_matches_the_models(database_url: str) -> None:
    assert set(Base.metadata.tables) >= TABLES
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert [d for d in diffs if _names(d) & TABLES] == []


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
