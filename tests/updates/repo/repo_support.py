"""Helpers shared by the repository-side tests (kept out of conftest so imports are unambiguous)."""

from __future__ import annotations

import http.server
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from securesystemslib.signer import Signer
from tuf.ngclient import Updater

from medsec.updates.keys import KeySet
from medsec.updates.release import ReleaseInfo, build_release
from medsec.updates.repository import OnlineSigners

PASSPHRASE = b"correct horse battery staple"
PRODUCT = "infusion-pump"
CREATED = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Ceremony:
    keys_dir: Path
    keyset: KeySet
    root: list[Signer]
    targets: Signer
    online: OnlineSigners
    director_online: dict[str, Signer]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Attack tests make the client hang up mid-download; that is the point, not a failure.
        pass


@dataclass(frozen=True)
class StaticServer:
    root: Path
    url: str


def make_payload(folder: Path, marker: str = "1") -> Path:
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    (folder / "bin" / "pump-ctl").write_bytes(b"#!/bin/sh\necho pump " + marker.encode() + b"\n")
    (folder / "bin" / "pump-ctl").chmod(0o755)
    (folder / "etc").mkdir(exist_ok=True)
    (folder / "etc" / "pump.conf").write_text(f"rate_limit=100\nbuild={marker}\n")
    return folder


def make_bundle(tmp: Path, version: str, counter: int, *, trust_db: bytes | None = None) -> ReleaseInfo:
    payload = make_payload(tmp / f"payload-{version}", version)
    return build_release(
        payload,
        PRODUCT,
        version,
        counter,
        ["ic300-rev-b"],
        "1.0.0",
        "Fixes a crash in the dose calculator.",
        "投与量計算のクラッシュを修正しました。",
        ["CVE-2025-0001"],
        5,
        True,
        tmp / f"bundles/{version}/release.tar",
        trust_db_json=trust_db,
        created=CREATED,
    )


def updater_for(
    server: StaticServer, product: str, client_dir: Path, bootstrap: bytes, *, director: bool = False
) -> Updater:
    """The stock python-tuf client, as a device would build it."""
    (client_dir / "metadata").mkdir(parents=True, exist_ok=True)
    (client_dir / "targets").mkdir(parents=True, exist_ok=True)
    base = f"{server.url}/director/{product}" if director else f"{server.url}/repo/{product}"
    return Updater(
        str(client_dir / "metadata"),
        f"{base}/metadata/",
        str(client_dir / "targets"),
        None if director else f"{base}/targets/",
        bootstrap=bootstrap,
    )
