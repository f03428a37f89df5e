"""Helpers for the server's update tests: keys without passphrases, a published release, signed devices."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # device_sim lives in tests/server

from device_sim import SimDevice

from medsec.agent.update_auth import DirectorRequestAuth
from medsec.server.settings import Settings
from medsec.updates.keys import KeySet, init_keys, load_file_signer
from medsec.updates.release import ReleaseInfo, build_release, publish, sign_release
from medsec.updates.repository import ImageRepository, OnlineSigners
from medsec.updates.tuf_types import Signer

PRODUCT = "infusion-pump"
HARDWARE_ID = "ic300-rev-b"
CREATED = datetime(2025, 4, 1, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class UpdateKeys:
    dir: Path
    keyset: KeySet
    root: list[Signer]
    targets: Signer
    online: OnlineSigners


def make_test_keys(folder: Path) -> UpdateKeys:
    """A key ceremony with unencrypted offline keys (the equivalent of --insecure-no-passphrase)."""
    keyset = init_keys(folder, passphrase_for=lambda _name: None)
    root = keyset.signers("image", "root", lambda _n: None)
    targets = load_file_signer(folder / "offline" / "image-targets.key")
    online = OnlineSigners(
        snapshot=load_file_signer(folder / "online" / "image-snapshot.key"),
        timestamp=load_file_signer(folder / "online" / "image-timestamp.key"),
    )
    return UpdateKeys(folder, keyset, root, targets, online)


@pytest.fixture(scope="session", name="test_keys")
def test_keys_fixture(tmp_path_factory: pytest.TempPathFactory) -> UpdateKeys:
    """One unencrypted key ceremony per test session (test keys only)."""
    return make_test_keys(tmp_path_factory.mktemp("tuf-keys"))


def install_server_keys(keys: UpdateKeys, settings: Settings) -> None:
    """What an operator does: copy KEYS/online and KEYS/director to the server's data folder."""
    shutil.copytree(keys.dir / "online", settings.tuf_online_keys_dir, dirs_exist_ok=True)
    shutil.copytree(keys.dir / "director", settings.director_root_dir, dirs_exist_ok=True)


def create_repository(keys: UpdateKeys, settings: Settings) -> ImageRepository:
    return ImageRepository.create(
        settings.repo_dir,
        PRODUCT,
        keys.keyset.image,
        root_signers=keys.root[:2],
        targets_signers=[keys.targets],
        online=keys.online,
        now=datetime.now(UTC),
    )


def release(keys: UpdateKeys, repo: ImageRepository, work: Path, version: str, counter: int) -> ReleaseInfo:
    """Build, sign (offline targets key) and publish one release bundle."""
    payload = work / f"payload-{version}"
    (payload / "bin").mkdir(parents=True, exist_ok=True)
    (payload / "bin" / "pump-ctl").write_bytes(f"#!/bin/sh\necho pump {version}\n".encode())
    info = build_release(
        payload,
        PRODUCT,
        version,
        counter,
        [HARDWARE_ID],
        "1.0.0",
        f"Version {version} fixes a crash in the dose calculator.",
        f"バージョン {version} では投与量計算の異常終了を修正しました。",
        ["CVE-2025-0001"],
        5,
        True,
        work / "bundles" / version / "release.tar",
        created=CREATED,
    )
    sign_release(repo, info.path, keys.targets)
    publish(repo, info.path, keys.online)
    return info


def setup_updates(
    live_server: Any, keys: UpdateKeys, work: Path, versions: tuple[str, ...] = ("1.1.0",)
) -> ImageRepository:
    """Keys on the server, a repository with ``versions`` published, releases synced into the database."""
    settings = live_server.ctx.settings
    install_server_keys(keys, settings)
    repo = create_repository(keys, settings)
    for i, version in enumerate(versions, start=2):
        release(keys, repo, work, version, i)
    r = httpx.post(f"{live_server.url}/api/v1/releases/sync", headers=bearer(live_server, "maker-admin"))
    assert r.status_code == 200, r.text
    return repo


def bearer(live_server: Any, username: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {live_server.seed.tokens[username]}"}


def enrolled_devices(live_server: Any, hospital: str | None = None) -> list[SimDevice]:
    devices = []
    for d in live_server.seed.devices:
        if hospital is not None and d.hospital != hospital:
            continue
        dev = SimDevice(live_server.url, d.serial, d.hardware_id)
        assert dev.enroll(d.enrollment_token).status_code == 200
        assert dev.checkin().status_code == 200
        devices.append(dev)
    return devices


def director_client(device: SimDevice) -> httpx.Client:
    return httpx.Client(auth=DirectorRequestAuth(device.key, device.serial), timeout=10)


def create_and_approve(live_server: Any, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{live_server.url}/api/v1/campaigns", json=body, headers=bearer(live_server, "maker-release"))
    assert r.status_code == 201, r.text
    campaign = r.json()
    r = httpx.post(
        f"{live_server.url}/api/v1/campaigns/{campaign['id']}/approve", headers=bearer(live_server, "maker-admin")
    )
    assert r.status_code == 200, r.text
    return r.json()


def start(live_server: Any, campaign_id: int) -> dict[str, Any]:
    r = httpx.post(
        f"{live_server.url}/api/v1/campaigns/{campaign_id}/start", headers=bearer(live_server, "maker-admin")
    )
    assert r.status_code == 200, r.text
    return r.json()


def report_update(device: SimDevice, state: str, campaign: str, counter: int, **extra: Any) -> httpx.Response:
    update = {"state": state, "release_counter": counter, "campaign": campaign, **extra}
    return device.checkin(update=update)
