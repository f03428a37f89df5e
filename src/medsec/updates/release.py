"""Release bundles: build (deterministic tar), sign as a TUF target offline, publish (SM-1, SM-6).

A bundle is an uncompressed POSIX tar with, in this order: ``manifest.json`` (canonical JSON),
``sbom.cdx.json`` (CycloneDX 1.6), ``trustdb.json`` (optional), then ``payload/…`` sorted by path.
Every member has mtime = the release's ``created`` time, uid/gid 0, no user or group names and
mode 0644 or 0755, so the same inputs always give the same bytes.

The bundle is trusted only through its TUF target: ``sign_release`` adds it to its hash bin with
the offline targets key, ``publish`` places its bytes and re-signs snapshot and timestamp online.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import re
import stat
import tarfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from medsec import __version__
from medsec.crypto.canonical import canonical_json
from medsec.errors import CanonicalEncodingError, UserInputError
from medsec.updates.client import AssignedTarget
from medsec.updates.errors import ReleaseCounterNotIncreasing, ReleaseError
from medsec.updates.metadata_files import copy_file_atomically, expiry, utc_now
from medsec.updates.repository import ImageRepository, OnlineSigners, sign_role, validate_product
from medsec.updates.tuf_types import Metadata, Signer, TargetFile

logger = logging.getLogger(__name__)

RELEASE_FORMAT = "medsec-release/v1"
BUNDLE_NAME = "release.tar"
MANIFEST = "manifest.json"
SBOM = "sbom.cdx.json"
TRUST_DB = "trustdb.json"
PAYLOAD_PREFIX = "payload/"
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_~-]{0,63}$")
_CHUNK = 1 << 20
_MAX_MANIFEST = 16 << 20


@dataclass(frozen=True)
class ReleaseInfo:
    """A built (or read) bundle: where it is, what it is, and its TUF target identity."""

    path: Path
    manifest: Mapping[str, Any]
    sha256: str
    length: int

    @property
    def product(self) -> str:
        return str(self.manifest["product"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def release_counter(self) -> int:
        return int(self.manifest["release_counter"])

    @property
    def target_name(self) -> str:
        return target_name(self.product, self.version)

    def assigned_target(self) -> AssignedTarget:
        """The target a factory installs straight from this bundle, with no director: identity and hash
        from the bundle, hardware and minimum version from its manifest."""
        return AssignedTarget(
            name=self.target_name,
            length=self.length,
            hashes={"sha256": self.sha256},
            product=self.product,
            version=self.version,
            release_counter=self.release_counter,
            hardware_ids=tuple(self.manifest["hardware_ids"]),
            min_from_version=self.manifest["min_from_version"],
        )

    def target_custom(self) -> dict[str, Any]:
        """The target's ``custom`` as the contract (docs/updates-format.md) defines it."""
        m = self.manifest
        return {
            "medsec": {
                "product": m["product"],
                "version": m["version"],
                "release_counter": m["release_counter"],
                "hardware_ids": list(m["hardware_ids"]),
                "min_from_version": m["min_from_version"],
                "notes": dict(m["notes"]),
                "expected_downtime_minutes": m["expected_downtime_minutes"],
                "rollback_supported": m["rollback_supported"],
            }
        }

    def target_file(self) -> TargetFile:
        return TargetFile(self.length, {"sha256": self.sha256}, self.target_name, {"custom": self.target_custom()})


@dataclass(frozen=True)
class SignedRelease:
    target_name: str
    bin: str
    bin_version: int
    targets_version: int
    release_counter: int


@dataclass(frozen=True)
class PublishedRelease:
    target_name: str
    target_path: Path
    snapshot_version: int
    timestamp_version: int


def target_name(product: str, version: str) -> str:
    return f"{product}/{version}/{BUNDLE_NAME}"


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _payload_files(payload_dir: Path) -> list[tuple[str, Path]]:
    if not payload_dir.is_dir():
        raise UserInputError(f"payload folder {payload_dir} does not exist")
    files: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(payload_dir, followlinks=False):
        base = Path(dirpath)
        for d in dirnames:
            if (base / d).is_symlink():
                raise UserInputError(f"{base / d} is a symlink; payloads hold regular files only")
        for name in filenames:
            p = base / name
            st = p.lstat()
            if not stat.S_ISREG(st.st_mode):
                raise UserInputError(f"{p} is not a regular file; payloads hold regular files only")
            rel = p.relative_to(payload_dir).as_posix()
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError as e:
                raise UserInputError(f"{p!r}: file names must be UTF-8") from e
            files.append((rel, p))
    return sorted(files, key=lambda item: item[0].encode("utf-8"))


def _mode(path: Path) -> int:
    return 0o755 if path.stat().st_mode & 0o111 else 0o644


def minimal_sbom(product: str, version: str, created: str, payload: Sequence[Mapping[str, Any]]) -> bytes:
    """A CycloneDX 1.6 SBOM listing each payload file as a ``file`` component with its SHA-256."""
    digest = hashlib.sha256(canonical_json(list(payload))).hexdigest()
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"urn:medsec:release:{product}:{version}:{digest}")
    bom = {
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{serial}",
        "version": 1,
        "metadata": {
            "timestamp": created,
            "tools": {"components": [{"type": "application", "name": "medsec", "version": __version__}]},
            "component": {
                "type": "firmware",
                "bom-ref": f"{product}@{version}",
                "name": product,
                "version": version,
            },
        },
        "components": [
            {
                "type": "file",
                "bom-ref": f"file:{f['path']}",
                "name": f["path"],
                "hashes": [{"alg": "SHA-256", "content": f["sha256"]}],
            }
            for f in payload
        ],
    }
    return (json.dumps(bom, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _check_json(data: bytes, what: str) -> None:
    try:
        json.loads(data)
    except ValueError as e:
        raise UserInputError(f"{what} is not JSON: {e}") from e


class _HashingReader(io.RawIOBase):
    """Feeds tarfile while hashing, to catch a payload file that changes during the build."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.hash.update(data)
        return data


def _tarinfo(name: str, size: int, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = mtime
    info.type = tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_release(
    payload_dir: Path,
    product: str,
    version: str,
    release_counter: int,
    hardware_ids: Sequence[str],
    min_from_version: str | None,
    notes_en: str,
    notes_ja: str,
    fixed_vulnerabilities: Sequence[str],
    expected_downtime_minutes: int,
    rollback_supported: bool,
    out_path: Path,
    sbom_json: bytes | None = None,
    trust_db_json: bytes | None = None,
    *,
    created: datetime | None = None,
) -> ReleaseInfo:
    """Pack ``payload_dir`` into a release bundle at ``out_path`` (written atomically).

    ``created`` defaults to the newest payload file's mtime, so rebuilding the same tree gives the
    same bytes; reproducible-build pipelines pass ``SOURCE_DATE_EPOCH`` here.
    """
    if not _VERSION.match(version):
        raise UserInputError(f"version {version!r} must be letters, digits and . + _ ~ - (at most 64)")
    if release_counter < 1:
        raise UserInputError("release_counter must be a positive integer")
    if not hardware_ids or any(not h or not isinstance(h, str) for h in hardware_ids):
        raise UserInputError("at least one hardware id is needed")
    if expected_downtime_minutes < 0:
        raise UserInputError("expected_downtime_minutes cannot be negative")
    validate_product(product)
    files = _payload_files(payload_dir)
    if not files:
        raise UserInputError(f"payload folder {payload_dir} is empty")
    if created is None:
        created = datetime.fromtimestamp(max(int(p.stat().st_mtime) for _, p in files), UTC)
    created_text = _rfc3339(created)
    mtime = int(created.timestamp())

    payload: list[dict[str, Any]] = []
    for rel, p in files:
        digest, size = _sha256_file(p)
        payload.append({"path": rel, "sha256": digest, "size": size, "mode": _mode(p)})
    if sbom_json is None:
        sbom_json = minimal_sbom(product, version, created_text, payload)
    else:
        _check_json(sbom_json, "the SBOM")
    if trust_db_json is not None:
        _check_json(trust_db_json, "the trust database")
    manifest = {
        "format": RELEASE_FORMAT,
        "product": product,
        "version": version,
        "release_counter": release_counter,
        "hardware_ids": sorted(set(hardware_ids)),
        "min_from_version": min_from_version,
        "created": created_text,
        "payload": payload,
        "sbom": hashlib.sha256(sbom_json).hexdigest(),
        "trust_db": hashlib.sha256(trust_db_json).hexdigest() if trust_db_json is not None else None,
        "notes": {"en": notes_en, "ja": notes_ja},
        "fixed_vulnerabilities": list(fixed_vulnerabilities),
        "expected_downtime_minutes": expected_downtime_minutes,
        "rollback_supported": rollback_supported,
    }
    try:
        manifest_bytes = canonical_json(manifest)
    except CanonicalEncodingError as e:
        raise UserInputError(f"release manifest: {e.diagnostics()}") from e

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.partial")
    try:
        with tmp.open("wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in ((MANIFEST, manifest_bytes), (SBOM, sbom_json), (TRUST_DB, trust_db_json)):
                if data is not None:
                    tar.addfile(_tarinfo(name, len(data), 0o644, mtime), io.BytesIO(data))
            for entry, (_, p) in zip(payload, files, strict=True):
                with p.open("rb") as f:
                    reader = _HashingReader(f)
                    info = _tarinfo(PAYLOAD_PREFIX + str(entry["path"]), int(entry["size"]), int(entry["mode"]), mtime)
                    tar.addfile(info, reader)
                    if reader.hash.hexdigest() != entry["sha256"]:
                        raise ReleaseError(f"{p} changed while the bundle was being built")
            raw.flush()
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    digest, length = _sha256_file(out_path)
    logger.info("built %s %s (counter %d) -> %s", product, version, release_counter, out_path)
    return ReleaseInfo(out_path, manifest, digest, length)


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        name = member.name
        if name.startswith("/") or ".." in name.split("/") or not member.isreg():
            raise ReleaseError(f"bundle member {name!r} is not a safe regular file")
        yield member


def read_bundle(path: Path) -> ReleaseInfo:
    """Read a bundle and check every member against its manifest; ReleaseError if anything differs."""
    try:
        digest, length = _sha256_file(path)
        with tarfile.open(path, mode="r:") as tar:
            members = _members(tar)
            first = next(members, None)
            if first is None or first.name != MANIFEST or first.size > _MAX_MANIFEST:
                raise ReleaseError(f"{path}: the first member must be {MANIFEST}")
            f = tar.extractfile(first)
            assert f is not None
            manifest = json.loads(f.read())
            if not isinstance(manifest, dict) or manifest.get("format") != RELEASE_FORMAT:
                raise ReleaseError(f"{path}: manifest format is not {RELEASE_FORMAT}")
            expected = {PAYLOAD_PREFIX + e["path"]: (e["sha256"], e["size"]) for e in manifest["payload"]}
            expected[SBOM] = (manifest["sbom"], None)
            if manifest.get("trust_db") is not None:
                expected[TRUST_DB] = (manifest["trust_db"], None)
            seen = set()
            for member in members:
                if member.name not in expected or member.name in seen:
                    raise ReleaseError(f"{path}: member {member.name!r} is not in the manifest")
                seen.add(member.name)
                want_hash, want_size = expected[member.name]
                data = tar.extractfile(member)
                assert data is not None
                h = hashlib.sha256()
                while chunk := data.read(_CHUNK):
                    h.update(chunk)
                if h.hexdigest() != want_hash or (want_size is not None and member.size != want_size):
                    raise ReleaseError(f"{path}: {member.name} does not match the manifest")
            if seen != set(expected):
                raise ReleaseError(f"{path}: missing members {sorted(set(expected) - seen)}")
    except OSError as e:
        raise ReleaseError(f"cannot read bundle {path}: {e}") from e
    except tarfile.TarError as e:
        raise ReleaseError(f"{path} is not a tar file: {e}") from e
    except (ValueError, KeyError, TypeError) as e:
        raise ReleaseError(f"{path}: malformed manifest: {e}") from e
    return ReleaseInfo(path, manifest, digest, length)


def _counter(target: TargetFile) -> int:
    custom: Any = target.unrecognized_fields.get("custom")
    try:
        return int(custom["medsec"]["release_counter"])
    except (TypeError, KeyError, ValueError) as e:
        raise ReleaseError(f"signed target {target.path} has no medsec.release_counter") from e


def sign_release(
    repo: ImageRepository,
    bundle: Path,
    targets_signer: Signer | Sequence[Signer],
    *,
    now: datetime | None = None,
) -> SignedRelease:
    """Offline step: add the bundle's target to its hash bin and sign bin and targets.

    Refuses a ``release_counter`` that is not greater than every release already signed for the
    product (SM-6: devices never go back, and the repository never offers a way back).
    """
    now = now or utc_now()
    signers = [targets_signer] if isinstance(targets_signer, Signer) else list(targets_signer)
    info = read_bundle(bundle)
    if info.product != repo.product:
        raise ReleaseError(f"bundle is for product {info.product!r}, repository is {repo.product!r}")
    with repo.writing():  # the next targets and bin versions are ours alone
        existing = repo.signed_targets()
        if info.target_name in existing:
            raise ReleaseError(f"{info.target_name} is already signed; a released version is never re-signed")
        highest = max((_counter(t) for t in existing.values()), default=0)
        if info.release_counter <= highest:
            raise ReleaseCounterNotIncreasing(
                f"release_counter {info.release_counter} is not greater than {highest}, "
                f"the highest already signed for {repo.product}"
            )
        old_targets = repo.load_targets()
        targets = copy.deepcopy(old_targets.signed)
        targets.version += 1
        targets.expires = expiry(now, repo.policy.targets)
        targets_md = Metadata(targets)
        sign_role(targets_md, repo.root().signed, "targets", signers)

        bin_name = repo.succinct_roles(targets).get_role_for_target(info.target_name)
        old_bin = repo.load_targets(bin_name)
        b = copy.deepcopy(old_bin.signed)
        b.version += 1
        b.expires = expiry(now, repo.policy.bins)
        b.targets[info.target_name] = info.target_file()
        bin_md = Metadata(b)
        sign_role(bin_md, targets, bin_name, signers)

        repo.write_versioned(bin_name, bin_md)
        repo.write_versioned("targets", targets_md)
        logger.info("signed %s into %s v%d", info.target_name, bin_name, b.version)
        return SignedRelease(info.target_name, bin_name, b.version, targets.version, info.release_counter)


def publish(
    repo: ImageRepository,
    bundle: Path,
    online: OnlineSigners,
    *,
    now: datetime | None = None,
) -> PublishedRelease:
    """Place a signed bundle under ``targets/`` and re-sign snapshot and timestamp (online keys)."""
    now = now or utc_now()
    info = read_bundle(bundle)
    with repo.writing():
        signed = repo.signed_targets()
        target = signed.get(info.target_name)
        if target is None:
            raise ReleaseError(f"{info.target_name} is not signed yet; run 'medsec release sign' first")
        if target.length != info.length or target.hashes.get("sha256") != info.sha256:
            raise ReleaseError(f"{bundle} is not the bundle that was signed as {info.target_name}")
        dest = repo.target_path(target)
        if not dest.is_file() or _sha256_file(dest) != (info.sha256, info.length):
            copy_file_atomically(bundle, dest)
        missing = sorted(name for name, t in signed.items() if not repo.target_path(t).is_file())
        if missing:
            raise ReleaseError(f"signed targets without their files in the repository: {', '.join(missing)}")
        snapshot = repo.publish_snapshot(online, now)
        timestamp = repo.timestamp()
        logger.info("published %s (snapshot v%d)", info.target_name, snapshot.signed.version)
        return PublishedRelease(info.target_name, dest, snapshot.signed.version, timestamp.signed.version)
