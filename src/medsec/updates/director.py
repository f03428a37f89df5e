"""The director: per-device TUF metadata assigning zero or one release to one device (Uptane idea).

Pure: values in, signed bytes out; the only side effect is the signer. The server keeps one
version counter per device and passes it in; every call signs ``targets``, ``snapshot`` and
``timestamp`` at that version (they must grow per device, TUF 5.4.3/5.5.5/5.6.6 on the client).

The director root is shared by every device and has ``consistent_snapshot: false``, so the device
fetches ``N.root.json``, ``timestamp.json``, ``snapshot.json`` and ``targets.json`` from
``/director/{serial}/metadata/``.

Speed matters here (one metadata set per device check-in), so the signed documents are built as
plain dicts and encoded directly. Their strings are restricted to characters where Python's
compact sorted JSON and TUF's canonical JSON (OLPC) agree; anything else raises DirectorError
instead of producing a signature the device would refuse.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from medsec.updates.errors import DirectorError, KeyCeremonyError
from medsec.updates.metadata_files import metadata_bytes
from medsec.updates.tuf_types import Metadata, Root, Signer, TargetFile

SPEC_VERSION = "1.0.31"
DIRECTOR_CUSTOM = "medsec_director"
_MAX_STRING = 256


@dataclass(frozen=True)
class DirectorLifetimes:
    """Expiry of the per-device metadata (docs/updates-format.md: timestamp 1 day, others 7)."""

    targets: timedelta = timedelta(days=7)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)


@dataclass(frozen=True)
class DirectorAssignment:
    """One release assigned to one device, with the image repository's target identity."""

    target_name: str
    length: int
    hashes: Mapping[str, str]
    serial: str
    hardware_id: str
    release_counter: int
    campaign: str
    install_window: Mapping[str, Any] | None = None

    @classmethod
    def from_image_target(
        cls,
        target: TargetFile,
        *,
        serial: str,
        hardware_id: str,
        campaign: str,
        install_window: Mapping[str, Any] | None = None,
    ) -> DirectorAssignment:
        """Copy name, length and hashes from the image repository's target (they must be identical)."""
        custom: Any = target.unrecognized_fields.get("custom") or {}
        medsec = custom.get("medsec") if isinstance(custom, dict) else None
        if not isinstance(medsec, dict) or not isinstance(medsec.get("release_counter"), int):
            raise DirectorError(f"image target {target.path} has no medsec.release_counter")
        if hardware_id not in medsec.get("hardware_ids", []):
            raise DirectorError(f"{target.path} is not built for hardware {hardware_id!r}")
        return cls(
            target_name=target.path,
            length=target.length,
            hashes=dict(target.hashes),
            serial=serial,
            hardware_id=hardware_id,
            release_counter=medsec["release_counter"],
            campaign=campaign,
            install_window=install_window,
        )

    def target_entry(self) -> dict[str, Any]:
        directive: dict[str, Any] = {
            "serial": self.serial,
            "hardware_id": self.hardware_id,
            "release_counter": self.release_counter,
            "campaign": self.campaign,
        }
        if self.install_window is not None:
            directive["install_window"] = dict(self.install_window)
        return {"length": self.length, "hashes": dict(self.hashes), "custom": {DIRECTOR_CUSTOM: directive}}


@dataclass(frozen=True)
class DeviceMetadata:
    """The three per-device files, ready to serve (the root is shared: ``DirectorRepository.root_bytes``)."""

    serial: str
    version: int
    timestamp: bytes = field(repr=False)
    snapshot: bytes = field(repr=False)
    targets: bytes = field(repr=False)

    def files(self) -> dict[str, bytes]:
        return {"timestamp.json": self.timestamp, "snapshot.json": self.snapshot, "targets.json": self.targets}

    @property
    def size(self) -> int:
        return len(self.timestamp) + len(self.snapshot) + len(self.targets)


def _check_value(value: Any, where: str) -> None:
    """Allow only values whose compact sorted JSON equals TUF's canonical JSON."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        return
    if isinstance(value, str):
        if len(value) > _MAX_STRING:
            raise DirectorError(f"{where}: longer than {_MAX_STRING} characters")
        if any(ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise DirectorError(f"{where}: control characters or lone surrogates are not allowed")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise DirectorError(f"{where}: keys must be strings")
            _check_value(k, f"{where} key")
            _check_value(v, f"{where}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_value(v, f"{where}[{i}]")
        return
    raise DirectorError(f"{where}: {type(value).__name__} is not allowed (floats have no canonical form in TUF)")


def _canonical(signed: Mapping[str, Any]) -> bytes:
    return json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _expires(now: datetime, lifetime: timedelta) -> str:
    return (now + lifetime).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DirectorRepository:
    """Signs per-device director metadata with the director's online keys."""

    def __init__(
        self,
        root: Metadata[Root],
        *,
        targets: Signer,
        snapshot: Signer,
        timestamp: Signer,
        lifetimes: DirectorLifetimes | None = None,
    ) -> None:
        if root.signed.consistent_snapshot:
            raise DirectorError("the director root must have consistent_snapshot false")
        for role, signer in (("targets", targets), ("snapshot", snapshot), ("timestamp", timestamp)):
            spec = root.signed.roles[role]
            if signer.public_key.keyid not in spec.keyids or spec.threshold != 1:
                raise KeyCeremonyError(f"director {role}: the key is not the root's {role} key (threshold 1)")
        self.root = root
        self.root_bytes = metadata_bytes(root)
        self._signers = {"targets": targets, "snapshot": snapshot, "timestamp": timestamp}
        self.lifetimes = lifetimes or DirectorLifetimes()

    @property
    def root_version(self) -> int:
        return self.root.signed.version

    def _envelope(self, role: str, signed: dict[str, Any]) -> bytes:
        payload = _canonical(signed)
        sig = self._signers[role].sign(payload)
        # Only "signed" is covered by the signature (TUF 4.2); the envelope is plain compact JSON.
        head = b'{"signatures":[{"keyid":"' + sig.keyid.encode() + b'","sig":"' + sig.signature.encode() + b'"}],'
        return head + b'"signed":' + payload + b"}"

    def device_metadata(
        self,
        serial: str,
        assignment: DirectorAssignment | None,
        version: int,
        now: datetime,
    ) -> DeviceMetadata:
        """Targets (zero or one target), snapshot and timestamp for ``serial``, all at ``version``."""
        if version < 1:
            raise DirectorError("metadata versions start at 1")
        if now.tzinfo is None:
            raise DirectorError("now must be timezone-aware")
        _check_value(serial, "serial")
        targets_map: dict[str, Any] = {}
        if assignment is not None:
            if assignment.serial != serial:
                raise DirectorError(f"assignment is for {assignment.serial!r}, not {serial!r}")
            if assignment.length < 0 or not assignment.hashes:
                raise DirectorError("assignment needs the target's length and hashes")
            entry = assignment.target_entry()
            _check_value(assignment.target_name, "target name")
            _check_value(entry, "target")
            targets_map[assignment.target_name] = entry
        common = {"spec_version": SPEC_VERSION, "version": version}
        targets = self._envelope(
            "targets",
            {
                "_type": "targets",
                **common,
                "expires": _expires(now, self.lifetimes.targets),
                "targets": targets_map,
            },
        )
        snapshot = self._envelope(
            "snapshot",
            {
                "_type": "snapshot",
                **common,
                "expires": _expires(now, self.lifetimes.snapshot),
                "meta": {"targets.json": {"version": version}},
            },
        )
        timestamp = self._envelope(
            "timestamp",
            {
                "_type": "timestamp",
                **common,
                "expires": _expires(now, self.lifetimes.timestamp),
                "meta": {"snapshot.json": {"version": version}},
            },
        )
        return DeviceMetadata(serial, version, timestamp, snapshot, targets)
