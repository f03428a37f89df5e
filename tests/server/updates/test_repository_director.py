"""The server's TUF image repository and per-device director, seen through real HTTP (SM-1, SM-5, SM-6)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from tuf.ngclient import Updater
from update_support import (
    HARDWARE_ID,
    PRODUCT,
    bearer,
    create_and_approve,
    director_client,
    enrolled_devices,
    setup_updates,
    start,
    test_keys_fixture,  # noqa: F401 (the test_keys fixture)
)

from medsec.server.models import AuditEntry, Release
from medsec.updates.fetcher import HttpxFetcher

pytestmark = [pytest.mark.req("SM-1"), pytest.mark.req("SM-6")]
TARGET = f"{PRODUCT}/1.1.0/release.tar"


def test_stock_tuf_client_verifies_and_downloads_a_published_target(live_server, test_keys, tmp_path: Path):
    repo = setup_updates(live_server, test_keys, tmp_path)
    client = tmp_path / "client"
    (client / "metadata").mkdir(parents=True)
    (client / "targets").mkdir()
    updater = Updater(
        str(client / "metadata"),
        f"{live_server.url}/repo/{PRODUCT}/metadata/",
        str(client / "targets"),
        f"{live_server.url}/repo/{PRODUCT}/targets/",
        bootstrap=repo.roots.path(1).read_bytes(),
    )
    updater.refresh()
    info = updater.get_targetinfo(TARGET)
    assert info is not None
    path = updater.download_target(info)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert digest == info.hashes["sha256"]
    with live_server.ctx.tx() as s:
        row = s.scalar(select(Release).where(Release.product == PRODUCT, Release.version == "1.1.0"))
        assert row.status == "published"
        assert row.target_sha256 == digest
        assert row.release_counter == 2
        assert row.fixed_vulnerabilities == ["CVE-2025-0001"]
        assert "異常終了" in row.notes_ja
        assert row.expected_downtime_minutes == 5
        assert row.rollback_supported is True


@pytest.mark.parametrize(
    "path",
    [
        f"/repo/{PRODUCT}/metadata/",
        f"/repo/{PRODUCT}/",
        "/repo/",
        f"/repo/{PRODUCT}/metadata/../../../keys/tuf-online/image-timestamp.key",
        f"/repo/{PRODUCT}/metadata/%2e%2e/%2e%2e/%2e%2e/keys/audit-log.key",
        "/repo/..%2fkeys/audit-log.key",
        f"/repo/{PRODUCT}/targets/.hidden",
    ],
)
def test_repository_has_no_listing_and_no_path_escape(live_server, test_keys, tmp_path, path):
    setup_updates(live_server, test_keys, tmp_path, versions=())
    r = httpx.get(live_server.url + path)
    assert r.status_code == 404
    assert b"PRIVATE KEY" not in r.content


def test_background_step_resigns_and_logs_each_expiry_warning_once(live_server, test_keys, tmp_path):
    repo = setup_updates(live_server, test_keys, tmp_path)
    runtime = live_server_runtime(live_server)
    timestamp_before = repo.timestamp().signed.version
    later = datetime.now(UTC) + timedelta(days=320)  # root (1 year) is then inside its 60-day warning
    runtime.step(later)
    runtime.step(later)
    assert repo.timestamp().signed.version > timestamp_before
    with live_server.ctx.tx() as s:
        count = s.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.event_type == "repository.expiry_warning")
        )
        bodies = [
            e.body.decode()
            for e in s.scalars(select(AuditEntry).where(AuditEntry.event_type == "repository.expiry_warning"))
        ]
    assert count >= 1
    assert len(bodies) == len(set(bodies))
    assert any('"role":"root"' in b for b in bodies)


def live_server_runtime(live_server):
    from medsec.server.services.update_background import UpdateRuntime

    return UpdateRuntime(live_server.ctx, channels={})


def _director_updater(live_server, device, director_root: bytes, folder: Path, http: httpx.Client) -> Updater:
    folder.mkdir(parents=True, exist_ok=True)
    return Updater(
        str(folder),
        f"{live_server.url}/director/{device.serial}/metadata/",
        None,
        None,
        fetcher=HttpxFetcher(http),
        bootstrap=director_root,
    )


def test_director_metadata_verifies_against_the_director_root(live_server, test_keys, tmp_path):
    setup_updates(live_server, test_keys, tmp_path)
    devices = enrolled_devices(live_server, "hospital-a")
    campaign = create_and_approve(
        live_server, {"name": "1.1.0 to Sakura", "product": PRODUCT, "version": "1.1.0", "groups": ["rest"]}
    )
    start(live_server, campaign["id"])
    director_root = (test_keys.dir / "director" / "1.root.json").read_bytes()
    device = devices[0]
    with director_client(device) as http:
        updater = _director_updater(live_server, device, director_root, tmp_path / "d1", http)
        updater.refresh()
        info = updater.get_targetinfo(TARGET)
    assert info is not None
    directive = info.custom["medsec_director"]
    assert directive == {
        "serial": device.serial,
        "hardware_id": HARDWARE_ID,
        "release_counter": 2,
        "campaign": f"c-{campaign['id']}",
    }
    # The same version always has the same bytes, and a device's metadata stays small.
    with director_client(device) as c:
        first = [
            c.get(f"{live_server.url}/director/{device.serial}/metadata/{f}").content
            for f in ("timestamp.json", "snapshot.json", "targets.json")
        ]
        again = [
            c.get(f"{live_server.url}/director/{device.serial}/metadata/{f}").content
            for f in ("timestamp.json", "snapshot.json", "targets.json")
        ]
    assert first == again
    assert sum(len(b) for b in first) <= 4096
    r = httpx.get(f"{live_server.url}/api/v1/campaigns/{campaign['id']}", headers=bearer(live_server, "maker-admin"))
    states = {d["serial"]: d["state"] for d in r.json()["devices"]}
    assert states[device.serial] == "offered"


def test_director_metadata_is_only_for_the_device_itself(live_server, test_keys, tmp_path):
    setup_updates(live_server, test_keys, tmp_path)
    a1, a2 = enrolled_devices(live_server, "hospital-a")
    url = f"{live_server.url}/director/{a1.serial}/metadata/targets.json"
    assert httpx.get(url).status_code == 404
    assert httpx.get(url, headers=bearer(live_server, "a-responsible")).status_code == 404
    # Device 2 signing a request for device 1's metadata (the serial is inside the signature).
    from medsec.protocol import sign_director_request

    forged = sign_director_request(
        a2.key, a1.serial, f"/director/{a1.serial}/metadata/targets.json", int(datetime.now(UTC).timestamp())
    )
    assert httpx.get(url, headers=forged).status_code == 404
    # A replayed signature from long ago.
    stale = sign_director_request(a1.key, a1.serial, f"/director/{a1.serial}/metadata/targets.json", 1_000_000)
    assert httpx.get(url, headers=stale).status_code == 404
    with director_client(a1) as c:
        assert c.get(url).status_code == 200
