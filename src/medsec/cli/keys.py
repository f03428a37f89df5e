"""``medsec keys``: key ceremonies for the update repositories (init, new, rotate-root, revoke)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Literal, cast

import typer
from rich.progress import Progress

from medsec.cli.output import console, err_console, errors_to_exit, render
from medsec.errors import UserInputError
from medsec.updates.keys import (
    generate_key_file,
    init_keys,
    load_file_signer,
    load_image_online_signers,
    private_key_is_encrypted,
    revoke_key,
    rotate_root,
    write_public_key,
)
from medsec.updates.repository import ImageRepository
from medsec.updates.roots import RootHistory
from medsec.updates.tuf_types import Signer

app = typer.Typer(help="Key ceremonies for signed updates (TUF image and director repositories).", no_args_is_help=True)

PassphraseFile = Annotated[
    Path | None,
    typer.Option("--passphrase-file", help="read the passphrase from the first line of this file (automation)"),
]
Insecure = Annotated[
    bool,
    typer.Option(
        "--insecure-no-passphrase",
        help="write offline keys UNENCRYPTED (throwaway demo keys only)",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def read_passphrase_file(path: Path) -> bytes:
    try:
        line = path.read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError) as e:
        raise UserInputError(f"cannot read a passphrase from {path}") from e
    if not line:
        raise UserInputError(f"{path}: the passphrase is empty")
    return line.encode("utf-8")


def new_passphrase_source(passphrase_file: Path | None, insecure: bool) -> Callable[[str], bytes | None]:
    """Passphrases for keys being created: a file, a confirmed prompt per key, or none (loudly)."""
    if insecure and passphrase_file:
        raise UserInputError("--insecure-no-passphrase and --passphrase-file exclude each other")
    if insecure:
        err_console.print("[bold red]warning:[/] offline keys are written WITHOUT encryption (demo only)")
        return lambda _name: None
    if passphrase_file:
        secret = read_passphrase_file(passphrase_file)
        return lambda _name: secret

    def ask(name: str) -> bytes:
        text: str = typer.prompt(f"passphrase for {name}", hide_input=True, confirmation_prompt=True)
        if not text:
            raise UserInputError("an empty passphrase is not allowed; use --insecure-no-passphrase for demos")
        return text.encode("utf-8")

    return ask


def unlock(path: Path, passphrase_file: Path | None) -> Signer:
    """Load a key file, asking for its passphrase only when it is encrypted."""
    passphrase: bytes | None = None
    if private_key_is_encrypted(path):
        if passphrase_file:
            passphrase = read_passphrase_file(passphrase_file)
        else:
            passphrase = typer.prompt(f"passphrase for {path.name}", hide_input=True).encode("utf-8")
    return load_file_signer(path, passphrase)


@app.command("init")
def init(
    keys_dir: Annotated[Path, typer.Option("--dir", help="folder for the new key set (must not hold keys)")],
    root_threshold: Annotated[int, typer.Option("--root-threshold", help="root signatures required")] = 2,
    root_keys: Annotated[int, typer.Option("--root-keys", help="number of root keys")] = 3,
    passphrase_file: PassphraseFile = None,
    insecure_no_passphrase: Insecure = False,
    as_json: AsJson = False,
) -> None:
    """Create the image and director key sets and the director's first root."""
    with errors_to_exit(as_json):
        source = new_passphrase_source(passphrase_file, insecure_no_passphrase)
        total = 2 * (root_keys + 3)
        with Progress(console=err_console, transient=True, disable=as_json) as progress:
            task = progress.add_task("generating keys", total=total)

            def step(name: str) -> None:
                progress.update(task, advance=1, description=f"generating {name}")

            keyset = init_keys(
                keys_dir, root_threshold=root_threshold, root_keys=root_keys, passphrase_for=source, progress=step
            )
        result = {
            "ok": True,
            "dir": str(keys_dir),
            "keys": {
                f"{repo}/{role}": {
                    "threshold": spec.threshold,
                    "keyids": [k.keyid for k in spec.keys],
                    "names": list(keyset.key_names(repo, role)),
                }
                for repo, roles in keyset.roles.items()
                for role, spec in roles.items()
            },
            "director_root": str(keys_dir / "director" / "1.root.json"),
        }
        render(
            as_json,
            result,
            lambda: console.print(
                f"[bold green]created[/] key set in {keys_dir}: keep [bold]offline/[/] in a safe, "
                f"copy [bold]online/[/] to the server",
                highlight=False,
            ),
        )


@app.command("new")
def new(
    out: Annotated[Path, typer.Option("--out", help="private key file to create (e.g. image-root-4.key)")],
    passphrase_file: PassphraseFile = None,
    insecure_no_passphrase: Insecure = False,
    as_json: AsJson = False,
) -> None:
    """Create one Ed25519 key (for a rotation or a replacement) and its public ``.pub.json``."""
    with errors_to_exit(as_json):
        name = out.name.removesuffix(".key")
        passphrase = new_passphrase_source(passphrase_file, insecure_no_passphrase)(name)
        key = generate_key_file(out, passphrase)
        pub = out.with_name(f"{name}.pub.json")
        write_public_key(pub, name, key)
        result = {"ok": True, "key": str(out), "public": str(pub), "keyid": key.keyid}
        render(as_json, result, lambda: console.print(f"created {out} (keyid {key.keyid})", highlight=False))


def _root_target(repo: Path | None, product: str | None, director_dir: Path | None) -> ImageRepository | RootHistory:
    if director_dir is not None:
        if repo is not None:
            raise UserInputError("give either --director-dir or --repo/--product")
        return RootHistory(director_dir)
    if repo is None or product is None:
        raise UserInputError("--repo and --product (or --director-dir) are required")
    return ImageRepository(repo, product)


@app.command("rotate-root")
def rotate_root_cmd(
    old_key: Annotated[list[Path], typer.Option("--old-key", help="a current root key file (repeat)")],
    new_key: Annotated[list[Path], typer.Option("--new-key", help="a root key file of the new set (repeat)")],
    repo: Annotated[Path | None, typer.Option("--repo", help="image repository root")] = None,
    product: Annotated[str | None, typer.Option("--product", help="product line")] = None,
    director_dir: Annotated[Path | None, typer.Option("--director-dir", help="the director's root folder")] = None,
    threshold: Annotated[int | None, typer.Option("--threshold", help="new root threshold")] = None,
    passphrase_file: PassphraseFile = None,
    as_json: AsJson = False,
) -> None:
    """Write root N+1 with a new root key set, signed by the old and the new threshold (TUF 5.3.4)."""
    with errors_to_exit(as_json):
        target = _root_target(repo, product, director_dir)
        old = [unlock(p, passphrase_file) for p in old_key]
        new_signers = [unlock(p, passphrase_file) for p in new_key]
        md = rotate_root(target, [s.public_key for s in new_signers], old, new_signers, threshold=threshold)
        result = {
            "ok": True,
            "root_version": md.signed.version,
            "threshold": md.signed.roles["root"].threshold,
            "keyids": md.signed.roles["root"].keyids,
        }
        render(as_json, result, lambda: console.print(f"root rotated to version {md.signed.version}"))


@app.command("revoke")
def revoke(
    role: Annotated[str, typer.Option("--role", help="targets, snapshot or timestamp")],
    keyid: Annotated[str, typer.Option("--keyid", help="the compromised key's id")],
    new_key: Annotated[Path, typer.Option("--new-key", help="replacement key file ('medsec keys new')")],
    root_key: Annotated[list[Path], typer.Option("--root-key", help="a root key file (repeat up to threshold)")],
    repo: Annotated[Path | None, typer.Option("--repo", help="image repository root")] = None,
    product: Annotated[str | None, typer.Option("--product", help="product line")] = None,
    director_dir: Annotated[Path | None, typer.Option("--director-dir", help="the director's root folder")] = None,
    online_keys: Annotated[
        Path | None, typer.Option("--online-keys", help="server online key folder (snapshot/targets revocation)")
    ] = None,
    passphrase_file: PassphraseFile = None,
    as_json: AsJson = False,
) -> None:
    """Remove a compromised key from a role, add its replacement and re-sign what it signed."""
    with errors_to_exit(as_json):
        if role not in ("targets", "snapshot", "timestamp"):
            raise UserInputError("--role must be targets, snapshot or timestamp ('keys rotate-root' for root)")
        checked_role = cast(Literal["targets", "snapshot", "timestamp"], role)
        target = _root_target(repo, product, director_dir)
        online = load_image_online_signers(online_keys) if online_keys else None
        with nullcontext() if as_json else console.status("re-signing", spinner="dots"):
            result = revoke_key(
                target,
                role=checked_role,
                compromised_keyid=keyid,
                replacement=unlock(new_key, passphrase_file),
                root_signers=[unlock(p, passphrase_file) for p in root_key],
                online=online,
            )
        out = {"ok": True, "root_version": result.root_version, "resigned": list(result.resigned)}
        render(
            as_json,
            out,
            lambda: console.print(
                f"revoked {keyid[:12]}… from {role}; root v{result.root_version}; re-signed: "
                + (", ".join(result.resigned) or "nothing (director: the server signs afresh)"),
                highlight=False,
            ),
        )
