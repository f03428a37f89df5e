from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from medsec.agent.client import MAX_RESPONSE_BYTES, ServerClient, ServerUnavailable
from medsec.errors import CheckinRejected, ProtocolError

GOOD_CHECKIN = {"nonce": "n2", "checkin_interval_seconds": 60, "cosigned_checkpoint": None}


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> ServerClient:
    return ServerClient("https://server.example", httpx.Client(transport=httpx.MockTransport(handler)))


def test_checkin_answer_is_parsed() -> None:
    client = client_for(lambda request: httpx.Response(200, json=GOOD_CHECKIN))
    assert client.checkin({}).nonce == "n2"


def test_refusal_carries_the_server_code() -> None:
    client = client_for(lambda request: httpx.Response(409, json={"error": "stale_nonce", "detail": "old"}))
    with pytest.raises(CheckinRejected) as info:
        client.checkin({})
    assert info.value.code == "stale_nonce"


def test_refusal_without_a_json_body_still_has_a_code() -> None:
    client = client_for(lambda request: httpx.Response(403, text="<html>forbidden</html>"))
    with pytest.raises(CheckinRejected) as info:
        client.checkin({})
    assert info.value.code == "http_403"


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_mean_try_again_later(status: int) -> None:
    client = client_for(lambda request: httpx.Response(status))
    with pytest.raises(ServerUnavailable):
        client.checkin({})


def test_network_error_means_try_again_later() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ServerUnavailable):
        client_for(fail).checkin({})


def test_oversized_answer_is_refused() -> None:
    huge = json.dumps({**GOOD_CHECKIN, "padding": "x" * MAX_RESPONSE_BYTES}).encode()
    client = client_for(lambda request: httpx.Response(200, content=huge))
    with pytest.raises(ProtocolError, match="exceeds"):
        client.checkin({})


def test_redirect_is_not_followed() -> None:
    client = client_for(lambda request: httpx.Response(302, headers={"Location": "https://evil.example/"}))
    with pytest.raises(ProtocolError, match="unexpected HTTP 302"):
        client.checkin({})


@pytest.mark.parametrize(
    "answer",
    [
        {"checkin_interval_seconds": 60},
        {"nonce": "", "checkin_interval_seconds": 60},
        {"nonce": "n", "checkin_interval_seconds": True},
        {"nonce": "n", "checkin_interval_seconds": 60, "cosigned_checkpoint": 5},
        ["not", "an", "object"],
    ],
)
def test_malformed_answers_are_refused(answer: object) -> None:
    client = client_for(lambda request: httpx.Response(200, json=answer))
    with pytest.raises(ProtocolError):
        client.checkin({})


def test_serial_is_escaped_in_the_nonce_url() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(200, json={"nonce": "n"})

    assert client_for(handler).current_nonce("SN-1") == ("n", None)
    assert seen == ["/api/v1/devices/SN-1/nonce"]
