"""``medsec maintenance``: remote-maintenance sessions through the server API (RA-1, RA-3, RA-5)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from medsec.atomic_file import atomic_write
from medsec.cli.output import console, errors_to_exit, render
from medsec.errors import UserInputError

app = typer.Typer(help="Remote maintenance sessions (hospital approval before work).", no_args_is_help=True)

Server = Annotated[
    str, typer.Option("--server", envvar="MEDSEC_SERVER", help="server URL, e.g. https://medsec.example")
]
Token = Annotated[str, typer.Option("--token", envvar="MEDSEC_TOKEN", help="API token (or MEDSEC_TOKEN)")]
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output")]
SessionOpt = Annotated[str, typer.Option("--session", help="session id (ms-…)")]


class MaintenanceApiError(UserInputError):
    """The server refused a maintenance request."""


def _call(
    server: str,
    token: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    text: bool = False,
    raw: bool = False,
    params: dict[str, str] | None = None,
) -> Any:
    url = server.rstrip("/") + "/api/v1/remote" + path
    try:
        with httpx.Client(timeout=120, follow_redirects=False) as c:
            r = c.request(method, url, json=body, params=params, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as e:
        raise MaintenanceApiError(f"cannot reach {url}: {e}") from e
    if r.status_code >= 400:
        try:
            data = r.json()
        except ValueError:
            data = {"error": "http_error", "detail": r.text[:300]}
        raise MaintenanceApiError(f"{method} {path}: HTTP {r.status_code} {data.get('error')}: {data.get('detail')}")
    if raw:
        return r.content
    return r.text if text else r.json()


def _show(s: dict[str, Any]) -> None:
    flag = " [bold red]EMERGENCY[/]" if s["emergency"] else ""
    console.print(f"[bold]{s['id']}[/] {s['device']} ({s['hospital']}) — [bold]{s['state']}[/]{flag}", highlight=False)
    for label, key in (
        ("engineer", "engineer"),
        ("purpose", "purpose"),
        ("planned work", "planned_work"),
        ("expected impact", "expected_impact"),
        ("downtime (min)", "expected_downtime_minutes"),
        ("rollback", "rollback"),
        ("window", "window_start"),
    ):
        value = s[key] if key != "window_start" else f"{s['window_start']} – {s['window_end']}"
        console.print(f"  {label}: {value}", highlight=False)
    approvers = ", ".join(a["approver"] for a in s["approvals"]) or "—"
    console.print(f"  approvals: {len(s['approvals'])} of {s['approvals_required']} ({approvers})", highlight=False)
    if s.get("report"):
        console.print(f"  report: {s['report']}", highlight=False)
    if s.get("confirmation"):
        c = s["confirmation"]
        console.print(f"  confirmed: {c['outcome']} by {c['by']} at {c['at']}", highlight=False)
    for rec in s.get("recordings", []):
        console.print(f"  recording sha256:{rec['sha256']} (audit entry {rec['audit_index']})", highlight=False)


@app.command("request")
def request(
    server: Server,
    token: Token,
    device: Annotated[str, typer.Option("--device", help="device serial")],
    purpose: Annotated[str, typer.Option("--purpose")],
    planned_work: Annotated[str, typer.Option("--planned-work")],
    expected_impact: Annotated[str, typer.Option("--expected-impact")],
    rollback: Annotated[str, typer.Option("--rollback")],
    downtime: Annotated[int, typer.Option("--downtime", help="expected downtime in minutes")] = 0,
    minutes: Annotated[int, typer.Option("--minutes", help="window length (hospital policy caps it)")] = 240,
    start: Annotated[str | None, typer.Option("--start", help="window start, ISO 8601 (default now)")] = None,
    file_transfer: Annotated[bool, typer.Option("--file-transfer/--no-file-transfer")] = False,
    shell: Annotated[bool, typer.Option("--shell/--no-shell")] = True,
    port: Annotated[list[str] | None, typer.Option("--port", help="NAME=PORT device-local forward (repeat)")] = None,
    emergency: Annotated[bool, typer.Option("--emergency", help="start before approval; approve within 24 h")] = False,
    as_json: AsJson = False,
) -> None:
    """Request a session and explain the planned work to the hospital (RA-5)."""
    with errors_to_exit(as_json):
        ports = []
        for item in port or []:
            name, sep, number = item.partition("=")
            if not sep or not number.isdigit():
                raise UserInputError(f"--port {item!r}: use NAME=PORT")
            ports.append({"name": name, "port": int(number)})
        body: dict[str, Any] = {
            "device": device,
            "purpose": purpose,
            "planned_work": planned_work,
            "expected_impact": expected_impact,
            "expected_downtime_minutes": downtime,
            "rollback": rollback,
            "shell": shell,
            "file_transfer": file_transfer,
            "ports": ports,
            "window_minutes": minutes,
            "emergency": emergency,
        }
        if start:
            body["window_start"] = start
        data = _call(server, token, "POST", "/sessions", body)
        render(as_json, data, lambda: _show(data))


@app.command("show")
def show(server: Server, token: Token, session: SessionOpt, as_json: AsJson = False) -> None:
    """Show one session: plan, approvals, report, confirmation, recordings."""
    with errors_to_exit(as_json):
        data = _call(server, token, "GET", f"/sessions/{session}")
        render(as_json, data, lambda: _show(data))


@app.command("list")
def list_(
    server: Server,
    token: Token,
    state: Annotated[list[str] | None, typer.Option("--state", help="only these states (repeat)")] = None,
    as_json: AsJson = False,
) -> None:
    """List the sessions you may see."""
    with errors_to_exit(as_json):
        query = "".join(f"&state={s}" for s in state or []).lstrip("&")
        rows = _call(server, token, "GET", "/sessions" + (f"?{query}" if query else ""))

        def human() -> None:
            table = Table(title="maintenance sessions")
            for col in ("id", "device", "hospital", "engineer", "state", "window", "approvals"):
                table.add_column(col, overflow="fold")
            for s in rows:
                state_text = s["state"] + (" (emergency)" if s["emergency"] else "")
                table.add_row(
                    s["id"],
                    s["device"],
                    s["hospital"],
                    s["engineer"],
                    state_text,
                    f"{s['window_start']} – {s['window_end']}",
                    f"{len(s['approvals'])}/{s['approvals_required']}",
                )
            console.print(table)

        render(as_json, rows, human)


@app.command("work-report")
def work_report(
    server: Server,
    token: Token,
    session: SessionOpt,
    work_done: Annotated[str, typer.Option("--work-done")],
    results: Annotated[str, typer.Option("--results")],
    verification: Annotated[str, typer.Option("--verification", help="how the result was verified")],
    as_json: AsJson = False,
) -> None:
    """Submit the work report (RA-5); an active session is ended first."""
    with errors_to_exit(as_json):
        body = {"work_done": work_done, "results": results, "verification": verification}
        data = _call(server, token, "POST", f"/sessions/{session}/report", body)
        render(as_json, data, lambda: _show(data))


@app.command("cert")
def cert(
    server: Server,
    token: Token,
    session: SessionOpt,
    key: Annotated[Path, typer.Option("--key", help="your OpenSSH public key, e.g. ~/.ssh/id_ed25519.pub")],
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the -cert.pub file")],
    as_json: AsJson = False,
) -> None:
    """Get a short-lived OpenSSH certificate for an approved session."""
    with errors_to_exit(as_json):
        try:
            public_key = key.expanduser().read_text("utf-8").strip()
        except OSError as e:
            raise UserInputError(f"cannot read {key}: {e}") from e
        text = _call(server, token, "POST", f"/sessions/{session}/certificate", {"public_key": public_key}, text=True)
        atomic_write(output, text.encode("ascii"), mode=0o644)
        data = {"session": session, "certificate": str(output)}
        render(as_json, data, lambda: console.print(f"certificate written to {output}", highlight=False))


@app.command("report")
def service_report(
    session: Annotated[str, typer.Argument(help="session id (ms-…)")],
    server: Server,
    token: Token,
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the file")],
    lang: Annotated[str, typer.Option("--lang", help="ja or en")] = "ja",
    fmt: Annotated[
        str, typer.Option("--format", help="html, pdf, or bundle (the proof for 'medsec audit verify')")
    ] = "pdf",
    as_json: AsJson = False,
) -> None:
    """Download the service report (RA-5, RA-3) or its offline-verifiable proof bundle."""
    with errors_to_exit(as_json):
        if lang not in ("ja", "en"):
            raise UserInputError(f"--lang {lang!r}: use ja or en")
        if fmt not in ("html", "pdf", "bundle"):
            raise UserInputError(f"--format {fmt!r}: use html, pdf or bundle")
        with console.status(f"building the {fmt} report of {session}…", spinner="dots"):
            data = _call(
                server, token, "GET", f"/sessions/{session}/report", params={"format": fmt, "lang": lang}, raw=True
            )
        atomic_write(output, data, mode=0o644)
        digest = hashlib.sha256(data).hexdigest()
        result = {
            "session": session,
            "format": fmt,
            "lang": lang,
            "file": str(output),
            "bytes": len(data),
            "sha256": digest,
        }
        render(
            as_json,
            result,
            lambda: console.print(f"wrote {output} ({len(data)} bytes, sha256 {digest})", highlight=False),
        )
