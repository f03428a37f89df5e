"""``medsec witness``: an independent party that cosigns a log's checkpoints after checking consistency.

A hospital, an auditor or a second manufacturer site can run it. It keeps the last
tree head it cosigned per log, so a log that is rolled back or forked (two views
of history) is refused instead of cosigned (C2SP tlog-cosignature; RA-2).
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer

from medsec.atomic_file import atomic_write
from medsec.auditlog.checkpoint import verify_checkpoint
from medsec.auditlog.witness import FileWitnessState, Witness
from medsec.cli.output import console, emit_json, errors_to_exit
from medsec.crypto.keys import SigningKey
from medsec.errors import ConfigError, UserInputError

app = typer.Typer(help="Run a witness that cosigns audit-log checkpoints.", no_args_is_help=True)

StateDir = Annotated[Path, typer.Option("--state", help="the witness's folder (key and state)")]
KEY_FILE = "witness.key"
CONFIG_FILE = "witness.json"
HEADS_FILE = "heads.json"


def load_witness(state: Path) -> Witness:
    try:
        config = json.loads((state / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{state / CONFIG_FILE} is missing or damaged; run 'medsec witness init' first") from e
    return Witness(str(config["name"]), SigningKey.load(state / KEY_FILE), FileWitnessState(state / HEADS_FILE))


def init_witness(state: Path, name: str) -> Witness:
    if (state / KEY_FILE).exists():
        raise UserInputError(f"{state} already holds a witness key")
    SigningKey.generate().save(state / KEY_FILE)
    atomic_write(state / CONFIG_FILE, json.dumps({"name": name}).encode() + b"\n")
    return load_witness(state)


def cosign_once(witness: Witness, server: str, log_key: str, *, http: httpx.Client | None = None) -> dict[str, object]:
    """Fetch the server's checkpoint with a consistency proof from our last head, cosign it, send it back."""
    client = http or httpx.Client(timeout=30)
    try:
        first = client.get(f"{server.rstrip('/')}/api/v1/audit/checkpoint")
        first.raise_for_status()
        origin = verify_checkpoint(first.json()["note"], log_key).origin
        head = witness.state.latest(origin)
        params = {"from_size": head.size} if head is not None and head.size > 0 else {}
        r = client.get(f"{server.rstrip('/')}/api/v1/audit/checkpoint", params=params)
        r.raise_for_status()
        body = r.json()
        proof = [base64.b64decode(p) for p in body.get("consistency_proof") or []]
        cosigned = witness.cosign(body["note"], log_key, proof, int(time.time()))
        posted = client.post(f"{server.rstrip('/')}/api/v1/audit/cosignatures", json={"note": cosigned})
        if posted.status_code != 200:
            raise UserInputError(
                f"the server did not store the cosignature ({posted.status_code}): {posted.text[:300]}"
            )
        return {"origin": origin, "size": verify_checkpoint(cosigned, log_key).size, "note": cosigned}
    except httpx.HTTPError as e:
        raise UserInputError(f"cannot talk to {server}: {e}") from e
    finally:
        if http is None:
            client.close()


@app.command("init")
def init(
    state: StateDir,
    name: Annotated[str, typer.Option(help="the witness's key name, e.g. witness.sakura-hospital.example")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create the witness key; give the printed verifier key to the log operator (MEDSEC_WITNESS_KEYS)."""
    with errors_to_exit(as_json):
        witness = init_witness(state, name)
        if as_json:
            emit_json({"name": name, "vkey": witness.vkey})
        else:
            console.print(witness.vkey, highlight=False)


@app.command("cosign")
def cosign(
    state: StateDir,
    server: Annotated[str, typer.Option(help="the medsec server URL")],
    log_key: Annotated[str, typer.Option("--log-key", help="the log's verifier key, obtained out of band")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Cosign the server's current checkpoint if it is consistent with everything cosigned before."""
    with errors_to_exit(as_json):
        result = cosign_once(load_witness(state), server, log_key)
        if as_json:
            emit_json(result)
        else:
            console.print(f"cosigned {result['origin']} at size {result['size']}", highlight=False)
