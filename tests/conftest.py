"""Shared fixtures: a fresh database (SQLite, and PostgreSQL when configured), a seeded server
context, and a real uvicorn server on a loopback port."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from medsec.server.app import create_app
from medsec.server.context import ServerContext, build_context, init_keys
from medsec.server.migrate import upgrade
from medsec.server.seed import Seed, SeedPasswords, seed
from medsec.server.settings import Settings

PG_ENV = "MEDSEC_TEST_DATABASE_URL"

# The requirement traceability matrix and its gate (--traceability-gate, see docs/traceability.md).
pytest_plugins = ["plugins.traceability"]


def _postgres_admin_url() -> str | None:
    url = os.environ.get(PG_ENV)
    if not url:
        return None
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[tuple[str, str] | None]:
    """A migrated PostgreSQL database that each test clones (CREATE DATABASE ... TEMPLATE)."""
    admin_url = _postgres_admin_url()
    if admin_url is None:
        yield None
        return
    name = f"medsec_tpl_{secrets.token_hex(6)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        upgrade(make_url(admin_url).set(database=name).render_as_string(hide_password=False))
        yield admin_url, name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database that each test copies, as PostgreSQL tests clone theirs."""
    path = tmp_path_factory.mktemp("sqlite-template") / "medsec.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite_template: Path,
    postgres_template: tuple[str, str] | None,
) -> Iterator[str]:
    """A database at the newest schema: a SQLite file, or a PostgreSQL clone dropped afterwards."""
    if request.param == "sqlite":
        path = tmp_path / "medsec.db"
        # The backup API copies a consistent database whatever journal mode the template was left in.
        with (
            contextlib.closing(sqlite3.connect(sqlite_template)) as src,
            contextlib.closing(sqlite3.connect(path)) as dst,
        ):
            src.backup(dst)
        yield f"sqlite:///{path}"
        return
    if postgres_template is None:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (CI sets it; .ci/run starts PostgreSQL)")
    admin_url, template = postgres_template
    name = f"medsec_t_{secrets.token_hex(6)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    data_dir = tmp_path / "data"
    s = Settings(
        data_dir=data_dir, database_url=database_url, log_origin="test.medsec.local/audit", checkin_interval_seconds=1
    )
    init_keys(s)
    return s


@pytest.fixture
def ctx(settings: Settings) -> Iterator[ServerContext]:
    context = build_context(settings)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture(scope="session")
def seed_passwords() -> SeedPasswords:
    """The seed users' passwords, argon2-hashed once per session rather than once per database."""
    return SeedPasswords.generate()


@pytest.fixture
def seeded(ctx: ServerContext, seed_passwords: SeedPasswords) -> Seed:
    return seed(ctx, passwords=seed_passwords)


@dataclass
class LiveServer:
    url: str
    ctx: ServerContext
    seed: Seed


def _serve(ctx: ServerContext) -> Iterator[str]:
    app = create_app(ctx.settings, context=ctx)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def live_server(ctx: ServerContext, seeded: Seed) -> Iterator[LiveServer]:
    """The real server (uvicorn on a loopback port) over a seeded database."""
    for url in _serve(ctx):
        yield LiveServer(url=url, ctx=ctx, seed=seeded)
