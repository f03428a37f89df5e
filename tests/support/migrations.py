"""Migration checks shared by the feature branches' tests: what autogenerate still finds between a
migrated database and the models, for the tables a branch owns."""

from __future__ import annotations

from collections.abc import Collection

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from medsec.server.db import Base, make_engine


def _table_names(diff: object) -> set[str]:
    """The tables one autogenerate diff (a tuple, or a list of tuples for column changes) is about."""
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


def model_diffs(database_url: str, tables: Collection[str]) -> list[object]:
    """Every difference between the database and the models that touches one of ``tables``."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    return [d for d in diffs if _table_names(d) & set(tables)]
