"""``medsec protect ports``: sign, verify and apply the device's port policy; check it for drift.

Manufacturer side: ``sign`` (offline, with the release key). Device side: ``verify``, ``apply``,
``check`` and ``usb-apply``. Commands that change a network namespace need ``--netns NS``, or the
loud ``--this-namespace`` to act on the namespace the command runs in (the device itself).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from medsec.atomic_file import atomic_write
from medsec.cli.output import console, err_console, errors_to_exit, render
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import UserInputError
from medsec.protect.drift import PortGuard
from medsec.protect.events import ProtectionEvent
from medsec.protect.ports import ConsoleGate, PolicyStore, PortPolicy, sign_policy, verify_policy
from medsec.protect.usb import apply_usb_policy

app = typer.Typer(help="The device's signed port, interface, USB and service-console policy.", no_args_is_help=True)

AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output")]
PolicyFile = Annotated[Path, typer.Option("--policy", help="the signed policy (.dsse)")]
TrustedKeys = Annotated[
    list[Path],
    typer.Option("--trusted-key", help="release public key: a .pub.json file or base64 of the raw key (repeat)"),
]
Model = Annotated[str, typer.Option("--model", help="this device's model (hardware id)")]
Netns = Annotated[str | None, typer.Option("--netns", help="network namespace of the device")]
ThisNamespace = Annotated[
    bool, typer.Option("--this-namespace", help="act on the network namespace this command runs in (on the device)")
]
StateDir = Annotated[Path, typer.Option("--state-dir", help="where the installed policy and drift state are kept")]
SysfsRoot = Annotated[Path | None, typer.Option("--sysfs-root", help="sysfs to use for USB (e.g. /sys)")]


def load_verify_key(path: Path) -> VerifyKey:
    """A release public key from a ``.pub.json`` (``medsec keys new``) or a file holding base64."""
    try:
        text = path.read_text("utf-8").strip()
    except OSError as e:
        raise UserInputError(f"cannot read the trusted key {path}: {e.strerror}") from e
    if text.startswith("{"):
        try:
            doc = json.loads(text)
            if doc.get("keytype") != "ed25519":
                raise UserInputError(f"{path}: not an Ed25519 public key")
            return VerifyKey(bytes.fromhex(doc["keyval"]["public"]))
        except (ValueError, KeyError, TypeError) as e:
            raise UserInputError(f"{path} is not a public key file: {e}") from e
    return VerifyKey.from_base64(text)


def _trusted(paths: list[Path]) -> list[VerifyKey]:
    if not paths:
        raise UserInputError("give at least one --trusted-key")
    return [load_verify_key(p) for p in paths]


def _namespace(netns: str | None, this_namespace: bool) -> str | None:
    if (netns is None) == (not this_namespace):
        raise UserInputError("give exactly one of --netns NS and --this-namespace")
    return netns


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserInputError(f"cannot read {what} {path}: {e.strerror}") from e


def _summary(policy: PortPolicy) -> dict[str, Any]:
    return {
        "model": policy.model,
        "version": policy.version,
        "mode": policy.mode,
        "digest": policy.digest(),
        "interfaces": [f"{i.name} ({i.role})" for i in policy.interfaces],
        "inbound": [f"{r.interface} {r.protocol}/{r.port} from {r.peer or 'any'}" for r in policy.inbound],
        "outbound_default": policy.outbound_default,
        "usb_allow": [u.label for u in policy.usb_allow],
        "console": policy.console.mode,
    }


def _show_events(events: list[ProtectionEvent]) -> None:
    if not events:
        console.print("[green]no drift[/]")
        return
    table = Table("category", "action", "rule", "object", "detail")
    for e in events:
        table.add_row(e.category, e.action, e.rule, e.object.path if e.object else "", e.detail)
    console.print(table)


def _show_policy(result: dict[str, Any]) -> None:
    policy = result["policy"]
    console.print(f"[bold]{policy['model']}[/] port policy v{policy['version']} ({policy['mode']})", highlight=False)
    for key in ("interfaces", "inbound", "usb_allow"):
        console.print(f"  {key}: {', '.join(policy[key]) or '-'}", highlight=False)
    console.print(f"  outbound: {policy['outbound_default']}, console: {policy['console']}", highlight=False)


@app.command("sign")
def sign(
    document: Annotated[Path, typer.Option("--document", help="the policy JSON document to sign")],
    key: Annotated[Path, typer.Option("--key", help="the release signing key (PKCS#8 PEM)")],
    out: Annotated[Path, typer.Option("--out", help="where to write the signed policy (.dsse)")],
    passphrase_file: Annotated[Path | None, typer.Option("--passphrase-file", help="key passphrase file")] = None,
    as_json: AsJson = False,
) -> None:
    """Check a policy document and sign it with the release key (DSSE)."""
    with errors_to_exit(as_json):
        try:
            doc = json.loads(_read(document, "policy document"))
        except ValueError as e:
            raise UserInputError(f"{document} is not JSON: {e}") from e
        passphrase = None
        if passphrase_file is not None:
            passphrase = _read(passphrase_file, "passphrase file").decode("utf-8").splitlines()[0].encode("utf-8")
        data = sign_policy(doc, [SigningKey.load(key, passphrase)])
        atomic_write(out, data)
        policy = PortPolicy.from_json(doc)
        result = {"ok": True, "out": str(out), "policy": _summary(policy)}
        render(as_json, result, lambda: console.print(f"signed {policy.model} v{policy.version} → {out}"))


@app.command("verify")
def verify(
    policy_file: PolicyFile,
    trusted_key: TrustedKeys,
    model: Model,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="refuse versions below the installed one")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Verify a signed policy: signature, model, fields and (with --state-dir) no rollback."""
    with errors_to_exit(as_json):
        keys = _trusted(trusted_key)
        installed = PolicyStore(state_dir, keys, model).current() if state_dir else None
        policy = verify_policy(
            _read(policy_file, "policy"), keys, model, installed_version=installed.version if installed else None
        )
        render(as_json, {"ok": True, "policy": _summary(policy)}, lambda: _show_policy({"policy": _summary(policy)}))


@app.command("apply")
def apply(
    policy_file: PolicyFile,
    trusted_key: TrustedKeys,
    model: Model,
    state_dir: StateDir,
    netns: Netns = None,
    this_namespace: ThisNamespace = False,
    sysfs_root: SysfsRoot = None,
    as_json: AsJson = False,
) -> None:
    """Install the policy (no rollback) and apply it: nftables table, interfaces, and USB with --sysfs-root."""
    with errors_to_exit(as_json):
        ns = _namespace(netns, this_namespace)
        keys = _trusted(trusted_key)
        with Progress(console=err_console, transient=True, disable=as_json) as progress:
            task = progress.add_task("verifying the policy", total=2)
            policy = PolicyStore(state_dir, keys, model).install(_read(policy_file, "policy"))
            progress.update(task, advance=1, description="applying nftables, interfaces, USB")
            guard = PortGuard(
                policy,
                netns=ns,
                sysfs_root=sysfs_root,
                console=ConsoleGate(policy, state_dir),
                state_path=state_dir / "port-drift.json",
            )
            events = guard.apply()
            progress.update(task, advance=1)
        result = {"ok": True, "policy": _summary(policy), "events": [e.to_json() for e in events]}

        def human() -> None:
            console.print(f"applied {policy.model} port policy v{policy.version} in {ns or 'this namespace'}")
            _show_events([e for e in events if e.action != "applied"])

        render(as_json, result, human)


@app.command("check")
def check(
    trusted_key: TrustedKeys,
    model: Model,
    state_dir: StateDir,
    netns: Netns = None,
    this_namespace: ThisNamespace = False,
    sysfs_root: SysfsRoot = None,
    as_json: AsJson = False,
) -> None:
    """Compare the running state with the installed policy; print new drift and what was corrected."""
    with errors_to_exit(as_json):
        ns = _namespace(netns, this_namespace)
        policy = PolicyStore(state_dir, _trusted(trusted_key), model).current()
        if policy is None:
            raise UserInputError(f"no port policy is installed in {state_dir}; run 'apply' first")
        guard = PortGuard(
            policy,
            netns=ns,
            sysfs_root=sysfs_root,
            console=ConsoleGate(policy, state_dir),
            state_path=state_dir / "port-drift.json",
        )
        events = guard.check()
        result = {"ok": True, "policy_version": policy.version, "events": [e.to_json() for e in events]}
        render(as_json, result, lambda: _show_events(events))


@app.command("usb-apply")
def usb_apply(
    policy_file: PolicyFile,
    trusted_key: TrustedKeys,
    model: Model,
    sysfs_root: Annotated[Path, typer.Option("--sysfs-root", help="sysfs root (/sys on the device)")],
    as_json: AsJson = False,
) -> None:
    """Apply only the USB part: default-deny on every controller, the allow list on every device."""
    with errors_to_exit(as_json):
        policy = verify_policy(_read(policy_file, "policy"), _trusted(trusted_key), model)
        events = apply_usb_policy(policy, sysfs_root)
        render(as_json, {"ok": True, "events": [e.to_json() for e in events]}, lambda: _show_events(events))
