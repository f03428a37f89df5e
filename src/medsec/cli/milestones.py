"""``medsec milestones``: lifecycle milestone packages for hospitals (SM-2, SM-4; handbook 表2).

Works on the server's database like the other server-side commands; ``--as`` names the person acting, whose
roles and organisation decide what they may see and do (recorded in the audit log).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import Progress

from medsec.cli.output import console, errors_to_exit, render
from medsec.cli.sbom import Json, server_context
from medsec.cli.server import DataDir, DbUrl
from medsec.errors import NotFound, UserInputError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from medsec.server.principal import Principal

app = typer.Typer(
    help="Milestone document packages (release, EOL, EOS) delivered to and acknowledged by hospitals.",
    no_args_is_help=True,
)
AsUser = Annotated[str, typer.Option("--as", help="the user acting (their roles apply; recorded in the audit log)")]


def _user(s: Session, username: str) -> Principal:
    from sqlalchemy import select

    from medsec.server.models import User
    from medsec.server.principal import Principal

    user = s.scalar(select(User).where(User.username == username, User.is_active.is_(True)))
    if user is None:
        raise NotFound("unknown_user", f"no active user {username!r}")
    return Principal.of(user, mfa_verified=True)


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _print_summary(m: dict[str, Any]) -> None:
    state = "complete" if m["complete"] else "[yellow]incomplete[/]"
    console.print(f"[bold]#{m['id']} {m['product']} {m['version']} {m['kind']}[/] ({state})  {m['package_sha256']}")
    for d in m["documents"]:
        if d["available"]:
            console.print(f"  {d['kind']:<17} {d['filename']}  {d['sha256']}", highlight=False)
        else:
            label = "manual document needed" if d["manual"] else "missing"
            console.print(f"  {d['kind']:<17} [yellow]{label}[/]: {d['missing_reason']}", highlight=False)
    for d in m.get("deliveries", []):
        who = (
            f" by {d['acknowledged_name']} ({d['acknowledged_by']}) at {d['acknowledged_at']}"
            if d["acknowledged_at"]
            else ""
        )
        console.print(f"  -> {d['hospital']:<20} {d['status']}{who}", highlight=False)
    if m.get("delivery"):
        console.print(f"  your hospital: {m['delivery']['status']}", highlight=False)


def _print_all(rows: list[dict[str, Any]]) -> None:
    for m in rows:
        _print_summary(m)
    if not rows:
        console.print("no milestone packages")


@app.command("list")
def list_(
    as_user: AsUser,
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Milestone packages visible to the user, newest first, with their delivery state."""
    from medsec.server.services import milestones

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        actor = _user(s, as_user)
        out = [milestones.summary(m, actor) for m in milestones.visible_milestones(s, actor)]
    render(as_json, out, lambda: _print_all(out))


@app.command("show")
def show(
    milestone_id: Annotated[int, typer.Argument(help="milestone number")],
    as_user: AsUser,
    save: Annotated[Path | None, typer.Option(help="folder to save the available documents into")] = None,
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """One milestone: documents with SHA-256, and which hospitals received and acknowledged it."""
    from medsec.atomic_file import atomic_write
    from medsec.server.services import milestones

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        actor = _user(s, as_user)
        m = milestones.get_milestone(s, actor, milestone_id)
        if save is not None:
            for doc in [d for d in m.documents if d.content is not None]:
                opened = milestones.open_document(s, actor, m, doc.kind)
                atomic_write(save / opened.filename, opened.content or b"")
        out = milestones.summary(m, actor)
    render(as_json, out, lambda: _print_summary(out))


@app.command("create")
def create(
    as_user: AsUser,
    product: Annotated[str | None, typer.Argument(help="product of the release")] = None,
    version: Annotated[str | None, typer.Argument(help="release version")] = None,
    kind: Annotated[str, typer.Option(help="release, eol or eos")] = "release",
    due: Annotated[
        bool, typer.Option("--due", help="assemble every milestone whose moment has come (published, EOL/EOS reached)")
    ] = False,
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Assemble (or complete) a milestone package and deliver it to every hospital with the product."""
    from medsec.server.services import milestones, sboms

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        actor = _user(s, as_user)
        if due:
            if product or version:
                raise UserInputError("give either PRODUCT VERSION or --due, not both")
            work = milestones.due_milestones(s, _today())
        else:
            if not product or not version:
                raise UserInputError("give PRODUCT VERSION (or --due)")
            release = sboms.find_release(s, product, version)
            if release is None:
                raise NotFound("unknown_release", f"no release {product} {version}")
            work = [(release, milestones.parse_milestone_kind(kind))]
        out = []
        with Progress(console=console, transient=True, disable=as_json or len(work) < 2) as progress:
            task = progress.add_task("assembling milestone packages", total=len(work))
            for release, milestone_kind in work:
                row = milestones.assemble(s, ctx.audit, actor, release, milestone_kind, today=_today())
                out.append(milestones.summary(row, actor))
                progress.advance(task)
    render(as_json, out if due else out[0], lambda: _print_all(out))


@app.command("acknowledge")
def acknowledge(
    milestone_id: Annotated[int, typer.Argument(help="milestone number")],
    as_user: AsUser,
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Acknowledge receipt for the user's hospital (hospital responsible person or admin)."""
    from medsec.server.services import milestones

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        actor = _user(s, as_user)
        m = milestones.get_milestone(s, actor, milestone_id)
        milestones.acknowledge(s, ctx.audit, actor, m)
        out = milestones.summary(m, actor)
    render(as_json, out, lambda: _print_summary(out))


@app.command("document")
def document(
    product: Annotated[str, typer.Argument(help="product, e.g. infusion-pump")],
    kind: Annotated[str, typer.Argument(help="security_policy or maintenance_plan")],
    as_user: AsUser,
    en: Annotated[Path | None, typer.Option(help="English text file (Markdown)")] = None,
    ja: Annotated[Path | None, typer.Option(help="Japanese text file (Markdown)")] = None,
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Set a product's security policy or maintenance plan (both --en and --ja), or show it (neither)."""
    from medsec.server.services import milestones

    with errors_to_exit(as_json):
        if (en is None) != (ja is None):
            raise UserInputError("give both --en and --ja, or neither to show the stored text")
        texts = [_read_text(p) for p in (en, ja) if p is not None]
        with server_context(data_dir, database_url) as ctx, ctx.tx() as s:
            actor = _user(s, as_user)
            if texts:
                row = milestones.set_product_document(
                    s, ctx.audit, actor, product=product, kind=kind, text_en=texts[0], text_ja=texts[1]
                )
                out = milestones.product_document_summary(row)
            else:
                found = [d for d in milestones.product_documents(s, actor, product) if d.kind == kind]
                if not found:
                    raise NotFound("unknown_document", f"no {kind} stored for {product}: manual document needed")
                out = milestones.product_document_summary(found[0])
    render(as_json, out, lambda: console.print(out, highlight=False))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserInputError(f"cannot read {path}: {e}") from e
