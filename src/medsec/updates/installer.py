"""Installing a verified bundle: the backend interface and the directory A/B backend.

A backend receives a bundle whose bytes already matched the signed target (TUF 5.7.3) and the
:class:`~medsec.updates.client.AssignedTarget` itself. Reading the bundle checks, in one pass
over the tar (docs/updates-format.md, "Release bundle"):

- ``manifest.json`` comes first and agrees with the signed target (product, version, release
  counter, hardware ids);
- every other member is a regular file or folder; links, devices and FIFOs are refused;
- every payload path is relative, has no ``..`` and stays inside the slot;
- every payload file is listed in the manifest, has its size and SHA-256, and gets its mode;
- nothing listed is missing, nothing unlisted is present.

The manifest is trusted only because the bundle's hash is signed; nothing is written outside
the inactive slot, and the slot counts as complete only after all of that passed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from medsec.atomic_file import fsync_dir
from medsec.errors import Error
from medsec.updates.client import AssignedTarget, InstalledRelease
from medsec.updates.device_errors import (
    BundleRejected,
    ManifestMismatch,
    UnsafeBundlePath,
    UpdateStateError,
)
from medsec.updates.fetcher import Failpoint, copy_target, no_failpoint
from medsec.updates.slots import MARKER_DIR, DirectorySlots, SlotRelease, SlotState

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "medsec-release/v1"
MANIFEST_MEMBER = "manifest.json"
SBOM_MEMBER = "sbom.cdx.json"
TRUSTDB_MEMBER = "trustdb.json"
PAYLOAD_PREFIX = "payload/"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_PATH = 1024
COPY_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class PayloadFile:
    path: str
    sha256: str
    size: int
    mode: int


@dataclass(frozen=True)
class Manifest:
    product: str
    version: str
    release_counter: int
    hardware_ids: tuple[str, ...]
    payload: tuple[PayloadFile, ...]
    sbom_sha256: str
    trust_db_sha256: str | None
    raw: Mapping[str, Any]


@dataclass(frozen=True)
class InstallerStatus:
    """What the backend knows: the running slot and what each slot holds."""

    current: str | None
    committed: str | None
    trying: str | None
    attempts: int
    max_attempts: int
    running: InstalledRelease | None
    last_rollback: str | None


class InstallerBackend(Protocol):
    """What :class:`~medsec.updates.device_update.DeviceUpdater` needs from an installer."""

    def recover(self) -> InstallerStatus:
        """Repair what a crash left half-done; return the status."""

    def status(self) -> InstallerStatus: ...

    def installed(self) -> InstalledRelease | None:
        """The committed release (what the device falls back to)."""

    def target_slot(self) -> str:
        """The slot the next install writes to."""

    def holds(self, slot: str, target: AssignedTarget) -> bool:
        """Whether ``slot`` is a complete install of ``target``."""

    def install(self, bundle: Path, target: AssignedTarget, slot: str) -> None:
        """Verify and write ``bundle`` into ``slot`` (never the running or committed one)."""

    def switch(self, slot: str) -> None:
        """Make ``slot`` the running one, on trial. Idempotent."""

    def slot_path(self, slot: str) -> Path:
        """Where ``slot``'s files are, for health checks."""

    def record_attempt(self) -> int:
        """Count one attempt of the trial slot (persisted first); return the count."""

    def commit(self) -> None: ...

    def rollback(self, reason: str) -> None: ...


# -- the bundle ------------------------------------------------------------------------------------


def _safe_relpath(path: Any) -> str:
    if not isinstance(path, str) or not path or len(path) > MAX_PATH or "\x00" in path or "\\" in path:
        raise UnsafeBundlePath(f"payload path {path!r} is not a plain relative path")
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or PurePosixPath(path).is_absolute():
        raise UnsafeBundlePath(f"payload path {path!r} leaves the slot or is not normalised")
    if parts[0] == MARKER_DIR:
        raise UnsafeBundlePath(f"payload path {path!r} uses the reserved folder {MARKER_DIR}")
    return path


def _hex256(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise BundleRejected(f"{what} is not a lower-case SHA-256 hex digest")
    return value


def _mode(value: Any, path: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            value = -1
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        # Set-id and sticky bits are refused: a release has no reason to ship them.
        raise BundleRejected(f"payload {path!r}: mode {value!r} is not a permission mode from 0 to 0o777")
    return value


def parse_manifest(data: bytes) -> Manifest:
    """Parse ``manifest.json``; raise BundleRejected/UnsafeBundlePath when it is unusable."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise BundleRejected(f"manifest.json is not JSON: {e}") from e
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise BundleRejected(f"manifest.json is not {MANIFEST_FORMAT}")
    counter = raw.get("release_counter")
    if not isinstance(counter, int) or isinstance(counter, bool):
        raise BundleRejected("manifest release_counter is not an integer")
    hardware = raw.get("hardware_ids")
    if not isinstance(hardware, list) or not all(isinstance(h, str) for h in hardware):
        raise BundleRejected("manifest hardware_ids is not a list of strings")
    entries = raw.get("payload")
    if not isinstance(entries, list):
        raise BundleRejected("manifest payload is not a list")
    payload = []
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            raise BundleRejected("manifest payload entry is not an object")
        path = _safe_relpath(entry.get("path"))
        if path in seen:
            raise BundleRejected(f"payload {path!r} is listed twice")
        seen.add(path)
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BundleRejected(f"payload {path!r}: size is not a non-negative integer")
        payload.append(
            PayloadFile(
                path, _hex256(entry.get("sha256"), f"payload {path!r} sha256"), size, _mode(entry.get("mode"), path)
            )
        )
    # A file must not also be another file's folder.
    for path in seen:
        parent = PurePosixPath(path).parent
        while str(parent) != ".":
            if str(parent) in seen:
                raise BundleRejected(f"payload {str(parent)!r} is both a file and a folder")
            parent = parent.parent
    trust_db = raw.get("trust_db")
    for name in ("product", "version"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise BundleRejected(f"manifest {name} is missing")
    return Manifest(
        product=raw["product"],
        version=raw["version"],
        release_counter=counter,
        hardware_ids=tuple(hardware),
        payload=tuple(payload),
        sbom_sha256=_hex256(raw.get("sbom"), "manifest sbom"),
        trust_db_sha256=None if trust_db is None else _hex256(trust_db, "manifest trust_db"),
        raw=raw,
    )


def check_manifest(manifest: Manifest, target: AssignedTarget) -> None:
    """The manifest must say what the signed target says (docs/updates-format.md)."""
    pairs = [
        ("product", manifest.product, target.product),
        ("version", manifest.version, target.version),
        ("release_counter", manifest.release_counter, target.release_counter),
        ("hardware_ids", sorted(manifest.hardware_ids), sorted(target.hardware_ids)),
    ]
    if target.min_from_version is not None:
        pairs.append(("min_from_version", manifest.raw.get("min_from_version"), target.min_from_version))
    for name, inside, signed in pairs:
        if inside != signed:
            raise ManifestMismatch(f"the bundle's manifest says {name} {inside!r}, the signed target {signed!r}")


def _open_bundle(bundle: Path) -> tarfile.TarFile:
    try:
        # Stream mode: one forward pass, members in the order the format fixes.
        return tarfile.open(bundle, mode="r|")
    except (OSError, tarfile.TarError) as e:
        raise BundleRejected(f"{bundle} is not a tar archive: {e}") from e


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if not member.isreg() or member.size > limit:
        raise BundleRejected(f"bundle member {member.name!r} is not a regular file of at most {limit} bytes")
    f = tar.extractfile(member)
    assert f is not None
    with f:
        return f.read()


def read_manifest(bundle: Path) -> Manifest:
    """Read and parse only the manifest (the first member)."""
    with _open_bundle(bundle) as tar:
        try:
            first = tar.next()
        except tarfile.TarError as e:
            raise BundleRejected(f"{bundle}: {e}") from e
        if first is None or first.name != MANIFEST_MEMBER:
            raise BundleRejected(f"the first member of {bundle.name} is not {MANIFEST_MEMBER}")
        return parse_manifest(_read_member(tar, first, MAX_MANIFEST_BYTES))


def unpack_bundle(
    bundle: Path, target: AssignedTarget, destination: Path, *, failpoint: Failpoint = no_failpoint
) -> Manifest:
    """Check ``bundle`` and write its payload below the empty folder ``destination``; return the manifest."""
    created_dirs: set[Path] = {destination}
    with _open_bundle(bundle) as tar:
        try:
            members = iter(tar)
            first = next(members, None)
            if first is None or first.name != MANIFEST_MEMBER:
                raise BundleRejected(f"the first member of {bundle.name} is not {MANIFEST_MEMBER}")
            manifest = parse_manifest(_read_member(tar, first, MAX_MANIFEST_BYTES))
            check_manifest(manifest, target)
            expected = {p.path: p for p in manifest.payload}
            written: set[str] = set()
            extras: dict[str, str] = {}
            for member in members:
                name = member.name
                if not (member.isreg() or member.isdir()):
                    raise UnsafeBundlePath(f"bundle member {name!r} is a link or special file")
                if name in (SBOM_MEMBER, TRUSTDB_MEMBER):
                    if name in extras:
                        raise BundleRejected(f"{name} appears twice")
                    extras[name] = _write_member(tar, member, destination / MARKER_DIR / name)
                    continue
                if member.isdir() and name.rstrip("/") == PAYLOAD_PREFIX.rstrip("/"):
                    continue
                if not name.startswith(PAYLOAD_PREFIX):
                    raise BundleRejected(f"unexpected bundle member {name!r}")
                rel = _safe_relpath(
                    name[len(PAYLOAD_PREFIX) :].rstrip("/") if member.isdir() else name[len(PAYLOAD_PREFIX) :]
                )
                if member.isdir():
                    _make_dirs(destination, rel, created_dirs, include_last=True)
                    continue
                entry = expected.get(rel)
                if entry is None:
                    raise BundleRejected(f"payload file {rel!r} is not listed in the manifest")
                if rel in written:
                    raise BundleRejected(f"payload file {rel!r} appears twice")
                if member.size != entry.size:
                    raise BundleRejected(
                        f"payload file {rel!r} has {member.size} bytes, the manifest says {entry.size}"
                    )
                _make_dirs(destination, rel, created_dirs, include_last=False)
                digest = _write_member(tar, member, destination / rel, mode=entry.mode)
                if digest != entry.sha256:
                    raise BundleRejected(f"payload file {rel!r} does not match its SHA-256 in the manifest")
                written.add(rel)
                failpoint("install.file")
        except tarfile.TarError as e:
            raise BundleRejected(f"{bundle.name} is a damaged tar archive: {e}") from e
    missing = sorted(set(expected) - written)
    if missing:
        raise BundleRejected(f"payload file {missing[0]!r} is listed in the manifest but missing")
    if extras.get(SBOM_MEMBER) != manifest.sbom_sha256:
        raise BundleRejected(f"{SBOM_MEMBER} is missing or does not match the manifest")
    if extras.get(TRUSTDB_MEMBER) != manifest.trust_db_sha256:
        raise BundleRejected(f"{TRUSTDB_MEMBER} is missing, unexpected or does not match the manifest")
    for folder in created_dirs:
        fsync_dir(folder)
    return manifest


def _make_dirs(root: Path, rel: str, created: set[Path], *, include_last: bool) -> None:
    parts = rel.split("/")
    current = root
    for part in parts if include_last else parts[:-1]:
        current = current / part
        try:
            os.mkdir(current, 0o755)
            created.add(current)
            created.add(current.parent)
        except FileExistsError:
            # Only folders this unpack made can exist here, and it never makes links.
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                raise UnsafeBundlePath(f"payload folder {rel!r} collides with a file") from None


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, mode: int = 0o644) -> str:
    if not member.isreg():
        raise BundleRejected(f"bundle member {member.name!r} is not a regular file")
    source = tar.extractfile(member)
    assert source is not None
    hasher = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with source, os.fdopen(fd, "wb") as out:
        _copy(source, out, hasher)
        os.fchmod(out.fileno(), mode)
        out.flush()
        os.fsync(out.fileno())
    return hasher.hexdigest()


def _copy(source: IO[bytes], out: IO[bytes], hasher: Any) -> None:
    while block := source.read(COPY_BLOCK):
        hasher.update(block)
        out.write(block)


# -- the directory backend -------------------------------------------------------------------------


TrustDbCheck = Callable[[bytes | None, str, int], None]
"""Checks a new slot's trust database (bytes or None, product, release counter); raises to refuse it."""


class DirectoryInstaller:
    """A/B folders under ``ROOT/slots`` (see :mod:`medsec.updates.slots`).

    With ``trustdb_check`` (e.g. :func:`medsec.protect.trustdb.installer_check`), a bundle whose
    trust database is missing or refused never becomes a complete slot (RL-3): the trust database
    switches with the slot, so a slot must not hold one the device would refuse to enforce.
    """

    def __init__(
        self,
        slots: DirectorySlots,
        *,
        failpoint: Failpoint = no_failpoint,
        trustdb_check: TrustDbCheck | None = None,
    ) -> None:
        self.slots = slots
        self._failpoint = failpoint
        self._trustdb_check = trustdb_check

    def recover(self) -> InstallerStatus:
        self.slots.recover()
        return self.status()

    def status(self) -> InstallerStatus:
        state: SlotState = self.slots.state()
        current = self.slots.current()
        running = self.slots.release(current) if current is not None else None
        return InstallerStatus(
            current=current,
            committed=state.committed,
            trying=state.trying,
            attempts=state.attempts,
            max_attempts=self.slots.max_attempts,
            running=InstalledRelease(running.version, running.release_counter, running.target_name)
            if running
            else None,
            last_rollback=state.last_rollback,
        )

    def installed(self) -> InstalledRelease | None:
        committed = self.slots.state().committed
        release = self.slots.release(committed) if committed is not None else None
        return InstalledRelease(release.version, release.release_counter, release.target_name) if release else None

    def target_slot(self) -> str:
        return self.slots.inactive()

    def holds(self, slot: str, target: AssignedTarget) -> bool:
        release = self.slots.release(slot)
        return (
            release is not None and release.target_name == target.name and release.target_hashes == dict(target.hashes)
        )

    def install(self, bundle: Path, target: AssignedTarget, slot: str) -> None:
        # The bundle may have sat on disk for days: check it against the signed hashes again (RL-1).
        copy_target(bundle, bundle, target.length, target.hashes)
        folder = self.slots.begin_write(slot)
        self._failpoint("install.cleared")
        manifest = unpack_bundle(bundle, target, folder, failpoint=self._failpoint)
        self._failpoint("install.unpacked")
        if self._trustdb_check is not None:
            self._check_trust_db(slot, manifest)
        self.slots.finish_write(
            slot,
            SlotRelease(
                product=manifest.product,
                version=manifest.version,
                release_counter=manifest.release_counter,
                target_name=target.name,
                target_hashes=dict(target.hashes),
                manifest=dict(manifest.raw),
            ),
        )
        logger.info("installed %s %s into slot %s", manifest.product, manifest.version, slot)

    def _check_trust_db(self, slot: str, manifest: Manifest) -> None:
        assert self._trustdb_check is not None
        path = self.slots.trust_db_path(slot)
        data = path.read_bytes() if manifest.trust_db_sha256 is not None else None
        try:
            self._trustdb_check(data, manifest.product, manifest.release_counter)
        except Error as e:
            raise BundleRejected(f"the bundle's trust database is refused: {e.diagnostics()}") from e

    def switch(self, slot: str) -> None:
        self.slots.switch(slot)

    def slot_path(self, slot: str) -> Path:
        return self.slots.slot_dir(slot)

    def record_attempt(self) -> int:
        return self.slots.record_attempt()

    def commit(self) -> None:
        self.slots.commit()

    def rollback(self, reason: str) -> None:
        if self.slots.state().committed is None:
            raise UpdateStateError("nothing to roll back to: no committed slot")
        self.slots.rollback(reason)
