"""The portal's display time zone: pages show the configured zone with its abbreviation, the API stays in UTC."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from pydantic import ValidationError

from conftest import sign_in
from medsec.demo import DemoOptions, _settings
from medsec.server.i18n import DateFormatter
from medsec.server.settings import Settings

# <time datetime="2025-04-01T09:30:05.123+00:00">Apr 1, 2025, 6:30:05 PM JST</time>
TIME_RE = re.compile(r'<time datetime="([^"]+)">([^<]+)</time>')
AT = datetime(2025, 4, 1, 9, 30, 5, tzinfo=UTC)


@pytest.fixture
def display_timezone() -> str:
    return "UTC"


@pytest.fixture
def settings(settings: Settings, display_timezone: str) -> Settings:
    """The suite's settings with the display zone under test (tests parametrize ``display_timezone``)."""
    return Settings(**{**settings.model_dump(), "display_timezone": display_timezone})


def _shown_times(html: str) -> list[tuple[datetime, str]]:
    return [(datetime.fromisoformat(attr), text.strip()) for attr, text in TIME_RE.findall(html)]


def _parse_english(text: str) -> tuple[datetime, str]:
    """``Apr 1, 2025, 6:30:05 PM JST`` -> (naive wall-clock time, zone abbreviation)."""
    flat = re.sub(r"\s+", " ", text.replace("\u202f", " ").replace("\u00a0", " "))
    shown, _, zone = flat.rpartition(" ")
    return datetime.strptime(shown, "%b %d, %Y, %I:%M:%S %p"), zone


def test_formatter_uses_the_zone_and_says_which() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    assert DateFormatter("ja", tokyo).timestamp(AT) == "2025/04/01 18:30:05 JST"
    assert _parse_english(DateFormatter("en", tokyo).timestamp(AT)) == (datetime(2025, 4, 1, 18, 30, 5), "JST")
    assert DateFormatter("ja").timestamp(AT) == "2025/04/01 9:30:05 UTC"  # the default stays UTC


def test_abbreviation_follows_daylight_saving_time() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    winter = DateFormatter("en", berlin).timestamp(datetime(2025, 1, 15, 12, 0, tzinfo=UTC))
    summer = DateFormatter("en", berlin).timestamp(datetime(2025, 7, 15, 12, 0, tzinfo=UTC))
    assert _parse_english(winter) == (datetime(2025, 1, 15, 13, 0), "CET")
    assert _parse_english(summer) == (datetime(2025, 7, 15, 14, 0), "CEST")


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../../etc/passwd", "/etc/localtime"])
def test_unknown_zone_is_refused_at_startup(zone: str) -> None:
    with pytest.raises(ValidationError, match="display_timezone") as caught:
        Settings(display_timezone=zone)
    assert "unknown IANA time zone" in str(caught.value)


def test_zone_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSEC_DISPLAY_TIMEZONE", "Asia/Tokyo")
    assert Settings().display_zone == ZoneInfo("Asia/Tokyo")
    monkeypatch.delenv("MEDSEC_DISPLAY_TIMEZONE")
    assert Settings().display_timezone == "UTC"


def test_demo_shows_japan_time(tmp_path: Any) -> None:
    assert _settings(DemoOptions(data_dir=tmp_path)).display_timezone == "Asia/Tokyo"


@pytest.mark.req("RA-6")
@pytest.mark.parametrize("display_timezone", ["Asia/Tokyo"])
def test_device_page_shows_japan_time_and_the_api_stays_utc(
    client_factory: Any, live_server: Any, totp: Any, checked_in: Any
) -> None:
    c = client_factory()
    sign_in(c, live_server.seed.users["a-responsible"], totp)
    page = c.get("/devices/IC300-0001")
    assert page.status_code == 200
    shown = _shown_times(page.text)
    assert len(shown) >= 3  # two check-ins and one access-log checkpoint
    for at, text in shown:
        assert at.utcoffset() is not None and at.utcoffset().total_seconds() == 0  # the machine value is UTC
        wall, zone = _parse_english(text)
        assert zone == "JST"
        assert wall == at.astimezone(ZoneInfo("Asia/Tokyo")).replace(tzinfo=None, microsecond=0)
    assert " UTC" not in page.text

    token = live_server.seed.tokens["a-admin"]
    api = httpx.get(
        f"{live_server.url}/api/v1/devices/IC300-0001/checkins", headers={"Authorization": f"Bearer {token}"}
    )
    assert api.status_code == 200
    received = [datetime.fromisoformat(c["received_at"]) for c in api.json()]
    assert received and all(r.utcoffset() is not None and r.utcoffset().total_seconds() == 0 for r in received)
    assert {r.replace(microsecond=0) for r in received} <= {at.replace(microsecond=0) for at, _ in shown}


@pytest.mark.req("RA-2")
@pytest.mark.parametrize("display_timezone", ["Asia/Tokyo"])
def test_audit_page_in_japanese_shows_jst_while_the_api_answers_in_utc(
    client_factory: Any, live_server: Any, totp: Any
) -> None:
    c = client_factory(lang="ja")
    sign_in(c, live_server.seed.users["maker-admin"], totp)
    page = c.get("/audit")
    assert page.status_code == 200
    shown = _shown_times(page.text)
    assert shown
    for at, text in shown:
        local = at.astimezone(ZoneInfo("Asia/Tokyo"))
        assert text == f"{local:%Y/%m/%d} {local.hour}:{local:%M:%S} JST"

    token = live_server.seed.tokens["a-admin"]
    api = httpx.get(f"{live_server.url}/api/v1/audit/entries", headers={"Authorization": f"Bearer {token}"})
    assert api.status_code == 200
    times = [datetime.fromisoformat(e["time"]) for e in api.json()]
    assert times and all(t.utcoffset() is not None and t.utcoffset().total_seconds() == 0 for t in times)


@pytest.mark.req("RA-6")
def test_default_display_is_utc(client_factory: Any, live_server: Any, totp: Any, checked_in: Any) -> None:
    c = client_factory()
    sign_in(c, live_server.seed.users["a-responsible"], totp)
    page = c.get("/devices/IC300-0001")
    shown = _shown_times(page.text)
    assert shown
    for at, text in shown:
        wall, zone = _parse_english(text)
        assert zone == "UTC"
        assert wall == at.astimezone(UTC).replace(tzinfo=None, microsecond=0)
