"""``medsec demo`` (what ``make run`` starts) and ``medsec totp-code`` for its logins."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from medsec.cli.output import console, emit_json, errors_to_exit
from medsec.errors import UserInputError

DemoDir = Annotated[Path, typer.Option("--data-dir", help="the demo's data directory")]


def _announce(info: dict[str, Any], data_dir: Path) -> None:
    console.rule("[bold]medsec demo")
    console.print(
        f"Portal and API: [bold]{info['url']}[/]   (Ctrl-C stops the server and the devices)", highlight=False
    )
    console.print("[yellow]Demo data and throwaway demo keys: never use them for real devices.[/]")
    table = Table(title="Demo logins", show_lines=False)
    for col in ("username", "password", "organisation", "roles", "2FA"):
        table.add_column(col, overflow="fold")
    for u in info["users"]:
        table.add_row(
            u["username"], u["password"], u["organization"], ", ".join(u["roles"]), "TOTP" if u["totp_secret"] else "-"
        )
    console.print(table)
    console.print(
        f"One-time codes for TOTP logins: [bold].venv/bin/medsec totp-code USERNAME --data-dir {data_dir}[/]",
        highlight=False,
    )
    console.print(
        f"Simulated devices: {', '.join(d['serial'] for d in info['devices'])} (logs in each device root's agent.log)"
    )
    console.print(f"Logins, an admin API token and the log keys are in {data_dir / 'demo.json'}", highlight=False)
    if info.get("update_tour"):
        console.rule("[bold]Update tour")
        console.print(info["update_tour"], highlight=False, markup=False, soft_wrap=True)


def demo(
    data_dir: DemoDir = Path("./demo-data"),
    host: Annotated[str, typer.Option(help="address to serve on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to serve on")] = 8000,
    checkin_interval: Annotated[int, typer.Option(help="seconds between device check-ins")] = 10,
) -> None:
    """Start the demo: server, portal and three simulated devices on SQLite."""
    import logging

    from medsec.demo import DemoOptions, run

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with errors_to_exit():
        options = DemoOptions(data_dir=data_dir, host=host, port=port, checkin_interval_seconds=checkin_interval)
        run(options, announce=lambda info: _announce(info, data_dir))


def totp_code(
    username: Annotated[str, typer.Argument(help="a demo username")],
    data_dir: DemoDir = Path("./demo-data"),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print the current one-time code of a demo user (the demo's stand-in for an authenticator app)."""
    from medsec.server import credentials

    with errors_to_exit(as_json):
        path = data_dir / "demo.json"
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise UserInputError(f"cannot read {path}: {e.strerror}; start the demo with 'make run' first") from e
        user = next((u for u in info["users"] if u["username"] == username), None)
        if user is None:
            raise UserInputError(f"{username!r} is not a demo user")
        if not user["totp_secret"]:
            raise UserInputError(f"{username!r} logs in without a second factor")
        code = credentials.totp_now(user["totp_secret"])
        if as_json:
            emit_json({"username": username, "code": code})
        else:
            typer.echo(code)
