"""``medsec campaign``: staged rollouts through the server API (create, approve, start, pause, resume, status)."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from medsec.cli.output import console, errors_to_exit, render
from medsec.errors import UserInputError

app = typer.Typer(help="Staged rollout campaigns (two-person approval before start).", no_args_is_help=True)

Server = Annotated[
    str, typer.Option("--server", envvar="MEDSEC_SERVER", help="server URL, e.g. https://medsec.example")
]
Token = Annotated[str, typer.Option("--token", envvar="MEDSEC_TOKEN", help="API token (or MEDSEC_TOKEN)")]
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output")]
CampaignId = Annotated[int, typer.Argument(help="campaign number")]


class CampaignApiError(UserInputError):
    """The server refused a campaign request."""


def _call(server: str, token: str, method: str, path: str, body: Any = None) -> Any:
    url = server.rstrip("/") + path
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(timeout=30, follow_redirects=False) as c:
            r = c.request(method, url, json=body, headers=headers)
    except httpx.HTTPError as e:
        raise CampaignApiError(f"cannot reach {url}: {e}") from e
    try:
        data = r.json()
    except ValueError:
        data = {"error": "http_error", "detail": r.text[:300]}
    if r.status_code >= 400:
        raise CampaignApiError(f"{method} {path}: HTTP {r.status_code} {data.get('error')}: {data.get('detail')}")
    return data


def _show(campaign: dict[str, Any]) -> None:
    c = campaign
    console.print(
        f"[bold]campaign {c['id']}[/] {c['name']}: {c['product']} {c['version']} "
        f"(counter {c['release_counter']}) — [bold]{c['status']}[/], group {c['current_group'] + 1} of "
        f"{len(c['groups'])} {c['groups']}, success ≥ {c['success_threshold']}%, errors stop at "
        f"{c['error_threshold']}%",
        highlight=False,
    )
    if c.get("stop_reason"):
        console.print(f"stopped: {c['stop_reason']}", highlight=False)
    if c.get("devices"):
        table = Table(title="devices")
        for col in ("serial", "hospital", "group", "state", "reason", "history"):
            table.add_column(col, overflow="fold")
        for d in c["devices"]:
            history = " → ".join(h["state"] for h in d["history"])
            table.add_row(d["serial"], d["hospital"], str(d["group"] + 1), d["state"], d["reason"] or "", history)
        console.print(table)


def _parse_group(text: str) -> int | str:
    return int(text) if text.isdigit() else text


@app.command("create")
def create(
    server: Server,
    token: Token,
    name: Annotated[str, typer.Option("--name", help="what people will see")],
    product: Annotated[str, typer.Option("--product")],
    version: Annotated[str, typer.Option("--version", help="the published release to roll out")],
    group: Annotated[
        list[str] | None, typer.Option("--group", help='cascading group: a count, "10%" or "rest" (repeat, in order)')
    ] = None,
    hospital: Annotated[list[str] | None, typer.Option("--hospital", help="hospital slug (repeat)")] = None,
    site: Annotated[list[str] | None, typer.Option("--site", help="site name (repeat)")] = None,
    hardware_id: Annotated[list[str] | None, typer.Option("--hardware-id", help="device model (repeat)")] = None,
    from_version: Annotated[list[str] | None, typer.Option("--from-version", help="current version (repeat)")] = None,
    success_threshold: Annotated[int, typer.Option(help="% of a group committed before the next starts")] = 100,
    error_threshold: Annotated[int, typer.Option(help="% of offered devices failed that stops the campaign")] = 10,
    as_json: AsJson = False,
) -> None:
    """Create a campaign (it waits for a second person's approval)."""
    with errors_to_exit(as_json):
        body = {
            "name": name,
            "product": product,
            "version": version,
            "groups": [_parse_group(g) for g in (group or ["rest"])],
            "selection": {
                "hospitals": hospital or [],
                "sites": site or [],
                "hardware_ids": hardware_id or [],
                "from_versions": from_version or [],
            },
            "success_threshold": success_threshold,
            "error_threshold": error_threshold,
        }
        data = _call(server, token, "POST", "/api/v1/campaigns", body)
        render(as_json, data, lambda: _show(data))


def _action(action: str, help_text: str) -> None:
    def command(server: Server, token: Token, campaign_id: CampaignId, as_json: AsJson = False) -> None:
        with errors_to_exit(as_json):
            data = _call(server, token, "POST", f"/api/v1/campaigns/{campaign_id}/{action}")
            render(as_json, data, lambda: _show(data))

    command.__doc__ = help_text
    app.command(action)(command)


_action("approve", "Approve a campaign created by someone else (two-person rule).")
_action("start", "Start an approved campaign.")
_action("pause", "Pause a running campaign (devices already offered carry on).")
_action("resume", "Resume a paused campaign.")
_action("cancel", "Cancel a campaign (installs in progress finish; nothing new is offered).")


@app.command("status")
def status(
    server: Server,
    token: Token,
    campaign_id: Annotated[int | None, typer.Argument(help="campaign number; all campaigns when omitted")] = None,
    as_json: AsJson = False,
) -> None:
    """Show one campaign with its per-device history, or list all campaigns."""
    with errors_to_exit(as_json):
        if campaign_id is None:
            rows = _call(server, token, "GET", "/api/v1/campaigns")

            def human() -> None:
                table = Table(title="campaigns")
                for col in ("id", "name", "release", "status", "group", "devices"):
                    table.add_column(col)
                for c in rows:
                    counts = ", ".join(f"{k} {v}" for k, v in sorted(c["counts"].items()))
                    table.add_row(
                        str(c["id"]),
                        c["name"],
                        f"{c['product']} {c['version']}",
                        c["status"],
                        f"{c['current_group'] + 1}/{len(c['groups'])}",
                        counts,
                    )
                console.print(table)

            render(as_json, rows, human)
            return
        data = _call(server, token, "GET", f"/api/v1/campaigns/{campaign_id}")
        render(as_json, data, lambda: _show(data))
