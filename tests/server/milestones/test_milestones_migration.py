"""The 0008 migration on SQLite and PostgreSQL: it matches the models, and goes down and up on its own branch."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from medsec.server import models_milestones
from medsec.server.db import Base, make_engine
from medsec.server.migrate import downgrade, upgrade
from support.migrations import model_diffs

pytestmark = pytest.mark.req("SM-4")
TABLES = {"product_documents", "milestones", "milestone_documents", "milestone_deliveries"}


def test_migration_matches_the_models(database_url: str) -> None:
    assert models_milestones.Milestone.__tablename__ in Base.metadata.tables
    assert model_diffs(database_url, TABLES) == []


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
