"""``medsec protect engine``: run the execution-allowlisting engine and handle its signed policy.

``run`` decides every exec on one mount in the foreground (Ctrl-C stops it, answering every
pending event first); ``policy sign|verify|lint`` prepare the signed protection policy.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Container, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn

from medsec.atomic_file import atomic_write
from medsec.cli.output import console, emit_json, err_console, errors_to_exit, render
from medsec.crypto.envelope import peek
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import UserInputError
from medsec.protect import policy as policy_mod
from medsec.protect import trustdb
from medsec.protect.engine import Engine
from medsec.protect.events import ProtectionEvent
from medsec.signals import stop_on_signals
from medsec.updates.keys import private_key_is_encrypted

app = typer.Typer(help="The fanotify allowlisting engine: run it on a mount, sign and check its policy.")
policy_app = typer.Typer(help="The signed protection policy: sign, verify, lint.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output")]
Product = Annotated[str, typer.Option("--product", help="this device's product line, e.g. infusion-pump")]
PublicKeys = Annotated[
    list[Path], typer.Option("--key", help="trusted public key (PEM, *.pub.json or base64; repeat for several)")
]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserInputError(f"cannot read the {what} {path}: {e.strerror}") from e


def _verify_keys(paths: Sequence[Path]) -> list[VerifyKey]:
    if not paths:
        raise UserInputError("give at least one trusted --key")
    return [trustdb.read_verify_key(p) for p in paths]


def read_digest_list(data: bytes, source: Path) -> frozenset[bytes]:
    """A trust set from a text file of hex SHA-256 digests, one per line (``#`` starts a comment)."""
    digests: set[bytes] = set()
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        text = raw.split("#", 1)[0].strip().split()
        if not text:
            continue
        value = text[0].lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise UserInputError(f"{source} line {number}: expected 64 hex digits of a SHA-256, got {text[0]!r}")
        digests.add(bytes.fromhex(value))
    return frozenset(digests)


def load_trust(path: Path, keys: Sequence[VerifyKey], product: str, min_counter: int) -> tuple[Container[bytes], int]:
    """A signed trust database (verified) or a plain digest list; returns the set and its size."""
    data = _read(path, "trust set")
    if data.lstrip().startswith(b"{"):
        db = trustdb.load_trustdb(data, keys, product=product, min_counter=min_counter)
        return db, len(db.digests)
    digests = read_digest_list(data, path)
    return digests, len(digests)


def _print_event(event: ProtectionEvent, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(event.to_json(), sort_keys=True) + "\n")
        sys.stdout.flush()
        return
    colour = {"deny": "red", "would_deny": "yellow", "error": "bold red", "learned": "cyan"}.get(event.action, "green")
    who = f"{event.subject.exe} (pid {event.subject.pid})" if event.subject else "-"
    what = event.object.path if event.object else "-"
    detail = f" {event.detail}" if event.detail else ""
    console.print(
        f"{event.time} [{colour}]{event.action}[/] {event.category} {what} by {who} rule={event.rule}{detail}",
        highlight=False,
    )


def _write_learned(engine: Engine, out: Path) -> int:
    learned = engine.learned()
    lines = [f"{f.sha256}  # {f.path}" for f in learned]
    atomic_write(out, ("\n".join(lines) + "\n").encode("utf-8") if lines else b"")
    return len(learned)


@app.command("run")
def run(
    mount: Annotated[Path, typer.Option("--mount", help="the dedicated mount point to protect")],
    trust: Annotated[Path, typer.Option("--trust", help="signed trust database, or a file of hex SHA-256 digests")],
    policy: Annotated[Path, typer.Option("--policy", help="signed protection policy")],
    key: PublicKeys,
    product: Product,
    min_version: Annotated[int, typer.Option("--min-version", help="refuse older policies (rollback)")] = 0,
    min_counter: Annotated[int, typer.Option("--min-counter", help="refuse older trust databases")] = 0,
    learned_out: Annotated[
        Path | None, typer.Option("--learned-out", help="learn mode: write the digests seen here on exit")
    ] = None,
    report_allowed: Annotated[bool, typer.Option("--report-allowed", help="print allowed decisions too")] = False,
    allow_system_mount: Annotated[
        bool,
        typer.Option(
            "--allow-system-mount",
            help="DANGEROUS: permit marking a mount the machine runs from (only on the device being protected)",
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Decide every exec on MOUNT in the foreground, printing events; Ctrl-C stops it."""
    with errors_to_exit(as_json):
        keys = _verify_keys(key)
        parsed = policy_mod.load_policy(_read(policy, "policy"), keys, product=product, min_version=min_version)
        trust_set, size = load_trust(trust, keys, product, min_counter)
        engine = Engine(
            mount,
            parsed,
            trust_set,
            on_event=lambda e: _print_event(e, as_json),
            report_allowed=report_allowed,
            allow_system_mount=allow_system_mount,
        )
        stop = threading.Event()
        with stop_on_signals(stop):
            engine.start()
            try:
                if not as_json:
                    err_console.print(
                        f"protecting {mount} in {parsed.mode} mode ({parsed.failure_mode}, {size} trusted digests); "
                        "Ctrl-C stops",
                        highlight=False,
                    )
                while not stop.wait(0.5):
                    pass
            finally:
                engine.close()
        summary: dict[str, Any] = {"ok": True, "metrics": engine.metrics.snapshot()}
        if learned_out is not None:
            summary["learned"] = _write_learned(engine, learned_out)
        if as_json:
            emit_json(summary)
        else:
            err_console.print(f"stopped; decisions: {summary['metrics']['decisions']}", highlight=False)


def _signing_key(path: Path, passphrase_file: Path | None) -> SigningKey:
    secret = None
    if private_key_is_encrypted(path):
        if passphrase_file is not None:
            secret = _read(passphrase_file, "passphrase file").decode("utf-8").splitlines()[0].encode("utf-8")
        else:
            secret = typer.prompt(f"passphrase for {path}", hide_input=True).encode("utf-8")
    return SigningKey.load(path, secret)


@policy_app.command("sign")
def policy_sign(
    document: Annotated[Path, typer.Argument(help="policy document (JSON), see docs/device-protection.md")],
    key: Annotated[list[Path], typer.Option("--key", help="signing key file (PKCS#8 PEM; repeat for several)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="signed policy to write (atomically)")],
    passphrase_file: Annotated[
        Path | None, typer.Option("--passphrase-file", help="passphrase of encrypted keys, first line")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Check every field of a policy document and sign it."""
    with errors_to_exit(as_json):
        try:
            raw = json.loads(_read(document, "policy document"))
        except json.JSONDecodeError as e:
            raise UserInputError(f"{document} is not JSON: {e}") from e
        if not isinstance(raw, dict):
            raise UserInputError(f"{document} must hold a JSON object")
        parsed = policy_mod.parse_document(raw)
        if not key:
            raise UserInputError("give at least one --key")
        atomic_write(out, parsed.seal([_signing_key(k, passphrase_file) for k in key]))
        result = {"ok": True, "out": str(out), "product": parsed.product, "version": parsed.version}
        render(as_json, result, lambda: console.print(f"signed policy v{parsed.version} -> {out}", highlight=False))


@policy_app.command("verify")
def policy_verify(
    file: Annotated[Path, typer.Argument(help="signed policy")],
    key: PublicKeys,
    product: Product,
    min_version: Annotated[int, typer.Option("--min-version", help="refuse older policies (rollback)")] = 0,
    as_json: AsJson = False,
) -> None:
    """Check signature, product and version as the device does before applying the policy."""
    with errors_to_exit(as_json):
        parsed = policy_mod.load_policy(
            _read(file, "policy"), _verify_keys(key), product=product, min_version=min_version
        )
        result = {"ok": True, **parsed.to_document()}
        render(as_json, result, lambda: console.print(f"[green]verified[/] {parsed!r}", highlight=False))


@policy_app.command("lint")
def policy_lint(
    file: Annotated[Path, typer.Argument(help="policy (signed or a plain JSON document; not verified)")],
    trust: Annotated[
        Path | None, typer.Option("--trust", help="trust set it will run with (digest list or trust database)")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Report settings that can lock the device out or leave a hole. Exit 1 on errors."""
    with errors_to_exit(as_json):
        data = _read(file, "policy")
        try:
            raw = json.loads(data)
        except json.JSONDecodeError as e:
            raise UserInputError(f"{file} is not JSON: {e}") from e
        document = peek(data)[1] if isinstance(raw, dict) and "payloadType" in raw else raw
        if not isinstance(document, dict):
            raise UserInputError(f"{file} must hold a JSON object")
        parsed = policy_mod.parse_document(document)
        trust_set: Container[bytes] | None = None
        size: int | None = None
        agent: bytes | None = None
        if trust is not None:
            trust_set, size = _unverified_trust(trust)
            agent = _hash_with_spinner(Path(os.path.realpath(sys.executable)), as_json)
        findings = policy_mod.lint_policy(parsed, trust=trust_set, trust_size=size, agent_interpreter_sha256=agent)
        errors = [f for f in findings if f.severity == "error"]

        def human() -> None:
            if not findings:
                console.print("[green]clean[/]")
            for f in findings:
                colour = "red" if f.severity == "error" else "yellow"
                console.print(f"[{colour}]{f.severity}[/] {f.code}: {f.message}", highlight=False)

        render(as_json, {"ok": not errors, "findings": [f.to_json() for f in findings]}, human)
        if errors:
            raise typer.Exit(1)


def _unverified_trust(path: Path) -> tuple[Container[bytes], int]:
    data = _read(path, "trust set")
    if data.lstrip().startswith(b"{"):
        db = trustdb.read_unverified(data)
        return db, len(db.digests)
    digests = read_digest_list(data, path)
    return digests, len(digests)


def _hash_with_spinner(path: Path, as_json: bool) -> bytes:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err_console, disable=as_json) as bar:
        bar.add_task(f"hashing {path}")
        try:
            with path.open("rb") as f:
                return hashlib.file_digest(f, "sha256").digest()
        except OSError as e:
            raise UserInputError(f"cannot read {path}: {e.strerror}") from e
