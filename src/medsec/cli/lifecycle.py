"""``medsec lifecycle``: end-of-support data, overrides, release plans and notices on the server (SM-4)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medsec.cli.output import console, errors_to_exit, render
from medsec.cli.sbom import Json, server_context
from medsec.cli.server import DataDir, DbUrl
from medsec.errors import NotFound, UserInputError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from medsec.server.models import Release
    from medsec.server.principal import Principal

app = typer.Typer(
    help="End of support: endoflife.date data, overrides with evidence, release plans, CSAF notices.",
    no_args_is_help=True,
)
AsUser = Annotated[str, typer.Option("--as", help="the manufacturer user acting (recorded in the audit log)")]


def _user(s: Session, username: str) -> Principal:
    from sqlalchemy import select

    from medsec.server.models import User
    from medsec.server.principal import Principal

    user = s.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound("unknown_user", f"no user {username!r}")
    return Principal.of(user, mfa_verified=True)


def _release(s: Session, product: str, version: str) -> Release:
    from medsec.server.services import sboms

    release = sboms.find_release(s, product, version)
    if release is None:
        raise NotFound("unknown_release", f"no release {product} {version}")
    return release


def _date(value: str | None, option: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError as e:
        raise UserInputError(f"{option} must be a date like 2027-03-31, not {value!r}") from e


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _print_status(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        console.print(f"[bold]{r['product']} {r['version']}[/]  EOL {r['eol'] or '-'}  EOS {r['eos'] or '-'}")
        for w in r["notice_warnings"]:
            console.print(f"  [yellow]notice:[/] {w}", highlight=False)
        for a in r["alerts"]:
            console.print(f"  [red]alert:[/] {a}", highlight=False)
        for c in r["unsupported_components"]:
            console.print(f"  ends before the release: {c['name']} ({c['end_of_support'] or 'ended'})")
        console.print(f"  legacy plan: {'yes' if r['legacy_plan'] else 'none'}")


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="an endoflife.date products/<name>.md file or a folder of them")],
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Import endoflife.date product data (one transaction)."""
    from medsec.cli.sbom import ACTOR
    from medsec.server.services import feeds

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        out = feeds.import_endoflife(s, ctx.audit, ACTOR, path).to_dict()
    render(as_json, out, lambda: console.print(out, highlight=False))


@app.command("status")
def status(
    product: Annotated[str | None, typer.Argument(help="product; all releases when omitted")] = None,
    version: Annotated[str | None, typer.Argument()] = None,
    lang: Annotated[str, typer.Option(help="en or ja")] = "en",
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """EOL/EOS, alerts due (T-24/12/6 months), IMDRF N70 notice warnings and legacy plans."""
    from sqlalchemy import select

    from medsec.server.models import Release
    from medsec.server.services import lifecycle_plans

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        if product and version:
            releases = [_release(s, product, version)]
        else:
            stmt = select(Release).order_by(Release.product, Release.version)
            releases = list(s.scalars(stmt.where(Release.product == product) if product else stmt))
        out = [lifecycle_plans.release_status(s, r, _today(), lang) for r in releases]
    render(as_json, out, lambda: _print_status(out))


@app.command("override")
def override(
    product: Annotated[str, typer.Argument(help="endoflife.date product, e.g. debian")],
    cycle: Annotated[str, typer.Argument(help="release cycle, e.g. 9")],
    source: Annotated[str, typer.Option("--source", help="evidence: URL or document reference (required)")],
    as_user: AsUser,
    eol: Annotated[str | None, typer.Option(help="ISO date, true or false")] = None,
    eoas: Annotated[str | None, typer.Option(help="end of active support")] = None,
    eoes: Annotated[str | None, typer.Option(help="end of extended support (LTS, ESU)")] = None,
    note: Annotated[str, typer.Option(help="why the feed's date is replaced")] = "",
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Override a product cycle's support dates, with evidence (PSIRT or manufacturer admin)."""
    from medsec.server.models import Role
    from medsec.server.services import lifecycle_plans

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        actor = _user(s, as_user)
        actor.require_role(Role.PSIRT, Role.MANUFACTURER_ADMIN)
        row = lifecycle_plans.add_override(
            s,
            ctx.audit,
            actor.username,
            product=product,
            cycle=cycle,
            evidence_source=source,
            evidence_note=note,
            eol=eol,
            eoas=eoas,
            eoes=eoes,
        )
        out = lifecycle_plans.override_summary(row)
    render(as_json, out, lambda: console.print(out, highlight=False))


@app.command("plan")
def plan(
    product: Annotated[str, typer.Argument()],
    version: Annotated[str, typer.Argument()],
    as_user: AsUser,
    released_on: Annotated[str, typer.Option(help="release day (ISO date)")],
    eol: Annotated[str | None, typer.Option(help="declared EOL; derived from components when omitted")] = None,
    eos: Annotated[str | None, typer.Option(help="declared EOS; derived from components when omitted")] = None,
    notice_date: Annotated[str | None, typer.Option(help="day hospitals are told of EOL/EOS")] = None,
    extended_support: Annotated[
        list[str] | None, typer.Option(help="component name or ref relying on LTS/ESU (repeatable)")
    ] = None,
    legacy_plan: Annotated[
        Path | None, typer.Option(help="JSON file: controls, replacement_path, timeline (see the guide)")
    ] = None,
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Record a release's EOL/EOS dates and, optionally, its legacy plan; prints the resulting status."""
    from medsec.server.models import Role
    from medsec.server.services import lifecycle_plans

    with errors_to_exit(as_json):
        plan_data: dict[str, Any] | None = None
        if legacy_plan is not None:
            try:
                plan_data = json.loads(legacy_plan.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise UserInputError(f"cannot read the legacy plan {legacy_plan}: {e}") from e
            if not isinstance(plan_data, dict):
                raise UserInputError(f"{legacy_plan}: a JSON object with controls, replacement_path, timeline")
        with server_context(data_dir, database_url) as ctx, ctx.tx() as s:
            actor = _user(s, as_user)
            actor.require_role(Role.PSIRT, Role.MANUFACTURER_ADMIN)
            release = _release(s, product, version)
            released = _date(released_on, "--released-on")
            assert released is not None
            lifecycle_plans.set_release_lifecycle(
                s,
                ctx.audit,
                actor.username,
                release,
                released_on=released,
                eol=_date(eol, "--eol"),
                eos=_date(eos, "--eos"),
                notice_date=_date(notice_date, "--notice-date"),
                extended_support=extended_support or [],
            )
            if plan_data is not None:
                lifecycle_plans.save_legacy_plan(
                    s,
                    ctx.audit,
                    actor,
                    release,
                    controls=plan_data.get("controls", []),
                    replacement_path=plan_data.get("replacement_path", {}),
                    timeline=plan_data.get("timeline", []),
                    today=_today(),
                )
            out = lifecycle_plans.release_status(s, release, _today())
    render(as_json, out, lambda: _print_status([out]))


@app.command("notice")
def notice(
    product: Annotated[str, typer.Argument()],
    version: Annotated[str, typer.Argument()],
    as_user: AsUser,
    guidance_en: Annotated[str | None, typer.Option(help="text for hospitals; the legacy plan when omitted")] = None,
    guidance_ja: Annotated[str | None, typer.Option(help="Japanese text; the legacy plan when omitted")] = None,
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Publish the CSAF end-of-support notice (informational advisory, en + ja) for a release (PSIRT)."""
    from medsec.server.services import advisory_publishing, lifecycle_plans

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        rows = lifecycle_plans.publish_eos_notice(
            s,
            ctx.audit,
            ctx.settings,
            _user(s, as_user),
            _release(s, product, version),
            today=_today(),
            guidance_en=guidance_en,
            guidance_ja=guidance_ja,
        )
        out = [advisory_publishing.advisory_summary(r) for r in rows]
    render(as_json, out, lambda: _print_rows(out))


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        console.print(r, highlight=False)
