"""Portal languages: catalogs complete, Accept-Language, the language switch, locale-formatted dates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po
from jinja2.ext import babel_extract

from conftest import sign_in
from medsec.server import i18n

SERVER = Path(i18n.__file__).parent


def _source_messages() -> set[str]:
    found: set[str] = set()
    for path in (SERVER / "portal.py", SERVER / "i18n.py"):
        found |= {m[1] if isinstance(m[1], str) else m[1][0] for m in extract_from_file("python", str(path))}
    for path in sorted((SERVER / "templates").glob("*.html")):
        messages = extract_from_file(babel_extract, str(path), options={"extensions": "jinja2.ext.i18n"})
        found |= {m[1] if isinstance(m[1], str) else m[1][0] for m in messages}
    return found


def test_every_portal_string_has_a_japanese_translation() -> None:
    # messages.po plus one .po per portal area, merged like i18n.load_catalogs does.
    translated: set[str] = set()
    for po in sorted((SERVER / "locale" / "ja" / "LC_MESSAGES").glob("*.po")):
        with po.open("rb") as f:
            catalog = read_po(f, locale="ja")
        translated |= {
            (m.id if isinstance(m.id, str) else m.id[0])
            for m in catalog
            if m.id and not m.fuzzy and all(m.string if isinstance(m.string, tuple) else [m.string])
        }
    missing = sorted(_source_messages() - translated)
    assert not missing, f"untranslated in ja/LC_MESSAGES/messages.po: {missing}"


def test_catalogs_load_from_po_sources() -> None:
    catalogs = i18n.load_catalogs()
    assert catalogs["ja"].gettext("Audit log") == "監査ログ"
    assert catalogs["ja"].gettext("Hospital responsible person") == "医療機関の責任者"
    assert catalogs["en"].gettext("Audit log") == "Audit log"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("ja-JP,ja;q=0.9,en-US;q=0.8", "ja"),
        ("en-US,en;q=0.9,ja;q=0.8", "en"),
        ("fr-FR, ja;q=0.5", "ja"),
        ("ja;q=0, en;q=0.1", "en"),
        ("de", None),
        ("", None),
        ("ja;q=abc, *", None),
    ],
)
def test_accept_language_negotiation(header: str, expected: str | None) -> None:
    assert i18n.negotiate(header) == expected


def test_choice_order_is_cookie_then_user_then_browser() -> None:
    assert i18n.choose_language("en", "ja", "ja") == "en"
    assert i18n.choose_language(None, "ja", "en") == "ja"
    assert i18n.choose_language("xx", None, "ja-JP") == "ja"
    assert i18n.choose_language(None, None, None) == "en"


def test_dates_are_formatted_per_locale() -> None:
    at = datetime(2025, 4, 1, 9, 30, 5, tzinfo=UTC)
    assert i18n.DateFormatter("ja").timestamp(at) == "2025/04/01 9:30:05 UTC"
    assert "Apr 1, 2025" in i18n.DateFormatter("en").timestamp(at)
    assert i18n.DateFormatter("ja").ago(at, at + timedelta(minutes=5)) == "5 分前"
    assert i18n.DateFormatter("en").ago(at, at + timedelta(minutes=5)) == "5 minutes ago"


def test_accept_language_gives_japanese_login_page(client_factory: Any) -> None:
    page = client_factory(lang=None, headers={"accept-language": "ja-JP,ja;q=0.9,en;q=0.5"}).get("/login")
    assert '<html lang="ja">' in page.text
    assert "ログイン" in page.text and "パスワード" in page.text
    assert '<label for="username">ユーザー名</label>' in page.text


def test_language_switch_sets_a_cookie_and_returns(client_factory: Any, live_server: Any, totp: Any) -> None:
    c = client_factory(lang=None)
    page = sign_in(c, live_server.seed.users["maker-admin"], totp)
    assert '<html lang="en">' in page.text  # the manufacturer's users prefer English
    r = c.get("/lang/ja", params={"next": "/devices?hospital=hospital-a"})
    assert r.status_code == 303
    assert r.headers["location"] == "/devices?hospital=hospital-a"
    assert "medsec_lang=ja" in r.headers["set-cookie"]
    page = c.get(r.headers["location"])
    assert '<html lang="ja">' in page.text
    assert "最終チェックイン" in page.text and "医療機関" in page.text and "機器" in page.text
    audit = c.get("/audit")
    assert "監査ログ" in audit.text and "検証" in audit.text
    assert 'href="/lang/en?next=/audit"' in audit.text
    assert c.get("/lang/xx", params={"next": "/audit"}).headers.get("set-cookie") is None
