"""``medsec advisories``: the PSIRT OpenPGP key and CSAF publication from triage (SM-2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medsec.cli.output import console, errors_to_exit, render
from medsec.cli.sbom import Json, server_context
from medsec.cli.server import DataDir, DbUrl
from medsec.cli.vulns import _psirt

app = typer.Typer(help="CSAF advisories: PSIRT key, publication, listing.", no_args_is_help=True)


@app.command("init-key")
def init_key(
    uid: Annotated[str, typer.Option(help='e.g. "ACME PSIRT <psirt@example.com>"')],
    data_dir: DataDir = Path("./medsec-data"),
    as_json: Json = False,
) -> None:
    """Create the PSIRT OpenPGP signing key (gpg) in <data-dir>/keys/psirt."""
    from medsec.server.services import advisory_publishing
    from medsec.server.settings import Settings

    with errors_to_exit(as_json):
        key = advisory_publishing.init_psirt_key(Settings(data_dir=data_dir), uid)
        out = {"fingerprint": key.fingerprint}
        render(as_json, out, lambda: console.print(out, highlight=False))


@app.command("publish")
def publish(
    findings_: Annotated[list[int], typer.Option("--finding", help="finding ids to state")],
    title_en: Annotated[str, typer.Option()],
    title_ja: Annotated[str, typer.Option()],
    summary_en: Annotated[str, typer.Option()],
    summary_ja: Annotated[str, typer.Option()],
    as_user: Annotated[str, typer.Option("--as")],
    category: Annotated[str, typer.Option()] = "csaf_vex",
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Build the CSAF document (en + ja) from triage, sign it and publish it on the provider tree."""
    from medsec.server.principal import Principal
    from medsec.server.services import advisory_publishing

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        actor = _psirt(s, as_user)
        assert isinstance(actor, Principal)
        rows = advisory_publishing.publish_from_triage(
            s,
            ctx.audit,
            ctx.settings,
            actor,
            advisory_publishing.AdvisoryRequest(category, tuple(findings_), title_en, title_ja, summary_en, summary_ja),
        )
        out = [advisory_publishing.advisory_summary(r) for r in rows]
    render(as_json, out, lambda: _print_all(out))


@app.command("list")
def list_(data_dir: DataDir = Path("./medsec-data"), database_url: DbUrl = None, as_json: Json = False) -> None:
    """Published advisories."""
    from medsec.server.models import OrgKind
    from medsec.server.principal import Principal
    from medsec.server.services import advisory_publishing

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        actor = Principal(0, "cli", 0, OrgKind.MANUFACTURER, frozenset(), True)
        out = [advisory_publishing.advisory_summary(a) for a in advisory_publishing.visible_advisories(s, actor)]
    render(as_json, out, lambda: _print_all(out))


def _print_all(rows: list[Any]) -> None:
    for row in rows:
        console.print(row, highlight=False)
