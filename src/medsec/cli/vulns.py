"""``medsec vulns``: findings, triage (VEX) and rules on the server database (SM-3)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from medsec.cli.output import console, errors_to_exit, render
from medsec.cli.sbom import Json, server_context
from medsec.cli.server import DataDir, DbUrl

app = typer.Typer(help="Findings, triage as VEX, and triage rules.", no_args_is_help=True)


def _psirt(s: object, username: str) -> object:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from medsec.errors import NotFound
    from medsec.server.models import User
    from medsec.server.principal import Principal

    assert isinstance(s, Session)
    user = s.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound("unknown_user", f"no user {username!r}")
    return Principal.of(user, mfa_verified=True)


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option()] = None,
    vulnerability: Annotated[str | None, typer.Option()] = None,
    all_: Annotated[bool, typer.Option("--all", help="include inactive findings")] = False,
    as_user: Annotated[str, typer.Option("--as", help="user whose view is listed")] = "",
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Findings by priority, with SLA state and triage status."""
    from medsec.server.models import OrgKind
    from medsec.server.principal import Principal
    from medsec.server.services import findings

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        actor = _psirt(s, as_user) if as_user else Principal(0, "cli", 0, OrgKind.MANUFACTURER, frozenset(), True)
        assert isinstance(actor, Principal)
        rows = [
            findings.finding_summary(f)
            for f in findings.list_findings(
                s, actor, active=None if all_ else True, status=status, vulnerability=vulnerability
            )
        ]

    def human() -> None:
        for r in rows:
            console.print(
                f"{r['id']:>5} {r['priority']['tier']:8} {r['vulnerability']:18} {r['component']['name']} "
                f"{r['component']['version'] or ''} [{r['release']['version']}] {r['triage_status']} "
                f"sla={r['sla']['state'] or '-'}",
                highlight=False,
            )

    render(as_json, rows, human)


@app.command("show")
def show(
    finding_id: str, data_dir: DataDir = Path("./medsec-data"), database_url: DbUrl = None, as_json: Json = False
) -> None:
    """One finding with its history and decisions."""
    from medsec.server.models import OrgKind
    from medsec.server.principal import Principal
    from medsec.server.services import findings, triage

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        actor = Principal(0, "cli", 0, OrgKind.MANUFACTURER, frozenset(), True)
        f = findings.get_finding(s, actor, finding_id)
        out = findings.finding_summary(f)
        out["history"] = [
            {"at": e.at.isoformat(), "kind": e.kind, "actor": e.actor, "details": e.details}
            for e in findings.finding_history(s, f)
        ]
        out["decisions"] = [triage.decision_summary(d) for d in triage.decisions(s, f)]
    render(as_json, out, lambda: console.print(out, highlight=False))


@app.command("triage")
def triage_cmd(
    finding_id: str,
    status: Annotated[str, typer.Option(help="affected, not_affected, fixed, under_investigation")],
    as_user: Annotated[str, typer.Option("--as", help="the PSIRT user deciding (recorded in the audit log)")],
    justification: Annotated[str | None, typer.Option()] = None,
    response: Annotated[list[str] | None, typer.Option()] = None,
    impact: Annotated[str | None, typer.Option("--impact-statement")] = None,
    safety: Annotated[str | None, typer.Option("--patient-safety-impact")] = None,
    exploitability: Annotated[str | None, typer.Option()] = None,
    controls: Annotated[str | None, typer.Option("--compensating-controls")] = None,
    rule: Annotated[bool, typer.Option("--rule", help="carry the decision to other releases")] = False,
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Record a VEX decision on a finding (PSIRT role required)."""
    from medsec.server.principal import Principal
    from medsec.server.services import findings, triage

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        actor = _psirt(s, as_user)
        assert isinstance(actor, Principal)
        f = findings.get_finding(s, actor, finding_id)
        decision = triage.parse_decision(
            {
                "status": status,
                "justification": justification,
                "response": response or [],
                "impact_statement": impact,
                "patient_safety_impact": safety,
                "exploitability": exploitability,
                "compensating_controls": controls,
            }
        )
        out = triage.decision_summary(triage.triage(s, ctx.audit, actor, f, decision, make_rule=rule))
    render(as_json, out, lambda: console.print(out, highlight=False))


@app.command("rules")
def rules(
    as_user: Annotated[str, typer.Option("--as")],
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Triage rules that carry decisions across releases."""
    from medsec.server.principal import Principal
    from medsec.server.services import triage

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        actor = _psirt(s, as_user)
        assert isinstance(actor, Principal)
        rows = [triage.rule_summary(r) for r in triage.list_rules(s, actor)]
    render(as_json, rows, lambda: _print_all(rows))


def _print_all(rows: list[Any]) -> None:
    for row in rows:
        console.print(row, highlight=False)
