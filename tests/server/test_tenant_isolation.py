"""Walk every route as a user of hospital A and prove nothing of hospital B is ever returned (PA-1)."""

from __future__ import annotations

import re

import httpx
import pytest
from device_sim import SimDevice
from fastapi.routing import APIRoute
from sqlalchemy import select
from starlette.routing import Route

from medsec.server.app import create_app
from medsec.server.models import ApiToken, Organization, User
from medsec.server.services import accounts

pytestmark = pytest.mark.req("PA-1")

SAFE_BODY = {"name": "x", "roles": [], "serial": "x", "hardware_id": "x", "hospital": "hospital-b"}


def _hospital_b_markers(live_server) -> list[str]:
    seed = live_server.seed
    markers = [d.serial for d in seed.devices if d.hospital == "hospital-b"]
    markers += [u for u, v in seed.users.items() if v.org_slug == "hospital-b"]
    markers += ["hospital-b", "Minato University Hospital", "ICU"]
    return markers


def _activate_hospital_b_device(live_server) -> None:
    for d in live_server.seed.devices:
        if d.hospital == "hospital-b":
            dev = SimDevice(live_server.url, d.serial, d.hardware_id)
            assert dev.enroll(d.enrollment_token).status_code == 200
            assert dev.checkin().status_code == 200


def _substitutions(live_server) -> dict[str, str]:
    with live_server.ctx.tx() as s:
        b_user = s.scalar(select(User).where(User.username == "b-responsible"))
        token_id = s.scalar(select(ApiToken.id).where(ApiToken.user_id == b_user.id))
    b_serial = next(d.serial for d in live_server.seed.devices if d.hospital == "hospital-b")
    return {
        "serial": b_serial,
        "slug": "hospital-b",
        "hospital": "hospital-b",
        "username": "b-responsible",
        "token_id": str(token_id),
        "code": "en",
    }


def _all_routes(routes) -> list[Route]:
    """Every endpoint, including those of included routers (which FastAPI wraps)."""
    found: list[Route] = []
    for route in routes:
        if hasattr(route, "original_router"):
            found += _all_routes(route.original_router.routes)
        elif isinstance(route, Route):
            found.append(route)
    return found


def _fill(path: str, subs: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: subs.get(m.group(1), "1"), path)


def _portal_cookie(live_server, username: str) -> tuple[str, str]:
    with live_server.ctx.tx() as s:
        user = s.scalar(select(User).where(User.username == username))
        cookie, row = accounts.create_web_session(s, live_server.ctx.settings, user, mfa_verified=True)
        return cookie, row.csrf_token


def _assert_no_leak(response: httpx.Response, markers: list[str], where: str) -> None:
    assert response.status_code < 500, f"{where} gave {response.status_code}: {response.text[:300]}"
    # The page may echo the URL that was asked for (language links); that is not data of B.
    text = response.text.replace(response.request.url.path, "")
    for marker in markers:
        # A name counts only when it stands alone: "ICU" inside a base64 signature is not hospital B's ward.
        found = re.search(rf"(?<![A-Za-z0-9]){re.escape(marker)}(?![A-Za-z0-9])", text)
        assert found is None, f"{where} returned hospital B's {marker!r} to hospital A"


@pytest.mark.parametrize("username", ["a-responsible", "a-admin", "a-auditor"])
def test_hospital_a_never_sees_hospital_b(live_server, username):
    _activate_hospital_b_device(live_server)
    markers = _hospital_b_markers(live_server)
    subs = _substitutions(live_server)
    token = live_server.seed.tokens[username]
    cookie, csrf = _portal_cookie(live_server, username)
    app = create_app(live_server.ctx.settings, context=live_server.ctx)
    app_routes = _all_routes(app.routes)
    assert len(app_routes) > 15
    walked = 0
    with httpx.Client(base_url=live_server.url, follow_redirects=False) as client:
        for route in app_routes:
            if route.path.startswith(("/openapi", "/docs", "/redoc", "/static")) or route.path in {
                "/lang/{code}",
                "/logout",
            }:
                continue  # framework pages, static files, and logout (which would end the walk's session)
            path = _fill(route.path, subs)
            for method in sorted(route.methods or {"GET"}):
                if method == "HEAD":
                    continue
                where = f"{method} {route.path}"
                kwargs: dict = {}
                if method != "GET":
                    kwargs = {"json": SAFE_BODY} if route.path.startswith("/api/") else {"data": {"csrf_token": csrf}}
                if route.path.startswith("/api/") or route.path == "/healthz":
                    r = client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
                else:
                    client.cookies.set("medsec_session", cookie)
                    r = client.request(method, path, **kwargs)
                _assert_no_leak(r, markers, where)
                if isinstance(route, APIRoute) and "{" in route.path and method == "GET":
                    assert r.status_code in (403, 404), f"{where} with hospital B's ids gave {r.status_code}"
                    # No existence oracle: B's object looks exactly like one that does not exist.
                    fake_path = _fill(route.path, {k: "does-not-exist-0" for k in subs} | {"token_id": "999999"})
                    if route.path.startswith("/api/"):
                        fake = client.get(fake_path, headers={"Authorization": f"Bearer {token}"})
                        assert (fake.status_code, fake.json()["error"]) == (r.status_code, r.json()["error"]), where
                    else:
                        assert client.get(fake_path).status_code == r.status_code, where
                walked += 1
    assert walked > 15


def test_manufacturer_sees_both_hospitals(live_server):
    _activate_hospital_b_device(live_server)
    token = live_server.seed.tokens["maker-admin"]
    r = httpx.get(f"{live_server.url}/api/v1/devices", headers={"Authorization": f"Bearer {token}"})
    hospitals = {d["hospital"] for d in r.json()}
    assert hospitals == {"hospital-a", "hospital-b"}


def test_hospital_b_organisation_is_invisible_by_slug(live_server):
    token = live_server.seed.tokens["a-admin"]
    r = httpx.get(f"{live_server.url}/api/v1/devices?hospital=hospital-b", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 404
    assert r.json()["error"] == "unknown_organization"
    with live_server.ctx.tx() as s:
        assert s.scalar(select(Organization).where(Organization.slug == "hospital-b")) is not None


def test_leak_check_finds_a_name_but_not_a_signature():
    request = httpx.Request("GET", "http://127.0.0.1/api/v1/devices")
    signature = httpx.Response(200, json={"signature": "3d8+AfpRrICUIkYhH8P/rq86"}, request=request)
    _assert_no_leak(signature, ["ICU"], "GET /api/v1/audit/checkpoint")
    for body in ({"site": "ICU"}, {"url": "/devices/IC300-0003/report"}):
        leak = httpx.Response(200, json=body, request=request)
        with pytest.raises(AssertionError, match="hospital B's"):
            _assert_no_leak(leak, ["ICU", "IC300-0003"], "GET /api/v1/devices")
