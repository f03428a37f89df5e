"""The hospital's side (SM-2): maintenance windows, accept/postpone, portal pages, and notices sent once."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select
from update_support import (
    PRODUCT,
    bearer,
    create_and_approve,
    director_client,
    enrolled_devices,
    setup_updates,
    start,
    test_keys_fixture,  # noqa: F401 (the test_keys fixture)
)

from medsec.server.models_updates import OutboxMessage
from medsec.server.notify import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify_webhook_signature
from medsec.server.services.update_background import UpdateRuntime

pytestmark = pytest.mark.req("SM-2")
WINDOW = {
    "hospital": "hospital-a",
    "timezone": "Asia/Tokyo",
    "weekly": [{"days": ["tue"], "start": "02:00", "duration_minutes": 120}],
}


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


class Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]
    fail_next: list[bool]

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        status = 500 if self.fail_next and self.fail_next.pop() else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def smtp():
    box = Mailbox()
    with socket.socket() as probe:  # aiosmtpd needs a concrete port to check its own start
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture
def webhook():
    handler = type("H", (Receiver,), {"received": [], "fail_next": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}/medsec"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_hospital_b_cannot_change_hospital_a_window(live_server, test_keys, tmp_path):
    setup_updates(live_server, test_keys, tmp_path)
    url = f"{live_server.url}/api/v1/maintenance-windows"
    r = httpx.put(url, json={**WINDOW, "site": "Main building"}, headers=bearer(live_server, "a-responsible"))
    assert r.status_code == 200, r.text
    attack = {**WINDOW, "weekly": [{"days": ["mon", "tue", "wed"], "start": "09:00", "duration_minutes": 600}]}
    r = httpx.put(url, json=attack, headers=bearer(live_server, "b-responsible"))
    assert (r.status_code, r.json()["error"]) == (404, "unknown_organization")
    # Not the responsible person, nor the manufacturer, sets a hospital's windows.
    for username in ("a-admin", "a-auditor", "maker-admin"):
        r = httpx.put(url, json=attack, headers=bearer(live_server, username))
        assert r.status_code == 403, username
    r = httpx.get(url, headers=bearer(live_server, "a-responsible"))
    assert [w["weekly"] for w in r.json()] == [WINDOW["weekly"]]
    assert httpx.get(url, headers=bearer(live_server, "b-responsible")).json() == []


def test_window_reaches_the_device_and_postpone_holds_the_offer(live_server, test_keys, tmp_path):
    setup_updates(live_server, test_keys, tmp_path)
    d1, _d2 = enrolled_devices(live_server, "hospital-a")
    httpx.put(
        f"{live_server.url}/api/v1/maintenance-windows", json=WINDOW, headers=bearer(live_server, "a-responsible")
    )
    r = httpx.post(
        f"{live_server.url}/api/v1/releases/{PRODUCT}/1.1.0/decision",
        json={
            "hospital": "hospital-a",
            "decision": "postpone",
            "postponed_until": (datetime.now(UTC) + timedelta(days=7)).isoformat(),
        },
        headers=bearer(live_server, "a-responsible"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["decision"] == "postpone"
    campaign = create_and_approve(live_server, {"name": "a", "product": PRODUCT, "version": "1.1.0"})
    start(live_server, campaign["id"])
    with director_client(d1) as c:
        c.get(f"{live_server.url}/director/{d1.serial}/metadata/timestamp.json")
        assert c.get(f"{live_server.url}/director/{d1.serial}/metadata/targets.json").json()["signed"]["targets"] == {}
    r = httpx.post(
        f"{live_server.url}/api/v1/releases/{PRODUCT}/1.1.0/decision",
        json={"hospital": "hospital-a", "decision": "accept"},
        headers=bearer(live_server, "a-responsible"),
    )
    assert r.status_code == 200
    with director_client(d1) as c:
        c.get(f"{live_server.url}/director/{d1.serial}/metadata/timestamp.json")
        targets = c.get(f"{live_server.url}/director/{d1.serial}/metadata/targets.json").json()["signed"]["targets"]
    window = targets[f"{PRODUCT}/1.1.0/release.tar"]["custom"]["medsec_director"]["install_window"]
    assert window == {"timezone": "Asia/Tokyo", "weekly": WINDOW["weekly"]}
    # Hospital B cannot decide for hospital A.
    r = httpx.post(
        f"{live_server.url}/api/v1/releases/{PRODUCT}/1.1.0/decision",
        json={"hospital": "hospital-a", "decision": "postpone"},
        headers=bearer(live_server, "b-responsible"),
    )
    assert r.status_code == 404


def test_notices_are_sent_once_by_email_and_signed_webhook(live_server, test_keys, tmp_path, smtp, webhook):
    box, smtp_port = smtp
    receiver, hook_url = webhook
    settings = live_server.ctx.settings
    settings.smtp_host, settings.smtp_port = "127.0.0.1", smtp_port
    setup_updates(live_server, test_keys, tmp_path)
    enrolled_devices(live_server)
    channels = f"{live_server.url}/api/v1/notification-channels"
    r = httpx.post(
        channels, json={"kind": "email", "target": "it@sakura.example"}, headers=bearer(live_server, "a-responsible")
    )
    assert r.status_code == 201
    r = httpx.post(channels, json={"kind": "webhook", "target": hook_url}, headers=bearer(live_server, "a-responsible"))
    secret = r.json()["secret"]
    assert secret
    r = httpx.post(
        channels, json={"kind": "email", "target": "icu@minato.example"}, headers=bearer(live_server, "b-responsible")
    )
    assert r.status_code == 201
    campaign = create_and_approve(
        live_server, {"name": "a", "product": PRODUCT, "version": "1.1.0", "selection": {"hospitals": ["hospital-a"]}}
    )
    receiver.fail_next.append(True)  # the first webhook delivery fails and is retried
    start(live_server, campaign["id"])
    runtime = UpdateRuntime(live_server.ctx)
    runtime.step()
    runtime.step()
    assert [rcpt for rcpt, _ in box.messages] == [["it@sakura.example"]]
    mail = box.messages[0][1].decode("utf-8", "replace")
    assert "1.1.0" in mail
    assert len(receiver.received) == 1
    with live_server.ctx.tx() as s:
        pending = s.scalars(select(OutboxMessage).where(OutboxMessage.status == "pending")).all()
        assert len(pending) == 1 and pending[0].attempts == 1
    runtime.step(datetime.now(UTC) + timedelta(hours=1))
    runtime.step(datetime.now(UTC) + timedelta(hours=2))
    assert len(receiver.received) == 2
    (h1, b1), (h2, b2) = receiver.received
    assert h1[IDEMPOTENCY_HEADER] == h2[IDEMPOTENCY_HEADER]
    assert b1 == b2
    verify_webhook_signature(secret, h2[SIGNATURE_HEADER], b2, now=int(time.time()))
    body = json.loads(b2)
    assert body["event"] == "update.scheduled"
    assert body["fixed_vulnerabilities"] == ["CVE-2025-0001"]
    assert "異常終了" in body["notes"]["ja"]
    assert len(box.messages) == 1  # hospital B has no device in the campaign: no notice


def test_portal_pages_show_releases_outcomes_and_campaigns(live_server, test_keys, tmp_path):
    from portal_client import signed_in_client

    setup_updates(live_server, test_keys, tmp_path)
    d1, d2, d3 = enrolled_devices(live_server)
    campaign = create_and_approve(
        live_server, {"name": "all", "product": PRODUCT, "version": "1.1.0", "error_threshold": 90}
    )
    start(live_server, campaign["id"])
    label = f"c-{campaign['id']}"
    for d in (d1, d2, d3):
        with director_client(d) as c:
            c.get(f"{live_server.url}/director/{d.serial}/metadata/timestamp.json")
    d1.version = "1.1.0"
    d1.checkin(update={"state": "committed", "release_counter": 2, "campaign": label})
    d2.checkin(update={"state": "failed", "release_counter": 2, "campaign": label, "reason": "download interrupted"})
    d3.checkin(
        update={"state": "rolled_back", "release_counter": 2, "campaign": label, "reason": "health check failed"}
    )
    with signed_in_client(live_server, "a-responsible") as c:
        page = c.get("/updates")
        assert page.status_code == 200
        assert "投与量計算" in page.text  # Japanese notes for a Japanese user
        assert "CVE-2025-0001" in page.text
        assert "インストール完了" in page.text and "失敗" in page.text
        assert d3.serial not in page.text
        assert c.get(f"/campaigns/{campaign['id']}").status_code == 403
    with signed_in_client(live_server, "b-responsible") as c:
        page = c.get("/updates")
        assert "ロールバック済み" in page.text and "health check failed" in page.text
        assert d1.serial not in page.text
    with signed_in_client(live_server, "maker-admin") as c:
        page = c.get(f"/campaigns/{campaign['id']}")
        assert page.status_code == 200
        for serial in (d1.serial, d2.serial, d3.serial):
            assert serial in page.text
        assert c.get("/campaigns").status_code == 200
