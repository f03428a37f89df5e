"""``medsec audit``: verify exported logs offline, fetch exports from a server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import httpx
import typer

from medsec.auditlog.export import verify_bundle
from medsec.cli.output import console, errors_to_exit, render
from medsec.errors import ExportError, UserInputError

app = typer.Typer(help="Tamper-evident audit logs: offline verification and export.", no_args_is_help=True)


@app.command("verify")
def verify(
    export_file: Annotated[Path, typer.Argument(help="an export JSON (portal download or 'medsec audit export')")],
    log_key: Annotated[
        str | None, typer.Option("--log-key", help="the log's public verifier key (name+keyid+base64); required")
    ] = None,
    witness_key: Annotated[
        list[str] | None, typer.Option("--witness-key", help="a witness key whose cosignature must be present")
    ] = None,
    device_key: Annotated[
        list[str] | None,
        typer.Option(
            "--device-key",
            help="a device log's verifier key (medsec-device/SERIAL+...) to trust directly for attached device "
            "entries; without it they must be vouched for by verified entries of the server log",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Verify an export with only public keys: signatures, inclusion proofs, cosignatures.

    A service-report bundle also carries the device's own access-log entries; each is checked
    against the device checkpoint the server cosigned (and vouched for in its own log).
    """
    with errors_to_exit(as_json):
        if not log_key:
            raise UserInputError("--log-key is required: verification must not trust a key taken from the export")
        try:
            data = json.loads(export_file.read_text(encoding="utf-8"))
        except OSError as e:
            raise UserInputError(f"cannot read {export_file}: {e.strerror}") from e
        except ValueError as e:
            raise ExportError(f"{export_file} is not JSON: {e}") from e
        bundle = verify_bundle(data, log_key, tuple(witness_key or ()), attached_keys=tuple(device_key or ()))
        summary = bundle.export
        indexes = [i for i, _ in summary.entries]
        result = {
            "ok": True,
            "origin": summary.origin,
            "tree_size": summary.checkpoint.size,
            "root_hash": summary.checkpoint.root_hash.hex(),
            "entries_verified": len(indexes),
            "first_index": indexes[0] if indexes else None,
            "last_index": indexes[-1] if indexes else None,
            "witnesses": list(summary.witnesses),
            "consistent_with_size": summary.previous.size if summary.previous else None,
            "attached_entries_verified": sum(len(a.entries) for a in bundle.attached),
            "attached_logs": [
                {
                    "origin": a.origin,
                    "key": a.key_source,
                    "checkpoint_sizes": [cp.size for cp in a.checkpoints],
                    "entries_verified": len(a.entries),
                }
                for a in bundle.attached
            ],
        }
        render(
            as_json,
            result,
            lambda: console.print(
                f"[bold green]verified[/] {export_file}: "
                + ", ".join(f"{k}={v}" for k, v in result.items() if k != "ok"),
                highlight=False,
            ),
        )


@app.command("export")
def export(
    server: Annotated[str, typer.Option("--server", help="server URL", envvar="MEDSEC_SERVER_URL")],
    token: Annotated[str, typer.Option("--token", help="API token", envvar="MEDSEC_API_TOKEN")],
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the export JSON")],
    start: Annotated[int, typer.Option(help="first entry index")] = 0,
    end: Annotated[int | None, typer.Option(help="one past the last entry index")] = None,
) -> None:
    """Download an offline-verifiable export of the entries your account may see."""
    with errors_to_exit():
        params: dict[str, int] = {"start": start}
        if end is not None:
            params["end"] = end
        try:
            r = httpx.get(
                f"{server.rstrip('/')}/api/v1/audit/export",
                params=params,
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
        except httpx.HTTPError as e:
            raise UserInputError(f"cannot reach {server}: {e}") from e
        if r.status_code != 200:
            raise UserInputError(f"server refused the export ({r.status_code}): {r.text[:300]}")
        output.write_bytes(r.content)
        console.print(f"wrote {output} ({len(r.json().get('entries', []))} entries)")
