"""A static file server (127.0.0.1 unless told) with HTTP Range support and switchable misbehaviour."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE_RE = re.compile(r"bytes=(\d+)-")


@dataclass
class Behaviour:
    """What the server does wrong, per URL path suffix."""

    cut_after: dict[str, int] = field(default_factory=dict)  # close after N bytes (once)
    extra_bytes: dict[str, int] = field(default_factory=dict)  # append N junk bytes, no Content-Length
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        behaviour = self.server.behaviour
        path = self.path.split("?", 1)[0]
        header = self.headers.get("Range")
        behaviour.requests.append((path, header))
        file = (self.server.www / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.server.www) or not file.is_file():
            self.send_error(404)
            return
        data = file.read_bytes()
        start = 0
        match = _RANGE_RE.fullmatch(header or "")
        if match and not behaviour.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        extra = next((n for s, n in behaviour.extra_bytes.items() if path.endswith(s)), 0)
        cut = next((s for s in behaviour.cut_after if path.endswith(s)), None)
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if extra:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut is not None:
            limit = behaviour.cut_after.pop(cut)
            self.wfile.write(body[:limit])
            self.wfile.flush()
            self.close_connection = True
            return
        try:
            self.wfile.write(body)
            if extra:
                self.wfile.write(b"\0" * extra)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, www: Path, behaviour: Behaviour, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.www = www.resolve()
        self.behaviour = behaviour


@contextmanager
def serve(
    www: Path, behaviour: Behaviour | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[tuple[str, Behaviour]]:
    behaviour = behaviour or Behaviour()
    server = _Server(www, behaviour, host, port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", behaviour
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
