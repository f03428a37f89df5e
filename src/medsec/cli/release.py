"""``medsec release`` (build, sign, publish) and ``medsec repo`` (init, refresh, check-expiry)."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from medsec.cli.keys import AsJson, PassphraseFile, read_passphrase_file, unlock
from medsec.cli.output import console, err_console, errors_to_exit, render
from medsec.errors import UserInputError
from medsec.updates.expiry import check_expiry
from medsec.updates.keys import load_image_online_signers, load_keyset
from medsec.updates.metadata_files import utc_now
from medsec.updates.release import build_release, publish, read_bundle, sign_release
from medsec.updates.repository import DEFAULT_BIN_BITS, ImageRepository

app = typer.Typer(help="Release bundles: build, sign (offline targets key), publish.", no_args_is_help=True)
repo_app = typer.Typer(help="TUF image repositories: create, re-sign online roles, watch expiry.", no_args_is_help=True)

RepoRoot = Annotated[Path, typer.Option("--repo", help="image repository root (holds one folder per product)")]
Product = Annotated[str, typer.Option("--product", help="product line, e.g. infusion-pump")]
OnlineKeys = Annotated[Path, typer.Option("--online-keys", help="folder with the online keys (KEYS/online)")]


def _busy(as_json: bool, text: str) -> AbstractContextManager[Any]:
    return nullcontext() if as_json else err_console.status(text, spinner="dots")


def _read_optional(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserInputError(f"cannot read the {what} {path}: {e.strerror}") from e


def _created() -> datetime | None:
    """Honour SOURCE_DATE_EPOCH (reproducible-builds.org) when set."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except ValueError as e:
        raise UserInputError("SOURCE_DATE_EPOCH must be an integer") from e


def _trust_db(
    payload: Path,
    product: str,
    version: str,
    counter: int,
    prepared: Path | None,
    keys: list[Path] | None,
    os_image: Path | None,
    updater: list[str] | None,
    passphrase_file: Path | None,
    as_json: bool,
) -> bytes | None:
    """The signed trust database for the bundle: generated (RL-3, SM-6) or prepared and checked."""
    from medsec.cli.protect import hashing_progress, signing_keys, updater_map
    from medsec.protect import trustdb

    if prepared is not None and keys:
        raise UserInputError("--trust-db and --trust-db-key exclude each other")
    if (os_image is not None or updater) and not keys:
        raise UserInputError("--os-image and --updater need --trust-db-key")
    if prepared is not None:
        data = _read_optional(prepared, "trust database")
        assert data is not None
        trustdb.check_matches_release(data, product=product, version=version, release_counter=counter)
        return data
    if not keys:
        return None
    signers = signing_keys(keys, passphrase_file)
    created = _created()
    with hashing_progress(as_json, [payload, os_image], "trust database") as progress:
        return trustdb.build_signed_for_release(
            payload,
            signers,
            product=product,
            version=version,
            release_counter=counter,
            os_image=os_image,
            updater=updater_map(updater or []),
            created=trustdb.utc_text(created) if created else None,
            progress=progress,
        )


@app.command("build")
def build(
    payload: Annotated[Path, typer.Argument(help="folder with the files to install into the slot")],
    product: Product,
    version: Annotated[str, typer.Option("--version", help="release version, e.g. 1.1.0")],
    counter: Annotated[int, typer.Option("--counter", help="release counter, strictly increasing per product")],
    hardware_id: Annotated[list[str], typer.Option("--hardware-id", help="hardware id it runs on (repeat)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="bundle to write (release.tar)")],
    min_from_version: Annotated[str | None, typer.Option("--min-from-version")] = None,
    notes_en: Annotated[str, typer.Option("--notes-en", help="release notes (English)")] = "",
    notes_ja: Annotated[str, typer.Option("--notes-ja", help="release notes (Japanese)")] = "",
    fixed: Annotated[list[str] | None, typer.Option("--fixed", help="a fixed vulnerability id (repeat)")] = None,
    downtime_minutes: Annotated[int, typer.Option("--downtime-minutes", help="expected downtime")] = 0,
    rollback_supported: Annotated[bool, typer.Option("--rollback/--no-rollback")] = True,
    sbom: Annotated[Path | None, typer.Option("--sbom", help="CycloneDX JSON (default: generated)")] = None,
    trust_db: Annotated[
        Path | None, typer.Option("--trust-db", help="a signed trust database made for this release")
    ] = None,
    trust_db_key: Annotated[
        list[Path] | None,
        typer.Option("--trust-db-key", help="generate the trust database from the payload, signed with this key"),
    ] = None,
    os_image: Annotated[
        Path | None, typer.Option("--os-image", help="OS image root whose executables the trust database allows")
    ] = None,
    updater: Annotated[
        list[str] | None, typer.Option("--updater", help="pin the updater: DEVICE_PATH=LOCAL_FILE (repeat)")
    ] = None,
    passphrase_file: PassphraseFile = None,
    as_json: AsJson = False,
) -> None:
    """Pack a payload, manifest, SBOM and signed trust DB into a deterministic release bundle."""
    with errors_to_exit(as_json):
        trust_db_json = _trust_db(
            payload, product, version, counter, trust_db, trust_db_key, os_image, updater, passphrase_file, as_json
        )
    with errors_to_exit(as_json), _busy(as_json, "building bundle"):
        info = build_release(
            payload,
            product,
            version,
            counter,
            hardware_id,
            min_from_version,
            notes_en,
            notes_ja,
            fixed or [],
            downtime_minutes,
            rollback_supported,
            out,
            sbom_json=_read_optional(sbom, "SBOM"),
            trust_db_json=trust_db_json,
            created=_created(),
        )
        result = {
            "ok": True,
            "bundle": str(info.path),
            "target": info.target_name,
            "sha256": info.sha256,
            "length": info.length,
            "release_counter": info.release_counter,
            "files": len(info.manifest["payload"]),
            "trust_db": info.manifest["trust_db"],
        }
        render(
            as_json,
            result,
            lambda: console.print(f"built {info.path}: {info.target_name} sha256={info.sha256}", highlight=False),
        )


@app.command("sign")
def sign(
    repo: RepoRoot,
    bundle: Annotated[Path, typer.Option("--bundle", help="the release.tar to sign")],
    key: Annotated[Path, typer.Option("--key", help="the product's offline targets key file")],
    passphrase_file: PassphraseFile = None,
    as_json: AsJson = False,
) -> None:
    """Offline: add the bundle as a TUF target (hash bin) and sign with the targets key."""
    with errors_to_exit(as_json):
        product = read_bundle(bundle).product
        signer = unlock(key, passphrase_file)
        with _busy(as_json, "signing"):
            signed = sign_release(ImageRepository(repo, product), bundle, signer)
        result = {
            "ok": True,
            "target": signed.target_name,
            "bin": signed.bin,
            "bin_version": signed.bin_version,
            "targets_version": signed.targets_version,
            "release_counter": signed.release_counter,
        }
        render(
            as_json,
            result,
            lambda: console.print(
                f"signed {signed.target_name} into {signed.bin} v{signed.bin_version}; next: 'medsec release publish'",
                highlight=False,
            ),
        )


@app.command("publish")
def publish_cmd(
    repo: RepoRoot,
    bundle: Annotated[Path, typer.Option("--bundle", help="the signed release.tar")],
    online_keys: OnlineKeys,
    as_json: AsJson = False,
) -> None:
    """Place a signed bundle in the repository and re-sign snapshot and timestamp."""
    with errors_to_exit(as_json), _busy(as_json, "publishing"):
        product = read_bundle(bundle).product
        published = publish(ImageRepository(repo, product), bundle, load_image_online_signers(online_keys))
        result = {
            "ok": True,
            "target": published.target_name,
            "path": str(published.target_path),
            "snapshot_version": published.snapshot_version,
            "timestamp_version": published.timestamp_version,
        }
        render(
            as_json,
            result,
            lambda: console.print(
                f"published {published.target_name} (snapshot v{published.snapshot_version})", highlight=False
            ),
        )


@repo_app.command("init")
def repo_init(
    repo: RepoRoot,
    product: Product,
    keys: Annotated[Path, typer.Option("--keys", help="the key set folder from 'medsec keys init'")],
    bins: Annotated[int, typer.Option("--bins", help="number of hash bins (a power of two)")] = 2**DEFAULT_BIN_BITS,
    passphrase_file: PassphraseFile = None,
    as_json: AsJson = False,
) -> None:
    """Create a product's repository: root v1, targets, hash bins, snapshot, timestamp."""
    with errors_to_exit(as_json):
        if bins < 2 or bins & (bins - 1):
            raise UserInputError("--bins must be a power of two, at least 2")
        keyset = load_keyset(keys)
        secret = read_passphrase_file(passphrase_file) if passphrase_file else None

        def passphrase_for(name: str) -> bytes:
            if secret is not None:
                return secret
            text: str = typer.prompt(f"passphrase for {name}", hide_input=True)
            return text.encode("utf-8")

        threshold = keyset.image["root"].threshold
        root_keys = keyset.file_keys("image", "root", passphrase_for)[:threshold]
        root_signers = [k.signer() for k in root_keys]
        targets_signers = keyset.signers("image", "targets", passphrase_for)
        online = load_image_online_signers(keys / "online")
        with _busy(as_json, "creating repository"):
            created = ImageRepository.create(
                repo,
                product,
                keyset.image,
                root_signers=root_signers,
                targets_signers=targets_signers,
                online=online,
                now=utc_now(),
                bin_bits=bins.bit_length() - 1,
            )
        result = {"ok": True, "path": str(created.path), "bins": bins, "root_version": 1}
        render(as_json, result, lambda: console.print(f"created {created.path} ({bins} hash bins)", highlight=False))


@repo_app.command("refresh")
def repo_refresh(
    repo: RepoRoot,
    product: Product,
    online_keys: OnlineKeys,
    force: Annotated[bool, typer.Option("--force", help="re-sign even if not due")] = False,
    as_json: AsJson = False,
) -> None:
    """Re-sign snapshot and timestamp with the online keys when they are due (or always, --force)."""
    with errors_to_exit(as_json):
        result = ImageRepository(repo, product).refresh(load_image_online_signers(online_keys), utc_now(), force=force)
        out = {"ok": True, "snapshot_version": result.snapshot_version, "timestamp_version": result.timestamp_version}
        render(
            as_json,
            out,
            lambda: console.print(
                "nothing due"
                if result.timestamp_version is None
                else f"re-signed timestamp v{result.timestamp_version}"
                + (f", snapshot v{result.snapshot_version}" if result.snapshot_version else "")
            ),
        )


@repo_app.command("check-expiry")
def repo_check_expiry(repo: RepoRoot, product: Product, as_json: AsJson = False) -> None:
    """List roles close to expiry: root 60 days ahead, targets and bins 14, online roles when due."""
    with errors_to_exit(as_json):
        warnings = check_expiry(ImageRepository(repo, product), utc_now())
        out = {
            "ok": True,
            "warnings": [
                {
                    "role": w.role,
                    "version": w.version,
                    "expires": w.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "remaining_seconds": int(w.remaining.total_seconds()),
                    "expired": w.expired,
                    "action": w.action,
                }
                for w in warnings
            ],
        }

        def human() -> None:
            if not warnings:
                console.print("[green]no role is close to expiry[/]")
            for w in warnings:
                colour = "red" if w.expired or w.action == "offline-resign" else "yellow"
                console.print(f"[{colour}]{w.describe()}[/]", highlight=False)

        render(as_json, out, human)
