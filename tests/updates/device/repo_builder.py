"""Real TUF repositories for the device tests, laid out as docs/updates-format.md says.

- image repository at ``WWW/repo/<product>/``: root, targets delegating to 16 succinct hash
  bins (TAP 15), snapshot, timestamp, consistent snapshots;
- director repository at ``WWW/director/<serial>/``: root, targets (zero or one target),
  snapshot, timestamp, no consistent snapshots;
- release bundles (``release.tar``) with a manifest, an SBOM and a payload.

Keys are throwaway Ed25519 ``CryptoSigner``s made per test.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import (
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

PRODUCT = "infusion-pump"
SERIAL = "IC300-0001"
HARDWARE_ID = "ic300-rev-b"

_SERIALIZER = JSONSerializer(compact=True)


def _expiry(days: float = 7) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def _signer() -> Signer:
    return CryptoSigner.generate_ed25519()


def _write(path: Path, md: Metadata[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(md.to_bytes(_SERIALIZER))


@dataclass
class Bundle:
    data: bytes
    version: str
    counter: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def make_bundle(
    version: str,
    counter: int,
    files: dict[str, tuple[bytes, int]],
    *,
    product: str = PRODUCT,
    hardware_ids: tuple[str, ...] = (HARDWARE_ID,),
    manifest_changes: dict[str, Any] | None = None,
    extra_members: list[tarfile.TarInfo] | None = None,
) -> Bundle:
    """A medsec-release/v1 tar: manifest.json, sbom.cdx.json, payload/… in that order."""
    sbom = json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1}).encode()
    manifest: dict[str, Any] = {
        "format": "medsec-release/v1",
        "product": product,
        "version": version,
        "release_counter": counter,
        "hardware_ids": list(hardware_ids),
        "min_from_version": "1.0.0",
        "created": "2025-04-01T09:00:00Z",
        "payload": [
            {"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d), "mode": m}
            for p, (d, m) in sorted(files.items())
        ],
        "sbom": hashlib.sha256(sbom).hexdigest(),
        "trust_db": None,
        "notes": {"en": "test", "ja": "テスト"},
        "fixed_vulnerabilities": [],
        "expected_downtime_minutes": 5,
        "rollback_supported": True,
    }
    manifest.update(manifest_changes or {})
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))

        add("manifest.json", json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
        add("sbom.cdx.json", sbom)
        for path, (data, mode) in sorted(files.items()):
            add(f"payload/{path}", data, mode)
        for info in extra_members or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return Bundle(out.getvalue(), version, counter)


def release_custom(
    bundle: Bundle, product: str = PRODUCT, hardware_ids: tuple[str, ...] = (HARDWARE_ID,)
) -> dict[str, Any]:
    return {
        "medsec": {
            "product": product,
            "version": bundle.version,
            "release_counter": bundle.counter,
            "hardware_ids": list(hardware_ids),
            "min_from_version": "1.0.0",
            "notes": {"en": "test", "ja": "テスト"},
            "expected_downtime_minutes": 5,
            "rollback_supported": True,
        }
    }


def target_name(version: str, product: str = PRODUCT) -> str:
    return f"{product}/{version}/release.tar"


class ImageRepo:
    """The manufacturer's image repository for one product."""

    def __init__(self, www: Path, product: str = PRODUCT) -> None:
        self.base = www / "repo" / product
        self.meta_dir = self.base / "metadata"
        self.targets_dir = self.base / "targets"
        self.signers = {role: _signer() for role in ("root", "targets", "bins", "snapshot", "timestamp")}
        self.root = Metadata(Root(expires=_expiry(365), consistent_snapshot=True))
        for role in ("root", "targets", "snapshot", "timestamp"):
            self.root.signed.add_key(self.signers[role].public_key, role)
        self.targets = Metadata(Targets(expires=_expiry(365)))
        bins_key = self.signers["bins"].public_key
        self.succinct = SuccinctRoles([bins_key.keyid], 1, 4, "bins")
        self.targets.signed.delegations = Delegations(keys={bins_key.keyid: bins_key}, succinct_roles=self.succinct)
        self.bins = {name: Metadata(Targets(expires=_expiry(365))) for name in self.succinct.get_roles()}
        self.snapshot = Metadata(Snapshot(expires=_expiry(7)))
        self.timestamp = Metadata(Timestamp(expires=_expiry(1)))
        self.root.sign(self.signers["root"])
        _write(self.meta_dir / "1.root.json", self.root)

    @property
    def root_bytes(self) -> bytes:
        return (self.meta_dir / "1.root.json").read_bytes()

    def add_target(self, name: str, data: bytes, custom: dict[str, Any]) -> TargetFile:
        target = TargetFile.from_data(name, data, ["sha256"])
        target.unrecognized_fields["custom"] = custom
        self.bins[self.succinct.get_role_for_target(name)].signed.targets[name] = target
        dirname, _, basename = name.rpartition("/")
        path = self.targets_dir / dirname / f"{target.hashes['sha256']}.{basename}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return target

    def target_file(self, name: str) -> Path:
        target = self.bins[self.succinct.get_role_for_target(name)].signed.targets[name]
        dirname, _, basename = name.rpartition("/")
        return self.targets_dir / dirname / f"{target.hashes['sha256']}.{basename}"

    def publish(self, *, timestamp_expires: datetime | None = None) -> None:
        """Sign and write new versions of targets, all bins, snapshot and timestamp."""
        self.targets.signed.version += 1
        self.targets.signatures.clear()
        self.targets.sign(self.signers["targets"])
        _write(self.meta_dir / f"{self.targets.signed.version}.targets.json", self.targets)
        self.snapshot.signed.meta["targets.json"] = MetaFile(self.targets.signed.version)
        for name, md in self.bins.items():
            md.signed.version += 1
            md.signatures.clear()
            md.sign(self.signers["bins"])
            _write(self.meta_dir / f"{md.signed.version}.{name}.json", md)
            self.snapshot.signed.meta[f"{name}.json"] = MetaFile(md.signed.version)
        self.publish_snapshot(timestamp_expires=timestamp_expires)

    def publish_snapshot(self, *, timestamp_expires: datetime | None = None) -> None:
        """Only the online roles: what a server holding the snapshot and timestamp keys can do."""
        self.snapshot.signed.version += 1
        self.snapshot.signed.expires = _expiry(7)
        self.snapshot.signatures.clear()
        self.snapshot.sign(self.signers["snapshot"])
        _write(self.meta_dir / f"{self.snapshot.signed.version}.snapshot.json", self.snapshot)
        self.timestamp.signed.version += 1
        self.timestamp.signed.snapshot_meta = MetaFile(self.snapshot.signed.version)
        self.timestamp.signed.expires = timestamp_expires or _expiry(1)
        self.timestamp.signatures.clear()
        self.timestamp.sign(self.signers["timestamp"])
        _write(self.meta_dir / "timestamp.json", self.timestamp)


@dataclass
class DirectorRepo:
    """The director's per-device repository (one device here)."""

    www: Path
    serial: str = SERIAL
    signers: dict[str, Signer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.meta_dir = self.www / "director" / self.serial / "metadata"
        self.signers = {role: _signer() for role in ("root", "targets", "snapshot", "timestamp")}
        self.root = Metadata(Root(expires=_expiry(365), consistent_snapshot=False))
        for role, signer in self.signers.items():
            self.root.signed.add_key(signer.public_key, role)
        self.root.sign(self.signers["root"])
        _write(self.meta_dir / "1.root.json", self.root)
        self.targets = Metadata(Targets(expires=_expiry(7)))
        self.snapshot = Metadata(Snapshot(expires=_expiry(7)))
        self.timestamp = Metadata(Timestamp(expires=_expiry(1)))

    @property
    def root_bytes(self) -> bytes:
        return (self.meta_dir / "1.root.json").read_bytes()

    def assign(
        self,
        image_target: TargetFile | None,
        *,
        counter: int | None = None,
        hardware_id: str = HARDWARE_ID,
        serial: str | None = None,
        name: str | None = None,
        length: int | None = None,
        hashes: dict[str, str] | None = None,
        install_window: dict[str, Any] | None = None,
    ) -> None:
        """Assign ``image_target`` (or, with the overrides, something else) and publish."""
        self.targets.signed.targets.clear()
        if image_target is not None or name is not None:
            path = name or (image_target.path if image_target else "")
            target = TargetFile(
                length if length is not None else (image_target.length if image_target else 1),
                hashes if hashes is not None else dict(image_target.hashes if image_target else {}),
                path,
            )
            directive: dict[str, Any] = {
                "serial": serial or self.serial,
                "hardware_id": hardware_id,
                "release_counter": counter
                if counter is not None
                else (image_target.custom["medsec"]["release_counter"] if image_target else 1),
                "campaign": "c-1",
            }
            if install_window is not None:
                directive["install_window"] = install_window
            target.unrecognized_fields["custom"] = {"medsec_director": directive}
            self.targets.signed.targets[path] = target
        self.publish()

    def publish(self) -> None:
        self.targets.signed.version += 1
        self.targets.signatures.clear()
        self.targets.sign(self.signers["targets"])
        _write(self.meta_dir / "targets.json", self.targets)
        self.snapshot.signed.version += 1
        self.snapshot.signed.meta["targets.json"] = MetaFile(self.targets.signed.version)
        self.snapshot.signatures.clear()
        self.snapshot.sign(self.signers["snapshot"])
        _write(self.meta_dir / "snapshot.json", self.snapshot)
        self.timestamp.signed.version += 1
        self.timestamp.signed.snapshot_meta = MetaFile(self.snapshot.signed.version)
        self.timestamp.signatures.clear()
        self.timestamp.sign(self.signers["timestamp"])
        _write(self.meta_dir / "timestamp.json", self.timestamp)
