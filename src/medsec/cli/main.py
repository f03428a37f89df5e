"""Entry point of the ``medsec`` command."""

from __future__ import annotations

import typer

from medsec import __version__
from medsec.cli import advisories, audit, campaign, feeds, keys, lifecycle, release, sbom, server, vulns, witness
from medsec.cli.agent import agent
from medsec.cli.demo import demo, totp_code
from medsec.cli.gateway import gateway
from medsec.cli.maintenance import app as maintenance_app
from medsec.cli.milestones import app as milestones_app
from medsec.cli.protect import app as protect_app
from medsec.cli.reports import app as reports_app
from medsec.cli.trace import app as trace_app

app = typer.Typer(
    name="medsec",
    help="medsec: cybersecurity lifecycle for medical devices (server, portal, agent, audit logs).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(server.app, name="server")
app.add_typer(audit.app, name="audit")
app.add_typer(witness.app, name="witness")
app.add_typer(keys.app, name="keys")
app.add_typer(release.app, name="release")
app.add_typer(release.repo_app, name="repo")
app.add_typer(campaign.app, name="campaign")
app.add_typer(sbom.app, name="sbom")
app.add_typer(feeds.app, name="feeds")
app.add_typer(vulns.app, name="vulns")
app.add_typer(advisories.app, name="advisories")
app.add_typer(lifecycle.app, name="lifecycle")
app.add_typer(trace_app, name="trace")
app.add_typer(milestones_app, name="milestones")
app.add_typer(maintenance_app, name="maintenance")
app.add_typer(protect_app, name="protect")
app.add_typer(reports_app, name="report")
app.command("gateway")(gateway)
app.command("agent")(agent)
app.command("demo")(demo)
app.command("totp-code")(totp_code)


@app.command("version")
def version() -> None:
    """Print the medsec version."""
    typer.echo(__version__)


def main(argv: list[str] | None = None) -> None:
    app(args=argv, prog_name="medsec")
