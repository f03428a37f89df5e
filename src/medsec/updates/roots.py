"""Root metadata: the first version, rotations, and the ``N.root.json`` history they live in.

Pure functions build and check root metadata; :class:`RootHistory` is the thin file layer. A new
root is written only after it verifies under the previous root's threshold *and* its own
(TUF 5.3.4), so a mistake in a ceremony never produces a root that clients would refuse.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from medsec.updates.errors import KeyCeremonyError, RepositoryError
from medsec.updates.metadata_files import expiry, read_metadata, sign, write_metadata
from medsec.updates.tuf_types import Key, Metadata, Role, Root, Signer

ROOT_LIFETIME = timedelta(days=365)
TOP_LEVEL_ROLES = ("root", "targets", "snapshot", "timestamp")
_ROOT_FILE = re.compile(r"^([1-9][0-9]*)\.root\.json$")


@dataclass(frozen=True)
class RoleKeys:
    """The public keys and threshold of one top-level role."""

    keys: tuple[Key, ...]
    threshold: int = 1

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyCeremonyError("a role needs at least one key")
        if not 1 <= self.threshold <= len(self.keys):
            raise KeyCeremonyError(f"threshold {self.threshold} is not between 1 and {len(self.keys)} keys")
        if len({k.keyid for k in self.keys}) != len(self.keys):
            raise KeyCeremonyError("a role lists the same key twice")


def new_root(
    roles: Mapping[str, RoleKeys],
    signers: Sequence[Signer],
    now: datetime,
    *,
    consistent_snapshot: bool,
    lifetime: timedelta = ROOT_LIFETIME,
) -> Metadata[Root]:
    """Root version 1 for ``roles`` (all four top-level roles), signed by ``signers``."""
    missing = set(TOP_LEVEL_ROLES) - set(roles)
    if missing:
        raise KeyCeremonyError(f"root needs keys for {sorted(missing)}")
    root = Root(expires=expiry(now, lifetime), consistent_snapshot=consistent_snapshot)
    for name in TOP_LEVEL_ROLES:
        spec = roles[name]
        for key in spec.keys:
            root.add_key(key, name)
        root.roles[name].threshold = spec.threshold
    md = Metadata(root)
    sign(md, signers)
    verify_root(md, None)
    return md


def verify_root(md: Metadata[Root], previous: Metadata[Root] | None) -> None:
    """Raise unless ``md`` meets its own root threshold and, if given, the previous one (TUF 5.3.4)."""
    try:
        result = md.signed.get_root_verification_result(
            previous.signed if previous else None, md.signed_bytes, md.signatures
        )
    except ValueError as e:
        raise KeyCeremonyError(str(e)) from e
    if result.verified:
        return
    parts = []
    for label, r in (("previous root", result.first), ("new root", result.second)):
        if not r.verified:
            parts.append(f"{label}: {len(r.signed)} of {r.threshold} required signatures")
    raise KeyCeremonyError("root is not signed by enough keys: " + "; ".join(parts))


def next_root(
    current: Metadata[Root],
    now: datetime,
    *,
    replace: Mapping[str, RoleKeys] | None = None,
    lifetime: timedelta = ROOT_LIFETIME,
) -> Metadata[Root]:
    """An unsigned copy of ``current`` as version N+1, with the key sets of ``replace`` swapped in."""
    root = copy.deepcopy(current.signed)
    root.version = current.signed.version + 1
    root.expires = expiry(now, lifetime)
    for name, spec in (replace or {}).items():
        if name not in TOP_LEVEL_ROLES:
            raise KeyCeremonyError(f"{name!r} is not a top-level role")
        for keyid in list(root.roles[name].keyids):
            root.revoke_key(keyid, name)
        for key in spec.keys:
            root.add_key(key, name)
        root.roles[name] = Role(list(root.roles[name].keyids), spec.threshold)
    return Metadata(root)


def sign_root_rotation(
    current: Metadata[Root],
    now: datetime,
    *,
    replace: Mapping[str, RoleKeys],
    old_signers: Sequence[Signer],
    new_signers: Sequence[Signer],
    lifetime: timedelta = ROOT_LIFETIME,
) -> Metadata[Root]:
    """Root N+1 with new key sets, signed by the old root threshold and the new one (TUF 5.3.4)."""
    md = next_root(current, now, replace=replace, lifetime=lifetime)
    by_keyid: dict[str, Signer] = {}
    for s in [*old_signers, *new_signers]:
        by_keyid.setdefault(s.public_key.keyid, s)
    sign(md, list(by_keyid.values()))
    verify_root(md, current)
    return md


class RootHistory:
    """A folder of ``N.root.json`` files: every root version a client may have to walk through."""

    def __init__(self, metadata_dir: Path) -> None:
        self.metadata_dir = metadata_dir

    def versions(self) -> list[int]:
        if not self.metadata_dir.is_dir():
            return []
        found = (_ROOT_FILE.match(p.name) for p in self.metadata_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def path(self, version: int) -> Path:
        return self.metadata_dir / f"{version}.root.json"

    def latest(self) -> Metadata[Root]:
        versions = self.versions()
        if not versions:
            raise RepositoryError(f"no root metadata in {self.metadata_dir}")
        md = read_metadata(self.path(versions[-1]), Root)
        if md.signed.version != versions[-1]:
            raise RepositoryError(f"{self.path(versions[-1])} holds root version {md.signed.version}")
        return md

    def get(self, version: int) -> Metadata[Root]:
        return read_metadata(self.path(version), Root)

    def append(self, md: Metadata[Root]) -> Path:
        """Write the next root version; it must follow the latest and verify against it."""
        versions = self.versions()
        expected = versions[-1] + 1 if versions else 1
        if md.signed.version != expected:
            raise RepositoryError(f"next root must be version {expected}, not {md.signed.version}")
        verify_root(md, self.get(versions[-1]) if versions else None)
        path = self.path(expected)
        write_metadata(path, md)
        return path
