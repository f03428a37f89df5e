"""``medsec report``: signed security status reports (RA-6), their offline verification, and the MDS2
disclosure (SM-2, SM-4)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from medsec.atomic_file import atomic_write
from medsec.cli.output import console, errors_to_exit, render
from medsec.cli.sbom import Json, server_context
from medsec.cli.server import DataDir, DbUrl
from medsec.crypto.keys import VerifyKey
from medsec.errors import NotFound, UserInputError

app = typer.Typer(
    help="Signed security status reports for hospitals, their verification, and the MDS2 disclosure.",
    no_args_is_help=True,
)
AsUser = Annotated[str, typer.Option("--as", help="the user asking (recorded in the report and the audit log)")]
Output = Annotated[Path, typer.Option("-o", "--output", help="file to write")]


@contextmanager
def _step(description: str) -> Iterator[None]:
    """A spinner with elapsed time while one long step runs (on stderr, so stdout stays clean)."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, transient=True, console=console, redirect_stdout=False) as progress:
        task = progress.add_task(description, total=1)
        yield
        progress.update(task, completed=1)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserInputError(f"cannot read the {what} {path}: {e.strerror}") from e


def _verify_key(value: str) -> VerifyKey:
    """A key given as base64 text or as a file holding it."""
    text = value.strip()
    candidate = Path(text)
    if len(text) != 44 and candidate.is_file():
        text = _read(candidate, "key file").decode("ascii", "replace").strip()
    return VerifyKey.from_base64(text)


@app.command("status")
def status(
    hospital: Annotated[str, typer.Option("--hospital", help="hospital (organisation slug)")],
    output: Output,
    as_user: AsUser,
    lang: Annotated[str, typer.Option("--lang", help="ja or en")] = "en",
    fmt: Annotated[str, typer.Option("--format", help="pdf, html or json")] = "pdf",
    signature: Annotated[Path | None, typer.Option(help="where to write the signature; default FILE.sig")] = None,
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Generate the hospital's signed security status report from live data, log it, and write it."""
    from sqlalchemy import select

    from medsec.server.models import User
    from medsec.server.principal import Principal
    from medsec.server.services import status_reports

    with errors_to_exit(as_json):
        if fmt not in ("pdf", "html", "json"):
            raise UserInputError(f"--format must be pdf, html or json, not {fmt!r}")
        with server_context(data_dir, database_url) as ctx, ctx.tx() as s:
            user = s.scalar(select(User).where(User.username == as_user))
            if user is None:
                raise NotFound("unknown_user", f"no user {as_user!r}")
            actor = Principal.of(user, mfa_verified=True)
            with _step(f"generating the status report of {hospital}"):
                signer = status_reports.signer_for(ctx.audit, ctx.settings.keys_dir)
                row = status_reports.generate(s, signer, actor, hospital, lang)
            data, _media, _name = status_reports.report_file(row, fmt)
            sig_path = signature or output.with_name(output.name + ".sig")
            atomic_write(output, data)
            atomic_write(sig_path, row.envelope)
            summary = status_reports.report_summary(row, hospital) | {"file": str(output), "signature": str(sig_path)}
    render(
        as_json,
        summary,
        lambda: console.print(
            f"[green]wrote[/] {output} and {sig_path}\n  report {summary['id']}, "
            f"audit entry {summary['audit_index']}, sha256 {summary['sha256'][fmt]}",
            highlight=False,
        ),
    )


@app.command("verify")
def verify(
    file: Annotated[Path, typer.Argument(help="the report: .pdf, .html or .json")],
    signature: Annotated[Path, typer.Option("--signature", help="the report's .sig (DSSE envelope)")],
    key: Annotated[str, typer.Option("--key", help="report-signing public key: base64, or a file holding it")],
    log_key: Annotated[
        str | None, typer.Option("--log-key", help="audit log verifier key: also check the inclusion proof")
    ] = None,
    as_json: Json = False,
) -> None:
    """Verify a report offline: signature, file hash, and (with --log-key) its audit-log inclusion proof."""
    from medsec.reports.signing import kind_of, verify_report

    with errors_to_exit(as_json):
        kind = kind_of(file)
        statement = verify_report(
            _read(file, "report"), kind, _read(signature, "signature"), _verify_key(key), log_vkey=log_key
        )
    out = {
        "ok": True,
        "report_id": statement["report_id"],
        "hospital": statement["hospital"],
        "generated_by": statement["generated_by"],
        "generated_at": statement["generated_at"],
        "file": kind,
        "sha256": statement["files"][kind]["sha256"],
        "audit_entry": statement["audit"]["index"],
        "inclusion_proof_checked": log_key is not None,
    }
    render(
        as_json,
        out,
        lambda: console.print(
            f"[green]OK[/] {file.name} is report {out['report_id']} of {out['hospital']['name']}, "
            f"generated {out['generated_at']} by {out['generated_by']}"
            + (f"; audit entry {out['audit_entry']} is in the signed log" if log_key else ""),
            highlight=False,
        ),
    )


@app.command("key")
def key(
    output: Annotated[Path | None, typer.Option("-o", "--output", help="also write the public key here")] = None,
    data_dir: DataDir = Path("./medsec-data"),
    as_json: Json = False,
) -> None:
    """Print the server's report-signing public key (created beside the other keys if missing)."""
    from medsec.crypto.envelope import key_id
    from medsec.reports.signing import ensure_report_key
    from medsec.server.settings import Settings

    with errors_to_exit(as_json):
        public = ensure_report_key(Settings(data_dir=data_dir).keys_dir).verify_key
        if output is not None:
            atomic_write(output, (public.to_base64() + "\n").encode("ascii"))
    out = {"key": public.to_base64(), "key_id": key_id(public)}
    render(as_json, out, lambda: typer.echo(out["key"]))


@app.command("mds2")
def mds2(
    product: Annotated[str, typer.Option("--product", help="product, e.g. infusion-pump")],
    output: Output,
    version: Annotated[str | None, typer.Option("--version", help="release; the newest when omitted")] = None,
    fmt: Annotated[str, typer.Option("--format", help="xlsx or json")] = "xlsx",
    data_dir: DataDir = Path("./medsec-data"),
    database_url: DbUrl = None,
    as_json: Json = False,
) -> None:
    """Write the MDS2-style disclosure of a model and release (answers from data, the rest marked manual)."""
    from medsec.reports.mds2 import build_mds2, mds2_to_xlsx

    with errors_to_exit(as_json):
        if fmt not in ("xlsx", "json"):
            raise UserInputError(f"--format must be xlsx or json, not {fmt!r}")
        with server_context(data_dir, database_url) as ctx, ctx.tx() as s, _step(f"answering MDS2 for {product}"):
            doc = build_mds2(s, product, version)
        data = mds2_to_xlsx(doc) if fmt == "xlsx" else json.dumps(doc, ensure_ascii=False, indent=2).encode("utf-8")
        atomic_write(output, data)
    out = {"file": str(output), "product": doc["product"], "version": doc["version"], **doc["summary"]}
    render(
        as_json,
        out,
        lambda: console.print(
            f"[green]wrote[/] {output}: {out['answered']} answered from data, "
            f"[yellow]{out['manual']} need a manual answer[/]",
            highlight=False,
        ),
    )
