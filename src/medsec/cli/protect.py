"""``medsec protect``: the signed trust database (allowlist) and the integrity baseline (RL-1..3)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from medsec.atomic_file import atomic_write
from medsec.cli import protect_engine
from medsec.cli.keys import AsJson, PassphraseFile, read_passphrase_file
from medsec.cli.output import console, err_console, errors_to_exit, render
from medsec.cli.protect_ports import app as ports_app
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import UserInputError
from medsec.protect import integrity, trustdb
from medsec.updates.keys import private_key_is_encrypted

app = typer.Typer(help="Device protection: trust database (allowlist) and integrity baseline.", no_args_is_help=True)
trustdb_app = typer.Typer(
    help="The signed allowlist of one release: build, learn, verify, lint, dry-run, show.", no_args_is_help=True
)
baseline_app = typer.Typer(
    help="The signed integrity baseline: build, verify, check (and repair).", no_args_is_help=True
)
app.add_typer(trustdb_app, name="trustdb")
app.add_typer(baseline_app, name="baseline")
app.add_typer(protect_engine.app, name="engine")
app.add_typer(ports_app, name="ports")

Product = Annotated[str, typer.Option("--product", help="product line, e.g. infusion-pump")]
Version = Annotated[str, typer.Option("--version", help="release version, e.g. 1.2.0")]
Counter = Annotated[int, typer.Option("--counter", help="the release's counter (strictly increasing)")]
SignKeys = Annotated[
    list[Path], typer.Option("--key", help="release signing key file (PKCS#8 PEM; repeat for several)")
]
VerifyKeys = Annotated[list[Path], typer.Option("--key", help="trusted public key (PEM, *.pub.json or base64; repeat)")]
Out = Annotated[Path, typer.Option("--out", "-o", help="file to write (atomically)")]


def signing_keys(paths: Sequence[Path], passphrase_file: Path | None) -> list[SigningKey]:
    if not paths:
        raise UserInputError("give at least one --key")
    keys = []
    for path in paths:
        secret = None
        if private_key_is_encrypted(path):
            if passphrase_file is not None:
                secret = read_passphrase_file(passphrase_file)
            else:
                secret = typer.prompt(f"passphrase for {path}", hide_input=True).encode("utf-8")
        keys.append(SigningKey.load(path, secret))
    return keys


def _verify_keys(paths: Sequence[Path]) -> list[VerifyKey]:
    if not paths:
        raise UserInputError("give at least one trusted --key")
    return [trustdb.read_verify_key(p) for p in paths]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserInputError(f"cannot read the {what} {path}: {e.strerror}") from e


@contextmanager
def hashing_progress(as_json: bool, roots: Sequence[Path | None], what: str) -> Iterator[Callable[[Path, int], None]]:
    """A progress bar over the files below ``roots`` (hashing big trees takes a while)."""
    total = sum(trustdb.count_files(r) for r in roots if r is not None and r.is_dir())
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console,
        transient=True,
        disable=as_json,
    ) as bar:
        task = bar.add_task(what, total=total or None)
        yield lambda _path, _size: bar.advance(task)


def updater_map(values: Sequence[str]) -> dict[str, Path]:
    pinned = {}
    for value in values:
        device_path, sep, local = value.partition("=")
        if not sep or not device_path.startswith("/") or not local:
            raise UserInputError(f"--updater {value!r} must be DEVICE_PATH=LOCAL_FILE, e.g. /usr/bin/medsec=./medsec")
        pinned[device_path] = Path(local)
    return pinned


# -- trustdb ----------------------------------------------------------------------------------------


@trustdb_app.command("build")
def trustdb_build(
    payload: Annotated[Path, typer.Argument(help="the release payload folder")],
    product: Product,
    version: Version,
    counter: Counter,
    key: SignKeys,
    out: Out,
    os_image: Annotated[Path | None, typer.Option("--os-image", help="root of the OS image it runs on")] = None,
    updater: Annotated[
        list[str] | None, typer.Option("--updater", help="pin the updater: DEVICE_PATH=LOCAL_FILE (repeat)")
    ] = None,
    payload_root: Annotated[
        str, typer.Option("--payload-root", help="where the running slot appears on the device")
    ] = trustdb.DEFAULT_PAYLOAD_ROOT,
    passphrase_file: PassphraseFile = None,
    as_json: AsJson = False,
) -> None:
    """Hash a release's executable files and write its signed trust database."""
    with errors_to_exit(as_json):
        keys = signing_keys(key, passphrase_file)
        with hashing_progress(as_json, [payload, os_image], "hashing") as progress:
            data = trustdb.build_signed_for_release(
                payload,
                keys,
                product=product,
                version=version,
                release_counter=counter,
                os_image=os_image,
                updater=updater_map(updater or []),
                payload_root=payload_root,
                progress=progress,
            )
        atomic_write(out, data)
        db = trustdb.read_unverified(data)
        result = {"ok": True, "out": str(out), **db.summary()}
        render(as_json, result, lambda: console.print(f"wrote {out}: {db!r}", highlight=False))


@trustdb_app.command("learn")
def trustdb_learn(
    root: Annotated[Path, typer.Argument(help="a known-good device root (becomes / on the device)")],
    product: Product,
    version: Version,
    counter: Counter,
    out: Out,
    key: Annotated[
        list[Path] | None, typer.Option("--key", help="sign with this key; without it the document is unsigned")
    ] = None,
    passphrase_file: PassphraseFile = None,
    as_json: AsJson = False,
) -> None:
    """Walk a known-good root and list every executable file (ELF, script, or exec bit)."""
    with errors_to_exit(as_json):
        with hashing_progress(as_json, [root], "learning") as progress:
            entries = trustdb.learn(root, progress=progress)
        db = trustdb.TrustDB(product, version, counter, trustdb.utc_text(), entries)
        if key:
            data = db.seal(signing_keys(key, passphrase_file))
        else:
            data = json.dumps(db.to_document(), indent=1, sort_keys=True).encode("utf-8") + b"\n"
        atomic_write(out, data)
        result = {"ok": True, "out": str(out), "signed": bool(key), **db.summary()}
        render(as_json, result, lambda: console.print(f"learned {len(db)} files into {out}", highlight=False))


@trustdb_app.command("verify")
def trustdb_verify(
    file: Annotated[Path, typer.Argument(help="signed trust database")],
    product: Product,
    key: VerifyKeys,
    min_counter: Annotated[int, typer.Option("--min-counter", help="refuse anything older (rollback)")] = 0,
    threshold: Annotated[int, typer.Option("--threshold", help="signatures needed")] = 1,
    as_json: AsJson = False,
) -> None:
    """Check signature, product and release counter, as the device does before enforcing."""
    with errors_to_exit(as_json):
        db = trustdb.load_trustdb(
            _read(file, "trust database"),
            _verify_keys(key),
            product=product,
            min_counter=min_counter,
            threshold=threshold,
        )
        render(as_json, {"ok": True, **db.summary()}, lambda: console.print(f"[green]verified[/] {db!r}"))


@trustdb_app.command("lint")
def trustdb_lint(
    file: Annotated[Path, typer.Argument(help="trust database (signed or not)")],
    tree: Annotated[
        Path | None, typer.Option("--tree", help="device-shaped folder to read scripts from (interpreter check)")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Report duplicates, world-writable or set-id entries, emptiness and unlisted interpreters. Exit 1 on findings."""
    with errors_to_exit(as_json):
        db = trustdb.read_unverified(_read(file, "trust database"))
        findings = trustdb.lint(db, tree=tree)

        def human() -> None:
            if not findings:
                console.print(f"[green]clean[/]: {len(db)} entries")
            for f in findings:
                console.print(f"[yellow]{f.code}[/] {f.message}", highlight=False)

        render(as_json, {"ok": not findings, "entries": len(db), "findings": [f.to_json() for f in findings]}, human)
    if findings:
        raise typer.Exit(1)


@trustdb_app.command("dry-run")
def trustdb_dry_run(
    file: Annotated[Path, typer.Argument(help="the new trust database (signed or not)")],
    events: Annotated[Path, typer.Option("--events", help="recorded protection events, JSON lines")],
    as_json: AsJson = False,
) -> None:
    """Before enforcing: which executions allowed until now would the new database deny?"""
    with errors_to_exit(as_json):
        db = trustdb.read_unverified(_read(file, "trust database"))
        try:
            with events.open(encoding="utf-8") as lines:
                report = trustdb.dry_run(db, trustdb.read_events(lines))
        except OSError as e:
            raise UserInputError(f"cannot read the events {events}: {e.strerror}") from e

        def human() -> None:
            console.print(
                f"{report.events_read} events, {report.allowed_considered} allowed executions/opens considered, "
                f"{report.without_hash} without a hash",
                highlight=False,
            )
            if not report.would_deny:
                console.print("[green]nothing allowed until now would be denied[/]")
                return
            table = Table("would deny", "sha256", "times", "by")
            for d in report.would_deny:
                table.add_row(d.path or "?", d.sha256[:16], str(d.count), d.exe or "")
            console.print(table)

        render(as_json, {"ok": True, **report.to_json()}, human)


@trustdb_app.command("show")
def trustdb_show(
    file: Annotated[Path, typer.Argument(help="trust database (signed or not); NOT verified")],
    limit: Annotated[int, typer.Option("--limit", help="entries to list (0: none)")] = 50,
    as_json: AsJson = False,
) -> None:
    """Show a trust database without verifying it (use 'verify' to check it)."""
    with errors_to_exit(as_json):
        db = trustdb.read_unverified(_read(file, "trust database"))
        shown = db.entries[: max(limit, 0)]
        result: dict[str, Any] = {
            "ok": True,
            "verified": False,
            **db.summary(),
            "shown": [e.to_json() for e in shown],
        }

        def human() -> None:
            console.print(f"[yellow]UNVERIFIED[/] {db!r} created {db.created}", highlight=False)
            table = Table("path", "sha256", "size", "mode", "source")
            for e in shown:
                table.add_row(e.path, e.sha256[:16], str(e.size), f"{e.mode:o}", e.source)
            console.print(table)

        render(as_json, result, human)


# -- baseline ---------------------------------------------------------------------------------------


def _protect_list(values: Sequence[str], agent_files: bool) -> list[tuple[str, str]]:
    spec = []
    for value in values:
        rel, sep, kind = value.rpartition(":")
        if not sep or kind not in integrity.KINDS:
            raise UserInputError(f"--protect {value!r} must be PATH:KIND, KIND one of {', '.join(integrity.KINDS)}")
        spec.append((rel, kind))
    if agent_files:
        spec += list(integrity.AGENT_FILES)
    if not spec:
        raise UserInputError("give --protect PATH:KIND or --agent-files")
    return spec


@baseline_app.command("build")
def baseline_build(
    root: Annotated[Path, typer.Argument(help="the known-good device root")],
    label: Annotated[str, typer.Option("--label", help="what this baseline is for, e.g. the serial")],
    key: SignKeys,
    out: Out,
    protect: Annotated[
        list[str] | None, typer.Option("--protect", help="PATH:KIND below the root, KIND binary|config|agent|log")
    ] = None,
    agent_files: Annotated[bool, typer.Option("--agent-files", help="add the agent's own files")] = False,
    store: Annotated[
        Path | None, typer.Option("--store", help="also copy the files into this known-good store")
    ] = None,
    passphrase_file: PassphraseFile = None,
    as_json: AsJson = False,
) -> None:
    """Hash the protected files of a known-good root and write the signed baseline."""
    with errors_to_exit(as_json):
        spec = _protect_list(protect or [], agent_files)
        spec = [(rel, kind) for rel, kind in spec if (root / rel).exists() or (rel, kind) not in integrity.AGENT_FILES]
        keys = signing_keys(key, passphrase_file)
        with hashing_progress(as_json, [root / rel for rel, _ in spec], "hashing") as progress:
            baseline = integrity.build_baseline(root, spec, label=label, progress=progress)
        atomic_write(out, baseline.seal(keys))
        stored = integrity.populate_store(store, root, baseline) if store is not None else 0
        result = {"ok": True, "out": str(out), "files": len(baseline.entries), "watch": list(baseline.watch)}
        result["stored"] = stored
        render(
            as_json,
            result,
            lambda: console.print(f"wrote {out}: {len(baseline.entries)} protected files", highlight=False),
        )


@baseline_app.command("verify")
def baseline_verify(
    file: Annotated[Path, typer.Argument(help="signed baseline")],
    key: VerifyKeys,
    as_json: AsJson = False,
) -> None:
    """Check the baseline's signature and form."""
    with errors_to_exit(as_json):
        baseline = integrity.load_baseline(_read(file, "baseline"), _verify_keys(key))
        result = {"ok": True, "label": baseline.label, "created": baseline.created, "files": len(baseline.entries)}
        render(as_json, result, lambda: console.print(f"[green]verified[/] {len(baseline.entries)} files"))


@baseline_app.command("check")
def baseline_check(
    root: Annotated[Path, typer.Argument(help="the device root to check")],
    baseline_file: Annotated[Path, typer.Option("--baseline", help="signed baseline")],
    key: VerifyKeys,
    known_good: Annotated[
        list[Path] | None, typer.Option("--known-good", help="folder with known-good copies (repeat)")
    ] = None,
    quarantine: Annotated[
        Path | None, typer.Option("--quarantine", help="quarantine folder (default ROOT/var/lib/medsec/quarantine)")
    ] = None,
    repair: Annotated[bool, typer.Option("--repair/--no-repair", help="restore or quarantine what differs")] = False,
    as_json: AsJson = False,
) -> None:
    """Compare a device root with its baseline; with --repair, restore or quarantine. Exit 1 on findings."""
    with errors_to_exit(as_json):
        baseline = integrity.load_baseline(_read(baseline_file, "baseline"), _verify_keys(key))
        monitor = integrity.IntegrityMonitor(
            root,
            baseline,
            integrity.KnownGood(known_good or [root / "slots/current"]),
            quarantine_dir=quarantine or root / "var/lib/medsec/quarantine",
            repair=repair,
        )
        with hashing_progress(as_json, [], "checking"):
            events = [e.to_json() for e in monitor.check_all()]
        findings = [e for e in events if e["action"] == "detected"]

        def human() -> None:
            if not events:
                console.print(f"[green]intact[/]: {len(baseline.entries)} files match the baseline")
            for e in events:
                colour = "red" if e["action"] == "detected" else "yellow"
                console.print(f"[{colour}]{e['action']}[/] {e['rule']}: {e['detail']}", highlight=False)

        render(as_json, {"ok": not findings, "files": len(baseline.entries), "events": events}, human)
    if findings:
        raise typer.Exit(1)
