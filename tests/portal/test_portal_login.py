"""Sign-in to the portal (PA-1): password, TOTP for privileged roles, CSRF, session lifetime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest
from sqlalchemy import select

from conftest import csrf_of, sign_in, wrong_code
from medsec.server.models import AuditEntry, User, WebSession

pytestmark = pytest.mark.req("PA-1")


def _audit_types(ctx: Any) -> list[str]:
    with ctx.tx() as session:
        return list(session.scalars(select(AuditEntry.event_type).order_by(AuditEntry.idx)))


def test_pages_redirect_to_login_without_a_session(client_factory: Any) -> None:
    c = client_factory()
    for path in ("/devices", "/devices/IC300-0001", "/audit", "/account", "/audit/export.json"):
        r = c.get(path)
        assert r.status_code == 303
        assert r.headers["location"].startswith("/login?next=")
    assert c.get("/").headers["location"] == "/login"


def test_login_page_is_accessible_html(client_factory: Any) -> None:
    r = client_factory().get("/login")
    assert r.status_code == 200
    assert '<html lang="en">' in r.text
    assert 'href="#main"' in r.text and '<main id="main"' in r.text
    assert '<label for="username">' in r.text and '<label for="password">' in r.text
    assert "<script" not in r.text
    assert "script-src" not in r.headers["content-security-policy"]  # default-src 'none' forbids scripts
    assert r.headers["cache-control"] == "no-store"


def test_hospital_auditor_signs_in_with_password_only(client_factory: Any, live_server: Any, totp: Any) -> None:
    user = live_server.seed.users["a-auditor"]
    c = client_factory()
    page = sign_in(c, user, totp)
    assert page.status_code == 200
    cookie = next(ck for ck in c.cookies.jar if ck.name == "medsec_session")
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert "auth.login" in _audit_types(live_server.ctx)


def test_session_cookie_flags(client_factory: Any, live_server: Any) -> None:
    user = live_server.seed.users["a-auditor"]
    c = client_factory()
    page = c.get("/login")
    r = c.post("/login", data={"username": user.username, "password": user.password, "csrf_token": csrf_of(page.text)})
    set_cookie = r.headers["set-cookie"].lower()
    assert "medsec_session=" in set_cookie
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie and "path=/" in set_cookie


def test_wrong_password_shows_the_form_again_and_is_audited(client_factory: Any, live_server: Any) -> None:
    user = live_server.seed.users["a-auditor"]
    c = client_factory()
    page = c.get("/login")
    r = c.post(
        "/login", data={"username": user.username, "password": "not-the-password", "csrf_token": csrf_of(page.text)}
    )
    assert r.status_code == 401
    assert "Wrong username or password." in r.text
    assert 'role="alert"' in r.text
    assert f'value="{user.username}"' in r.text
    assert "medsec_session" not in c.cookies
    assert "auth.login_failed" in _audit_types(live_server.ctx)
    with live_server.ctx.tx() as session:
        assert session.scalar(select(User.failed_logins).where(User.username == user.username)) == 1


def test_login_without_csrf_token_is_refused(client_factory: Any, live_server: Any) -> None:
    user = live_server.seed.users["a-auditor"]
    c = client_factory()
    c.get("/login")  # has the cookie, but the form field is missing
    r = c.post("/login", data={"username": user.username, "password": user.password})
    assert r.status_code == 403
    assert "medsec_session" not in c.cookies
    # and a token not matching the cookie (login CSRF from another site) is refused too
    r = c.post("/login", data={"username": user.username, "password": user.password, "csrf_token": "x" * 43})
    assert r.status_code == 403


def test_privileged_user_needs_totp_before_any_page(client_factory: Any, live_server: Any, totp: Any) -> None:
    user = live_server.seed.users["a-responsible"]
    c = client_factory()
    page = c.get("/login")
    r = c.post("/login", data={"username": user.username, "password": user.password, "csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login/totp")
    # a half-open session reaches nothing else
    for path in ("/devices", "/audit", "/account", "/audit/export.json"):
        blocked = c.get(path)
        assert blocked.status_code == 303
        assert blocked.headers["location"].startswith("/login/totp")
    form = c.get("/login/totp")
    assert form.status_code == 200
    half_open_cookie = c.cookies["medsec_session"]
    wrong = c.post("/login/totp", data={"code": wrong_code(user.totp_secret), "csrf_token": csrf_of(form.text)})
    assert wrong.status_code == 401
    assert "Wrong or already used one-time code" in wrong.text
    assert c.get("/devices").status_code == 303
    ok = c.post("/login/totp", data={"code": totp.next(user), "csrf_token": csrf_of(form.text)})
    assert ok.status_code == 303
    assert ok.headers["location"] == "/devices"
    assert c.cookies["medsec_session"] != half_open_cookie  # a new session id after the second factor
    assert c.get("/devices").status_code == 200
    types = _audit_types(live_server.ctx)
    assert "auth.login_failed" in types and types[-1] == "auth.login"


def test_totp_code_cannot_be_replayed(client_factory: Any, live_server: Any, totp: Any) -> None:
    user = live_server.seed.users["a-responsible"]
    sign_in(client_factory(), user, totp)
    used_code = str(pyotp.TOTP(user.totp_secret).generate_otp(totp.used[user.username]))
    c = client_factory()
    page = c.get("/login")
    c.post("/login", data={"username": user.username, "password": user.password, "csrf_token": csrf_of(page.text)})
    form = c.get("/login/totp")
    r = c.post("/login/totp", data={"code": used_code, "csrf_token": csrf_of(form.text)})
    assert r.status_code == 401


def test_guessing_codes_on_a_half_open_session_locks_it_out(client_factory: Any, live_server: Any, totp: Any) -> None:
    user = live_server.seed.users["a-responsible"]
    c = client_factory()
    page = c.get("/login")
    c.post("/login", data={"username": user.username, "password": user.password, "csrf_token": csrf_of(page.text)})
    form = c.get("/login/totp")
    token = csrf_of(form.text)
    for _ in range(live_server.ctx.settings.login_max_failures):
        assert (
            c.post("/login/totp", data={"code": wrong_code(user.totp_secret), "csrf_token": token}).status_code == 401
        )
    r = c.post("/login/totp", data={"code": totp.next(user), "csrf_token": token})
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?") and "reason=locked" in r.headers["location"]
    assert "Too many failed sign-in attempts" in c.get(r.headers["location"]).text


def test_privileged_user_without_totp_must_enrol_first(client_factory: Any, live_server: Any, totp: Any) -> None:
    user = live_server.seed.users["a-admin"]
    with live_server.ctx.tx() as session:
        row = session.scalar(select(User).where(User.username == user.username))
        row.totp_secret = None
        row.totp_confirmed = False
    c = client_factory()
    page = c.get("/login")
    r = c.post("/login", data={"username": user.username, "password": user.password, "csrf_token": csrf_of(page.text)})
    assert r.headers["location"].startswith("/account/totp")
    assert c.get("/devices").headers["location"].startswith("/account/totp")
    enrol = c.get("/account/totp")
    assert enrol.status_code == 200
    uri = enrol.text.split("otpauth://", 1)[1].split("<", 1)[0]
    secret = uri.split("secret=", 1)[1].split("&", 1)[0]
    bad = c.post("/account/totp", data={"code": wrong_code(secret), "csrf_token": csrf_of(enrol.text)})
    assert bad.status_code == 422
    assert secret in bad.text.replace(" ", "")  # the same secret again, not a new one
    ok = c.post("/account/totp", data={"code": totp.for_secret("enrol", secret), "csrf_token": csrf_of(enrol.text)})
    assert ok.status_code == 303
    assert c.get("/devices").status_code == 200
    assert "auth.totp_enrolled" in _audit_types(live_server.ctx)


def test_post_without_session_csrf_token_is_refused(client_factory: Any, live_server: Any, totp: Any) -> None:
    c = client_factory()
    sign_in(c, live_server.seed.users["a-auditor"], totp)
    for path, data in (
        ("/logout", {}),
        ("/audit/verify", {}),
        ("/account", {"locale": "ja"}),
        ("/account/tokens", {"name": "ci", "expires_days": "30"}),
    ):
        r = c.post(path, data=data)
        assert r.status_code == 403, path
        r = c.post(path, data={**data, "csrf_token": "forged"})
        assert r.status_code == 403, path
    assert c.get("/devices").status_code == 200  # still signed in: the forged logout did nothing
    assert "auth.csrf_refused" in _audit_types(live_server.ctx)


def test_logout_ends_the_session(client_factory: Any, live_server: Any, totp: Any) -> None:
    c = client_factory()
    page = sign_in(c, live_server.seed.users["a-auditor"], totp)
    stolen = c.cookies["medsec_session"]
    r = c.post("/logout", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    again = client_factory(cookies={"medsec_session": stolen})
    assert again.get("/devices").status_code == 303


def test_expired_session_asks_to_sign_in_again(client_factory: Any, live_server: Any, totp: Any) -> None:
    c = client_factory()
    sign_in(c, live_server.seed.users["a-auditor"], totp)
    with live_server.ctx.tx() as session:
        for row in session.scalars(select(WebSession)):
            row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    r = c.get("/audit")
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Faudit&expired=1"
    page = c.get(r.headers["location"])
    assert "Your session has ended. Please sign in again." in page.text


def test_next_parameter_cannot_leave_the_site(client_factory: Any, live_server: Any, totp: Any) -> None:
    c = client_factory()
    user = live_server.seed.users["a-auditor"]
    for evil in ("https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"):
        page = c.get("/login", params={"next": evil})
        assert 'name="next" value="/devices"' in page.text
        r = c.get("/lang/ja", params={"next": evil})
        assert r.headers["location"] == "/"
    page = c.get("/login")
    r = c.post(
        "/login",
        data={"username": user.username, "password": user.password, "csrf_token": csrf_of(page.text), "next": "//evil"},
    )
    assert r.headers["location"] == "/devices"
