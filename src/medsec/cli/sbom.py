"""``medsec sbom``: SBOMs per release in the server database (SM-3); runs on the server host."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medsec.cli.output import console, emit_json, errors_to_exit, render
from medsec.cli.server import DataDir, DbUrl
from medsec.errors import NotFound

if TYPE_CHECKING:
    from medsec.server.context import ServerContext

app = typer.Typer(help="SBOMs per release: import, quality, export, diff, generate.", no_args_is_help=True)
Json = Annotated[bool, typer.Option("--json", help="machine-readable output")]
ACTOR = "cli"


@contextmanager
def server_context(data_dir: Path, database_url: str | None) -> Iterator[ServerContext]:
    from medsec.server.context import build_context
    from medsec.server.settings import Settings

    ctx = build_context(Settings(data_dir=data_dir, database_url=database_url))
    try:
        yield ctx
    finally:
        ctx.close()


@app.command("import")
def import_(
    product: Annotated[str, typer.Argument(help="product of the release, e.g. infusion-pump")],
    version: Annotated[str, typer.Argument(help="release version")],
    path: Annotated[Path, typer.Argument(help="CycloneDX (JSON/XML) or SPDX 2.3 JSON file")],
    supplier: Annotated[str | None, typer.Option(help="the supplier this SBOM came from (kept apart)")] = None,
    no_match: Annotated[bool, typer.Option("--no-match", help="do not match against stored feeds")] = False,
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Import one SBOM for a release (one transaction) and match its components."""
    from medsec.server.services import findings, sboms

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        doc = sboms.import_sbom_file(
            s, ctx.audit, ACTOR, product=product, version=version, path=path, supplier=supplier
        )
        out = sboms.document_summary(doc)
        if not no_match:
            policy = findings.sla_policy(ctx.settings.sla_notice_days, ctx.settings.sla_fix_days)
            out["match"] = findings.match_release(s, ctx.audit, doc.release, policy=policy, actor=ACTOR).to_dict()
        render(as_json, out, lambda: _print_all([f"{k}: {v}" for k, v in out.items()]))


@app.command("quality")
def quality(path: Path, as_json: Json = False) -> None:
    """NTIA minimum-elements report of an SBOM file."""
    from medsec.sbom import quality_report, read_sbom

    with errors_to_exit(as_json):
        report = quality_report(read_sbom(path)).to_dict()
        render(as_json, report, lambda: _print_quality(report))


def _print_quality(report: dict[str, object]) -> None:
    console.print(f"score: {report['score']}  components: {report['component_count']}")
    for line in report["document_findings"]:  # type: ignore[attr-defined]
        console.print(f"- {line}", highlight=False)


@app.command("export")
def export(
    product: str,
    version: str,
    out: Annotated[Path | None, typer.Option("--out", "-o")] = None,
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
) -> None:
    """CycloneDX 1.6 JSON of a release's merged SBOM."""
    from medsec.server.services import sboms

    with errors_to_exit(), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        release = sboms.find_release(s, product, version)
        if release is None:
            raise NotFound("unknown_release", f"no release {product} {version}")
        text = json.dumps(sboms.export_release(s, release), indent=2, ensure_ascii=False) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")


@app.command("diff")
def diff_cmd(
    product: str,
    old: str,
    new: str,
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Components added, removed and changed between two releases."""
    from medsec.server.services import sboms

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        a, b = sboms.find_release(s, product, old), sboms.find_release(s, product, new)
        if a is None or b is None:
            raise NotFound("unknown_release", "both releases need an SBOM")
        result = sboms.diff_releases(s, a, b).to_dict()
    render(as_json, result, lambda: emit_json(result))


@app.command("generate")
def generate(
    rootfs: Annotated[Path, typer.Argument(help="a device root filesystem")],
    out: Annotated[Path | None, typer.Option("--out", "-o")] = None,
) -> None:
    """CycloneDX 1.6 SBOM from a root filesystem (dpkg status, Python packages, the medsec manifest)."""
    from medsec.sbom import export_cyclonedx, sbom_from_rootfs

    with errors_to_exit():
        text = json.dumps(export_cyclonedx(sbom_from_rootfs(rootfs)), indent=2, ensure_ascii=False) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")


def _print_all(rows: list[Any]) -> None:
    for row in rows:
        console.print(row, highlight=False)
