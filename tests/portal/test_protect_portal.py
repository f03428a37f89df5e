"""Protection pages of the portal: a device's blocked executions and integrity events, the fleet view,
in English and Japanese, over httpx and in a real headless Chromium (RL-1, RL-3, PA-1)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from conftest import sign_in, sign_in_browser
from medsec.protect.events import Metrics, Object, ProtectionEvent, Subject
from medsec.protect.wire import SIGNATURE_HEADER, EngineState, build_batch

A_SERIAL, B_SERIAL = "IC300-0001", "IC300-0003"
A_EXE, B_EXE = "/opt/device/tmp/a-dropper", "/opt/device/tmp/b-secret-dropper"

pytestmark = [pytest.mark.req("RL-3"), pytest.mark.req("RL-1")]


def _upload(
    base_url: str, device: Any, events: list[ProtectionEvent], seq: int, engine: EngineState | None = None
) -> None:
    metrics = Metrics()
    metrics.record("not_in_trustdb", 80, cache_hit=False, queue_depth=3)
    metrics.record("trustdb_hash", 4, cache_hit=True)
    engine = engine or EngineState("enforce", "7", "2026.12.1")
    batch = build_batch(device.serial, seq, int(time.time()), events, engine, metrics.snapshot())
    body, signature = batch.sign(device.key)
    r = httpx.post(
        f"{base_url}/api/v1/devices/{device.serial}/protection-events",
        content=body,
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature},
        timeout=30,
    )
    assert r.status_code == 200, r.text


def _deny(exe: str) -> ProtectionEvent:
    return ProtectionEvent(
        "exec", "deny", "not_in_trustdb", "enforce", Subject(77, "/usr/bin/sh", None), Object(exe, "c" * 64), "refused"
    )


@pytest.fixture
def protected(live_server: Any, checked_in: Any) -> dict[str, Any]:
    a, b = checked_in[A_SERIAL], checked_in[B_SERIAL]
    restored = ProtectionEvent(
        "integrity", "restored", "baseline_mismatch", None, None, Object("/opt/device/bin/ctl", None)
    )
    _upload(live_server.url, a, [_deny(A_EXE), restored], 1)
    _upload(live_server.url, b, [_deny(B_EXE)], 1)
    return checked_in


def test_device_protection_page_in_both_languages(
    client_factory: Any, live_server: Any, totp: Any, protected: Any
) -> None:
    c = client_factory(lang="en")
    sign_in(c, live_server.seed.users["a-responsible"], totp)
    device = c.get(f"/devices/{A_SERIAL}")
    assert f'href="/devices/{A_SERIAL}/protection"' in device.text
    page = c.get(f"/devices/{A_SERIAL}/protection")
    assert page.status_code == 200
    assert A_EXE in page.text and "Blocked executions" in page.text and "Integrity events" in page.text
    assert "/opt/device/bin/ctl" in page.text and "Restored" in page.text
    assert "Cache hit ratio" in page.text and "50.0 %" in page.text
    assert B_EXE not in page.text
    filtered = c.get(f"/devices/{A_SERIAL}/protection", params={"action": "restored", "days": "7"})
    assert A_EXE not in filtered.text and "/opt/device/bin/ctl" in filtered.text
    c.cookies.set("medsec_lang", "ja")
    ja = c.get(f"/devices/{A_SERIAL}/protection")
    assert '<html lang="ja">' in ja.text and "ブロックされた実行" in ja.text and "完全性イベント" in ja.text
    assert "復元" in ja.text and A_EXE in ja.text


def test_other_hospitals_protection_page_is_not_found(
    client_factory: Any, live_server: Any, totp: Any, protected: Any
) -> None:
    c = client_factory(lang="en")
    sign_in(c, live_server.seed.users["a-responsible"], totp)
    theirs = c.get(f"/devices/{B_SERIAL}/protection")
    missing = c.get("/devices/IC300-9999/protection")
    assert theirs.status_code == missing.status_code == 404
    assert B_EXE not in theirs.text
    fleet = c.get("/protection")
    assert A_SERIAL in fleet.text and B_SERIAL not in fleet.text


def test_manufacturer_fleet_view_lists_every_hospital(
    client_factory: Any, live_server: Any, totp: Any, protected: Any
) -> None:
    c = client_factory(lang="en")
    sign_in(c, live_server.seed.users["maker-admin"], totp)
    fleet = c.get("/protection")
    assert A_SERIAL in fleet.text and B_SERIAL in fleet.text
    assert "Minato University Hospital" in fleet.text and "Sakura General Hospital" in fleet.text
    assert B_EXE in c.get(f"/devices/{B_SERIAL}/protection").text


@pytest.mark.req("RL-1")
def test_allowlisting_off_is_shown_with_its_reason_in_both_languages(
    client_factory: Any, live_server: Any, totp: Any, protected: Any
) -> None:
    a = protected[A_SERIAL]
    _upload(live_server.url, a, [], 2, EngineState("off", "7", "2026.12.1", off_reason="fanotify unavailable"))
    c = client_factory(lang="en")
    sign_in(c, live_server.seed.users["a-responsible"], totp)
    page = c.get(f"/devices/{A_SERIAL}/protection")
    assert page.status_code == 200
    assert page.text.count("Allowlisting off: fanotify unavailable") == 2  # the alert and the mode
    assert 'role="alert"' in page.text and "<dd>Enforce</dd>" not in page.text
    assert "Allowlisting off: fanotify unavailable" in c.get("/protection").text
    c.cookies.set("medsec_lang", "ja")
    ja = c.get(f"/devices/{A_SERIAL}/protection")
    assert "許可リスト制御停止中: fanotify unavailable" in ja.text
    assert "許可リスト制御停止中: fanotify unavailable" in c.get("/protection").text
    # Running again: the page says so and the warning is gone.
    _upload(live_server.url, a, [], 3)
    c.cookies.set("medsec_lang", "en")
    again = c.get(f"/devices/{A_SERIAL}/protection")
    assert "Allowlisting off" not in again.text and "<dd>Enforce</dd>" in again.text


@pytest.mark.req("RL-1")
def test_older_agent_off_report_is_shown_as_off(
    client_factory: Any, live_server: Any, totp: Any, protected: Any
) -> None:
    """Agents before the explicit off mode sent monitor with "3 (off: not root)" as the version."""
    _upload(live_server.url, protected[A_SERIAL], [], 2, EngineState("monitor", "3 (off: not root)", None))
    c = client_factory(lang="en")
    sign_in(c, live_server.seed.users["a-responsible"], totp)
    page = c.get(f"/devices/{A_SERIAL}/protection")
    assert "Allowlisting off: not root" in page.text and "<dd>Monitor</dd>" not in page.text
    assert "<dd>3</dd>" in page.text  # the policy version without the reason


@pytest.mark.browser
@pytest.mark.req("PA-1")
def test_hospital_user_sees_own_blocked_execution_in_chromium(
    new_page: Any, live_server: Any, totp: Any, protected: Any
) -> None:
    page = new_page("en-US")
    user = live_server.seed.users["a-responsible"]
    page.goto(f"{live_server.url}/login")
    page.get_by_role("link", name="English").click()
    sign_in_browser(page, live_server.url, user, totp, lang="en")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Protection").click()
    assert page.get_by_role("heading", name="Device protection", level=1).is_visible()
    assert page.get_by_text(B_SERIAL).count() == 0
    page.get_by_role("link", name=A_SERIAL).click()
    assert page.get_by_role("heading", name=f"Protection of {A_SERIAL}").is_visible()
    blocked = page.get_by_role("table", name=f"Blocked executions of {A_SERIAL}, newest first")
    assert blocked.get_by_text(A_EXE).is_visible()
    assert page.get_by_text(B_EXE).count() == 0

    page.get_by_role("link", name="日本語").click()
    assert page.locator("html").get_attribute("lang") == "ja"
    assert page.get_by_role("heading", name="ブロックされた実行").is_visible()
    assert (
        page.get_by_role("table", name=f"{A_SERIAL} でブロックされた実行（新しい順）").get_by_text(A_EXE).is_visible()
    )

    page.goto(f"{live_server.url}/devices/{B_SERIAL}/protection")
    assert page.get_by_text(B_EXE).count() == 0
    assert page.get_by_role("heading", name=f"{B_SERIAL} の保護").count() == 0
