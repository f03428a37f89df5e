"""``medsec server``: initialise, bootstrap and run the manufacturer server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medsec.cli.output import console, emit_json, errors_to_exit
from medsec.errors import UserInputError

app = typer.Typer(help="The manufacturer server (API, hospital portal, audit log).", no_args_is_help=True)

DataDir = Annotated[
    Path, typer.Option("--data-dir", envvar="MEDSEC_DATA_DIR", help="keys, SQLite database, static trees")
]
DbUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url", envvar="MEDSEC_DATABASE_URL", help="SQLAlchemy URL (default: SQLite in the data dir)"
    ),
]


@app.command("init")
def init(
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create the data directory and the server's keys, and migrate the database to the newest schema."""
    from medsec.server.context import build_context, init_keys
    from medsec.server.migrate import upgrade
    from medsec.server.settings import Settings

    with errors_to_exit(as_json):
        settings = Settings(data_dir=data_dir, database_url=database_url)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        init_keys(settings)
        upgrade(settings.effective_database_url())
        ctx = build_context(settings)
        try:
            info = {
                "data_dir": str(settings.data_dir),
                "database": ctx.engine.dialect.name,
                "log_key": ctx.audit.vkey,
                "witness_key": ctx.witness_vkey,
            }
        finally:
            ctx.close()
        if as_json:
            emit_json(info)
        else:
            for k, v in info.items():
                console.print(f"{k}: {v}", highlight=False)


@app.command("bootstrap")
def bootstrap(
    manufacturer_slug: Annotated[str, typer.Option(help="short id of your company, e.g. acme-medical")],
    manufacturer_name: Annotated[str, typer.Option(help="company name")],
    admin: Annotated[str, typer.Option(help="username of the first manufacturer admin")],
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create the manufacturer organisation and its first admin (asks for the password; prints the TOTP secret)."""
    from medsec.server import credentials
    from medsec.server.context import build_context
    from medsec.server.models import OrgKind, Role
    from medsec.server.services import accounts
    from medsec.server.settings import Settings

    with errors_to_exit(as_json):
        password = typer.prompt("password for " + admin, hide_input=True, confirmation_prompt=True)
        ctx = build_context(Settings(data_dir=data_dir, database_url=database_url))
        try:
            with ctx.tx() as session:
                org = accounts.create_organization(
                    session, ctx.audit, None, kind=OrgKind.MANUFACTURER, slug=manufacturer_slug, name=manufacturer_name
                )
                user = accounts.create_user(
                    session,
                    ctx.audit,
                    None,
                    org=org,
                    username=admin,
                    display_name=admin,
                    password=password,
                    roles={Role.MANUFACTURER_ADMIN},
                )
                secret = accounts.begin_totp_enrollment(user)
        finally:
            ctx.close()
        info = {"organization": manufacturer_slug, "admin": admin, "totp_uri": credentials.totp_uri(secret, admin)}
        if as_json:
            emit_json(info)
        else:
            console.print(f"created {manufacturer_slug} and admin {admin}.")
            console.print(
                "Add this to an authenticator app, then log in; the first login confirms it:", highlight=False
            )
            console.print(info["totp_uri"], highlight=False)


@app.command("run")
def run(
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the API and the portal with uvicorn."""
    import os

    import uvicorn

    if workers < 1:
        raise UserInputError("--workers must be at least 1")
    os.environ["MEDSEC_DATA_DIR"] = str(data_dir)
    if database_url:
        os.environ["MEDSEC_DATABASE_URL"] = database_url
    with errors_to_exit():
        uvicorn.run("medsec.server.asgi:app", factory=True, host=host, port=port, workers=workers, log_level="info")
