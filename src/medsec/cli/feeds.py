"""``medsec feeds``: vulnerability and lifecycle feeds into the server database, offline first (SM-3, SM-4)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

from medsec.cli.output import console, emit_json, errors_to_exit, render
from medsec.cli.sbom import ACTOR, Json, server_context
from medsec.cli.server import DataDir, DbUrl
from medsec.errors import UserInputError

app = typer.Typer(help="Vulnerability feeds: import, signed offline bundles, status, sync.", no_args_is_help=True)
MAX_DOWNLOAD = 1024 * 1024 * 1024


def _progress(as_json: bool) -> Progress:
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), disable=as_json
    )


def _import_and_rematch(ctx: object, feed: str, path: Path, as_json: bool) -> dict[str, object]:
    from medsec.server.context import ServerContext
    from medsec.server.services import feeds, findings

    assert isinstance(ctx, ServerContext)
    with _progress(as_json) as bar, ctx.tx() as s:
        task = bar.add_task(f"{feed}: {path.name}", total=None)
        result = feeds.import_feed(s, ctx.audit, ACTOR, feed, path, progress=lambda n: bar.advance(task, n))
        policy = findings.sla_policy(ctx.settings.sla_notice_days, ctx.settings.sla_fix_days)
        match = findings.rematch_after_import(s, ctx.audit, result.delta, policy=policy, actor=ACTOR)
    return {**result.to_dict(), "rematch": match.to_dict()}


@app.command("import")
def import_(
    feed: Annotated[str, typer.Argument(help="osv, nvd, kev, epss or endoflife")],
    path: Annotated[Path, typer.Argument(help="file, folder or OSV all.zip")],
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Import one feed in one transaction, then re-match only what changed."""
    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx:
        out = _import_and_rematch(ctx, feed, path, as_json)
        render(as_json, out, lambda: console.print(out, highlight=False))


@app.command("bundle")
def bundle(
    out: Annotated[Path, typer.Argument(help="the .tar bundle to write")],
    key: Annotated[Path, typer.Option(help="Ed25519 signing key (medsec keys format)")],
    osv: Annotated[list[Path] | None, typer.Option(help="OSV file/folder/all.zip")] = None,
    nvd: Annotated[list[Path] | None, typer.Option()] = None,
    kev: Annotated[list[Path] | None, typer.Option()] = None,
    epss: Annotated[list[Path] | None, typer.Option()] = None,
    endoflife: Annotated[list[Path] | None, typer.Option()] = None,
    as_json: Json = False,
) -> None:
    """Pack feed files into a signed offline bundle for air-gapped sites."""
    from medsec.crypto.keys import SigningKey
    from medsec.server.services import feeds

    with errors_to_exit(as_json):
        files = [
            (name, p)
            for name, paths in (("osv", osv), ("nvd", nvd), ("kev", kev), ("epss", epss), ("endoflife", endoflife))
            for p in paths or []
        ]
        if not files:
            raise UserInputError("name at least one feed file (--osv, --nvd, --kev, --epss, --endoflife)")
        manifest = feeds.write_bundle(out, files, SigningKey.load(key))
        summary = {
            "bundle": str(out),
            "files": len(manifest["files"]),
            "verify_key": SigningKey.load(key).verify_key.to_base64(),
        }
        render(as_json, summary, lambda: console.print(summary, highlight=False))


@app.command("import-bundle")
def import_bundle(
    path: Path,
    trust_key: Annotated[list[str] | None, typer.Option(help="base64 Ed25519 key trusted to sign bundles")] = None,
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Verify a signed bundle, then import all its feeds in one transaction."""
    from medsec.crypto.keys import VerifyKey
    from medsec.server.services import feeds, findings

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx:
        keys = [VerifyKey.from_base64(k) for k in [*(trust_key or []), *ctx.settings.feed_bundle_keys]]
        with _progress(as_json) as bar, ctx.tx() as s:
            task = bar.add_task(path.name, total=None)
            results = feeds.import_bundle(s, ctx.audit, ACTOR, path, keys, progress=lambda n: bar.advance(task, n))
            changed = [i for r in results for i in r.delta]
            policy = findings.sla_policy(ctx.settings.sla_notice_days, ctx.settings.sla_fix_days)
            match = findings.rematch_after_import(s, ctx.audit, changed, policy=policy, actor=ACTOR)
        out = {"imports": [r.to_dict() for r in results], "rematch": match.to_dict()}
        render(as_json, out, lambda: console.print(out, highlight=False))


@app.command("status")
def status(data_dir: DataDir = Path("./medsec-data"), database_url: DbUrl = None, as_json: Json = False) -> None:
    """Last import and record count per feed; stale feeds are flagged."""
    from medsec.server.services import feeds

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx, ctx.tx() as s:
        rows = feeds.feed_status(s, ctx.settings.feed_stale_days)

    def human() -> None:
        for r in rows:
            flag = "[bold red]STALE[/]" if r["stale"] else "ok"
            console.print(f"{r['feed']:10} {r['records']:>8}  {r['last_import'] or 'never'}  {flag}")

    render(as_json, rows, human)


@app.command("sync")
def sync(
    only: Annotated[list[str] | None, typer.Option(help="feed names from MEDSEC_FEED_URLS to sync")] = None,
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Download the configured feed URLs (bounded) into the data dir, then import them."""
    from medsec.server.services import feeds

    with errors_to_exit(as_json), server_context(data_dir, database_url) as ctx:
        results = []
        for name, url in sorted(ctx.settings.feed_urls.items()):
            if only and name not in only:
                continue
            feed = feeds.guess_feed(name)
            target = ctx.settings.data_dir / "feeds" / name / Path(urllib.parse.urlsplit(url).path).name
            _download(url, target)
            results.append({"name": name, **_import_and_rematch(ctx, feed, target, as_json)})
        render(as_json, results, lambda: emit_json(results))


def _download(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        target.write_bytes(Path(parts.path).read_bytes())
        return
    if parts.scheme != "https":
        raise UserInputError(f"{url}: only https:// and file:// feed URLs are used")
    tmp = target.with_suffix(target.suffix + ".part")
    received = 0
    with httpx.stream("GET", url, timeout=60, follow_redirects=True) as r, tmp.open("wb") as f:
        r.raise_for_status()
        for chunk in r.iter_bytes():
            received += len(chunk)
            if received > MAX_DOWNLOAD:
                raise UserInputError(f"{url}: larger than {MAX_DOWNLOAD} bytes")
            f.write(chunk)
    tmp.replace(target)
