"""A static-file TUF image repository for one product line (SM-1, SM-6).

Layout (``<repo>/<product>/``), consistent snapshots (TUF 5.5)::

    metadata/1.root.json … N.root.json
    metadata/timestamp.json
    metadata/<v>.snapshot.json
    metadata/<v>.targets.json            delegates every path to hash bins (TAP 15)
    metadata/<v>.bins-<prefix>.json
    targets/<dir>/<sha256>.<basename>    e.g. targets/infusion-pump/1.1.0/<sha256>.release.tar

The one mutable file is ``timestamp.json``; everything else is written under a new name. The
repository's published state is whatever ``timestamp.json`` points at, so replacing it is the
commit point of every change: a crash before it leaves the previous state served, a crash after
it leaves the new one complete. Targets and bins metadata signed offline but not yet in a
snapshot are *staged*: they are on disk, and the next :meth:`ImageRepository.publish_snapshot`
picks the newest version of each.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.exceptions import UnsignedMetadataError

from medsec.atomic_file import atomic_write, fsync_dir
from medsec.updates.errors import KeyCeremonyError, RepositoryError
from medsec.updates.metadata_files import expiry, metadata_bytes, read_metadata, sign, write_metadata
from medsec.updates.roots import RoleKeys, RootHistory, new_root
from medsec.updates.tuf_types import (
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Signer,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)

logger = logging.getLogger(__name__)

BINS_PREFIX = "bins"
# The write lock, in the product folder. Dot-files are never served (medsec.server.api_updates).
LOCK_FILE = ".write.lock"
DEFAULT_BIN_BITS = 4  # 16 bins
_PRODUCT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_VERSIONED = re.compile(r"^([1-9][0-9]*)\.(.+)\.json$")


@dataclass(frozen=True)
class ExpiryPolicy:
    """Lifetimes of each role, and when the online roles are re-signed before they expire."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    bins: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)
    snapshot_resign_before: timedelta = timedelta(days=3)
    timestamp_resign_before: timedelta = timedelta(hours=12)


@dataclass(frozen=True)
class OnlineSigners:
    """The server's online keys for one image repository."""

    snapshot: Signer = field(repr=False)
    timestamp: Signer = field(repr=False)


@dataclass(frozen=True)
class RefreshResult:
    snapshot_version: int | None
    timestamp_version: int | None


def validate_product(product: str) -> str:
    if not _PRODUCT.match(product):
        raise RepositoryError(f"product name {product!r} must be lowercase letters, digits, '.', '_' or '-'")
    return product


def check_signers(delegator: Root | Targets, role: str, signers: Sequence[Signer]) -> None:
    """Raise unless ``signers`` hold enough of ``role``'s keys to meet its threshold."""
    try:
        spec = delegator.get_delegated_role(role)
    except ValueError as e:
        raise KeyCeremonyError(str(e)) from e
    known = {s.public_key.keyid for s in signers} & set(spec.keyids)
    if len(known) < spec.threshold:
        raise KeyCeremonyError(
            f"{role}: {len(known)} of the given keys belong to the role, {spec.threshold} needed "
            f"(role keys: {', '.join(k[:12] for k in spec.keyids)})"
        )


def sign_role(md: Metadata[Any], delegator: Root | Targets, role: str, signers: Sequence[Signer]) -> None:
    """Sign ``md`` as ``role`` and check the result verifies as the client would check it."""
    check_signers(delegator, role, signers)
    sign(md, signers)
    try:
        delegator.verify_delegate(role, md.signed_bytes, md.signatures)
    except UnsignedMetadataError as e:
        raise KeyCeremonyError(f"{role}: {e}") from e


class ImageRepository:
    """One product's image repository in ``<repo_root>/<product>/``."""

    def __init__(self, repo_root: Path, product: str, policy: ExpiryPolicy | None = None) -> None:
        self.product = validate_product(product)
        self.path = repo_root / product
        self.metadata_dir = self.path / "metadata"
        self.targets_dir = self.path / "targets"
        self.policy = policy or ExpiryPolicy()
        self.roots = RootHistory(self.metadata_dir)
        self._held = threading.local()  # how deep this thread is in writing(); each thread locks on its own

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the repository's write lock (``flock`` on ``LOCK_FILE``; re-entrant within a thread).

        Everything that takes a new metadata version runs under it: the server's upkeep, ``medsec
        release sign`` and ``publish``, key ceremonies, and replicas sharing the folder. Without it two
        writers read the same newest version and both try to write the next one.
        """
        depth = getattr(self._held, "depth", 0)
        if depth:
            self._held.depth = depth + 1
            try:
                yield
            finally:
                self._held.depth = depth
            return
        try:
            # Read-only is enough for flock, so any account that may write the repository can take it.
            fd = os.open(self.path / LOCK_FILE, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise RepositoryError(f"cannot open the write lock of {self.path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._held.depth = 1
            try:
                yield
            finally:
                self._held.depth = 0
        finally:
            os.close(fd)  # releases the lock

    def __repr__(self) -> str:
        return f"ImageRepository({str(self.path)!r})"

    # ---- creation -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        repo_root: Path,
        product: str,
        roles: Mapping[str, RoleKeys],
        *,
        root_signers: Sequence[Signer],
        targets_signers: Sequence[Signer],
        online: OnlineSigners,
        now: datetime,
        bin_bits: int = DEFAULT_BIN_BITS,
        policy: ExpiryPolicy | None = None,
    ) -> ImageRepository:
        """Root v1, targets delegating to ``2**bin_bits`` empty bins, snapshot and timestamp.

        Everything is built in a hidden folder next to the final one and renamed into place, so a
        crash leaves either no repository or a complete one.
        """
        validate_product(product)
        final = repo_root / product
        if final.exists():
            raise RepositoryError(f"{final} already exists")
        repo_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=repo_root, prefix=f".{product}.creating."))
        try:
            tmp_repo_root = staging / "r"
            repo = cls(tmp_repo_root, product, policy)
            root = new_root(roles, root_signers, now, consistent_snapshot=True, lifetime=repo.policy.root)
            repo.roots.append(root)
            targets_keys = roles["targets"]
            succinct = SuccinctRoles(
                [k.keyid for k in targets_keys.keys], targets_keys.threshold, bin_bits, BINS_PREFIX
            )
            targets = Targets(
                expires=expiry(now, repo.policy.targets),
                delegations=Delegations(keys={k.keyid: k for k in targets_keys.keys}, succinct_roles=succinct),
            )
            targets_md = Metadata(targets)
            sign_role(targets_md, root.signed, "targets", targets_signers)
            for name in succinct.get_roles():
                bin_md = Metadata(Targets(expires=expiry(now, repo.policy.bins)))
                sign_role(bin_md, targets, name, targets_signers)
                repo.write_versioned(name, bin_md)
            repo.write_versioned("targets", targets_md)
            repo.targets_dir.mkdir(parents=True, exist_ok=True)
            repo.publish_snapshot(online, now)
            os.rename(tmp_repo_root / product, final)
            fsync_dir(repo_root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("created image repository %s", final)
        return cls(repo_root, product, policy)

    # ---- reading ----------------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.metadata_dir / "timestamp.json").is_file()

    def root(self) -> Metadata[Root]:
        return self.roots.latest()

    def timestamp(self) -> Metadata[Timestamp]:
        return read_metadata(self.metadata_dir / "timestamp.json", Timestamp)

    def snapshot(self) -> Metadata[Snapshot]:
        """The snapshot the published timestamp points at."""
        version = self.timestamp().signed.snapshot_meta.version
        return read_metadata(self.metadata_dir / f"{version}.snapshot.json", Snapshot)

    def on_disk_versions(self, role: str) -> list[int]:
        versions = []
        for p in self.metadata_dir.iterdir():
            m = _VERSIONED.match(p.name)
            if m and m.group(2) == role:
                versions.append(int(m.group(1)))
        return sorted(versions)

    def latest_version(self, role: str) -> int:
        versions = self.on_disk_versions(role)
        if not versions:
            raise RepositoryError(f"no {role} metadata in {self.metadata_dir}")
        return versions[-1]

    def load_targets(self, role: str = "targets", version: int | None = None) -> Metadata[Targets]:
        """``role`` (``targets`` or a bin) at ``version``, or the newest on disk (staged included)."""
        v = version if version is not None else self.latest_version(role)
        md = read_metadata(self.metadata_dir / f"{v}.{role}.json", Targets)
        if md.signed.version != v:
            raise RepositoryError(f"{v}.{role}.json holds version {md.signed.version}")
        return md

    def succinct_roles(self, targets: Targets | None = None) -> SuccinctRoles:
        t = targets or self.load_targets().signed
        if t.delegations is None or t.delegations.succinct_roles is None:
            raise RepositoryError("targets metadata does not delegate to hash bins")
        return t.delegations.succinct_roles

    def bin_names(self) -> list[str]:
        return list(self.succinct_roles().get_roles())

    def bin_for(self, target_name: str) -> str:
        return self.succinct_roles().get_role_for_target(target_name)

    def signed_targets(self) -> dict[str, TargetFile]:
        """Every target in the newest bins on disk: published ones and staged ones."""
        found: dict[str, TargetFile] = {}
        for name in self.bin_names():
            found.update(self.load_targets(name).signed.targets)
        return found

    def published_targets(self) -> dict[str, TargetFile]:
        """Every target reachable from the published snapshot."""
        snapshot = self.snapshot().signed
        found: dict[str, TargetFile] = {}
        for name in self.bin_names():
            meta = snapshot.meta.get(f"{name}.json")
            if meta is None:
                raise RepositoryError(f"snapshot does not list {name}")
            found.update(self.load_targets(name, meta.version).signed.targets)
        return found

    def target_path(self, target: TargetFile) -> Path:
        """Where a target's bytes live: TUF 5.5.2 prefixes the basename with its hash."""
        digest = target.hashes.get("sha256")
        if digest is None:
            raise RepositoryError(f"target {target.path} has no sha256 hash")
        dirname, _, basename = target.path.rpartition("/")
        return self.targets_dir / dirname / f"{digest}.{basename}"

    # ---- writing ----------------------------------------------------------------------------

    def write_versioned(self, role: str, md: Metadata[Any]) -> Path:
        """Write ``<v>.<role>.json``; a version that is already on disk is never overwritten."""
        path = self.metadata_dir / f"{md.signed.version}.{role}.json"
        if path.exists():
            raise RepositoryError(f"{path.name} already exists; metadata versions are never rewritten")
        write_metadata(path, md)
        return path

    def verified_latest_targets(self) -> tuple[Metadata[Targets], dict[str, Metadata[Targets]]]:
        """The newest targets and bins on disk, each checked against its delegator's keys."""
        root = self.root().signed
        targets = self.load_targets()
        try:
            root.verify_delegate("targets", targets.signed_bytes, targets.signatures)
        except UnsignedMetadataError as e:
            raise RepositoryError(f"{targets.signed.version}.targets.json does not verify: {e}") from e
        bins: dict[str, Metadata[Targets]] = {}
        for name in self.succinct_roles(targets.signed).get_roles():
            md = self.load_targets(name)
            try:
                targets.signed.verify_delegate(name, md.signed_bytes, md.signatures)
            except UnsignedMetadataError as e:
                raise RepositoryError(f"{md.signed.version}.{name}.json does not verify: {e}") from e
            bins[name] = md
        return targets, bins

    def publish_snapshot(self, online: OnlineSigners, now: datetime) -> Metadata[Snapshot]:
        """Snapshot the newest verified targets and bins, then a timestamp for it (the commit)."""
        with self.writing():
            return self._publish_snapshot(online, now)

    def _publish_snapshot(self, online: OnlineSigners, now: datetime) -> Metadata[Snapshot]:
        root = self.root().signed
        targets, bins = self.verified_latest_targets()
        meta = {"targets.json": MetaFile(targets.signed.version)}
        meta.update({f"{name}.json": MetaFile(md.signed.version) for name, md in bins.items()})
        # Past the newest on disk, not just the published one: a crash between writing a snapshot
        # and the timestamp that names it leaves an orphan version that must not be reused.
        version = max(self.on_disk_versions("snapshot"), default=0) + 1
        if self.exists():
            current = self.snapshot().signed
            for name, old in current.meta.items():
                new = meta.get(name)
                if new is None or new.version < old.version:
                    raise RepositoryError(f"{name} would roll back from version {old.version}")
        snapshot = Metadata(Snapshot(version=version, expires=expiry(now, self.policy.snapshot), meta=meta))
        sign_role(snapshot, root, "snapshot", [online.snapshot])
        self.write_versioned("snapshot", snapshot)
        self._write_timestamp(snapshot, online.timestamp, now)
        return snapshot

    def refresh_timestamp(self, timestamp_signer: Signer, now: datetime) -> Metadata[Timestamp]:
        """A new timestamp version for the published snapshot (freshness, TUF 5.4)."""
        with self.writing():
            return self._write_timestamp(self.snapshot(), timestamp_signer, now)

    def refresh(self, online: OnlineSigners, now: datetime, *, force: bool = False) -> RefreshResult:
        """Re-sign the snapshot and/or timestamp when they are close to expiry (or always, ``force``)."""
        with self.writing():
            return self._refresh(online, now, force=force)

    def _refresh(self, online: OnlineSigners, now: datetime, *, force: bool) -> RefreshResult:
        snapshot = self.snapshot().signed
        timestamp = self.timestamp().signed
        root = self.root().signed
        snapshot_key_gone = not set(self.snapshot().signatures) & set(root.roles["snapshot"].keyids)
        timestamp_key_gone = not set(self.timestamp().signatures) & set(root.roles["timestamp"].keyids)
        new_snapshot = new_timestamp = None
        if force or snapshot_key_gone or snapshot.expires - now <= self.policy.snapshot_resign_before:
            new_snapshot = self.publish_snapshot(online, now).signed.version
            new_timestamp = self.timestamp().signed.version
        elif force or timestamp_key_gone or timestamp.expires - now <= self.policy.timestamp_resign_before:
            new_timestamp = self.refresh_timestamp(online.timestamp, now).signed.version
        return RefreshResult(new_snapshot, new_timestamp)

    def _write_timestamp(self, snapshot: Metadata[Snapshot], signer: Signer, now: datetime) -> Metadata[Timestamp]:
        data = metadata_bytes(snapshot)
        on_disk = (self.metadata_dir / f"{snapshot.signed.version}.snapshot.json").read_bytes()
        if on_disk != data:
            raise RepositoryError(f"{snapshot.signed.version}.snapshot.json changed on disk")
        version = self.timestamp().signed.version + 1 if self.exists() else 1
        snapshot_meta = MetaFile.from_data(snapshot.signed.version, data, ["sha256"])
        timestamp = Metadata(
            Timestamp(version=version, expires=expiry(now, self.policy.timestamp), snapshot_meta=snapshot_meta)
        )
        sign_role(timestamp, self.root().signed, "timestamp", [signer])
        # The one rename that publishes everything written before it.
        atomic_write(self.metadata_dir / "timestamp.json", metadata_bytes(timestamp))
        return timestamp
