"""The 0008 migration on SQLite and PostgreSQL: it matches the models, and goes down and up on its own branch."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from medsec.server import models_milestones
from medsec.server.db import Base, make_engine
from medsec.server.migrate import downgrade, upgrade

pytestmark = pytest.mark.req("SM-4")
TABLES = {"product_documents", "milestones", "milestone_documents", "milestone_deliveries"}


def _diff_names(diff: object) -> set[str]:
    names: set[str] = set()
    items = diff if isinstance(diff, list) else [diff]
    for item in items:
        for part in item if isinstance(item, tuple) else (item,):
            table = getattr(part, "table", None)
            name = getattr(table, "name", None) or getattr(part, "name", None)
            if isinstance(name, str):
                names.add(name)
            if isinstance(part, str):
                names.add(part)
    return names


def test_migration_matches_the_models(database_url: str) -> None:
    assert models_milestones.Milestone.__tablename__ in Base.metadata.tables
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    mine = [d for d in diffs if _diff_names(d) & TABLES]
    assert mine == []


def test_branch_goes_down_and_up_alone(database_url: str) -> None:
    downgrade(database_url, "0008@-1")
    engine = make_engine(database_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert not tables & TABLES
        assert {"releases", "organizations"} <= tables
        upgrade(database_url)
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()
