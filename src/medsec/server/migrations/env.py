"""Alembic environment: migrations for SQLite and PostgreSQL from the same scripts."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context

from medsec.server import (  # noqa: F401 (registers every feature area's tables)
    models,
    models_milestones,
    models_protect,
    models_remote,
    models_reports,
    models_updates,
    models_vulns,
)
from medsec.server.db import Base, make_engine

config = context.config
target_metadata = Base.metadata


def render_item(type_: str, obj: Any, _autogen_context: Any) -> str | Literal[False]:
    """Render our column types as plain SQLAlchemy ones, so migrations never import app code."""
    if type_ == "type" and isinstance(obj, models.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                render_item=render_item,
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
