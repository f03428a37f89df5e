"""Signs the device's requests for its own director metadata (``medsec.protocol.sign_director_request``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator

import httpx

from medsec.crypto.keys import SigningKey
from medsec.protocol import sign_director_request


class DirectorRequestAuth(httpx.Auth):
    """httpx authentication that adds the device signature to ``/director/<serial>/`` requests only."""

    def __init__(self, key: SigningKey, serial: str, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._serial = serial
        self._clock = clock

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        path = request.url.path
        if path.startswith(f"/director/{self._serial}/"):
            request.headers.update(sign_director_request(self._key, self._serial, path, int(self._clock())))
        yield request
