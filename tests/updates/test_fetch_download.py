"""Target downloads of the update fetcher: bounded, verified, resumable, stoppable (SM-1, SM-5, SM-6).

The receiving thread writes each chunk and a second thread hashes batches of them, so these
tests use bundles spanning many hash batches (more than the hand-off queue holds) and check
that every way a download can end leaves no stray thread and never a usable unverified file.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import medsec.updates.fetcher as fetcher_module
from medsec.updates.device_errors import TargetHashMismatch, TargetTooLong, UpdateTransportError
from medsec.updates.fetcher import (
    HASH_BATCH_BYTES,
    HASH_BATCHES,
    PART_SUFFIX,
    WRITEBACK_BYTES,
    HttpxFetcher,
    _sync_file_range,
    _Writeback,
)

pytestmark = [pytest.mark.req("SM-1"), pytest.mark.req("SM-5")]

MIB = 1024 * 1024
SIZE = HASH_BATCH_BYTES * (HASH_BATCHES + 2) + 12345  # more than the hand-off queue holds, not batch-aligned
_RANGE_RE = re.compile(r"bytes=(\d+)-")


@dataclass
class Served:
    """One file on the test server and what the server does wrong with it."""

    data: bytes
    cut_after: int | None = None  # close the connection after this many body bytes (once)
    extra: int = 0  # bytes appended past the end, without a Content-Length
    stall_after: int | None = None  # send this many body bytes, then wait for `release`
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    ranges: list[str | None] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        served = self.server.files.get(self.path)
        if served is None:
            self.send_error(404)
            return
        header = self.headers.get("Range")
        served.ranges.append(header)
        match = _RANGE_RE.fullmatch(header or "")
        start = int(match.group(1)) if match else 0
        body = served.data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(served.data) - 1}/{len(served.data)}")
        if served.extra:
            self.send_header("Connection", "close")
            self.close_connection = True
            body += b"\0" * served.extra
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self._send_body(served, body)
        except OSError:
            self.close_connection = True

    def _send_body(self, served: Served, body: bytes) -> None:
        if served.cut_after is not None:
            limit, served.cut_after = served.cut_after, None
            self.wfile.write(body[:limit])
            self.wfile.flush()
            self.close_connection = True
            return
        if served.stall_after is not None:
            self.wfile.write(body[: served.stall_after])
            self.wfile.flush()
            served.stalled.set()
            served.release.wait(30)
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, Served]


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, Served]]]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.files = {}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.files
    finally:
        for served in httpd.files.values():
            served.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(params=["inline", "background"])
def digest_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of hashing, whatever the load of the machine running the tests."""
    if request.param == "background" and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    monkeypatch.setattr(fetcher_module, "_load", lambda: 0.0 if request.param == "background" else 99.0)
    return str(request.param)


def bundle(size: int = SIZE) -> bytes:
    return hashlib.shake_256(str(size).encode()).digest(size)


def signed_hashes(data: bytes) -> dict[str, str]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "sha512": hashlib.sha512(data).hexdigest()}


def digest_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "medsec-download-digest"]


def part_of(destination: Path) -> Path:
    return destination.with_name(destination.name + PART_SUFFIX)


@pytest.mark.usefixtures("digest_mode")
def test_download_across_many_hash_batches_matches_the_signed_target(
    server: tuple[str, dict[str, Served]], tmp_path: Path
) -> None:
    url, files = server
    data = bundle()
    files["/b.tar"] = Served(data)
    destination = tmp_path / "dl" / "b.tar"
    with HttpxFetcher() as fetcher:
        assert fetcher.download_target(f"{url}/b.tar", destination, len(data), signed_hashes(data)) == destination
    assert destination.read_bytes() == data
    assert not part_of(destination).exists()
    assert digest_threads() == []


@pytest.mark.usefixtures("digest_mode")
def test_tampered_bundle_is_refused_and_never_moved_into_place(
    server: tuple[str, dict[str, Served]], tmp_path: Path
) -> None:
    url, files = server
    data = bundle()
    tampered = bytearray(data)
    tampered[len(data) - MIB] ^= 0x01  # one bit, late in the file: many batches after the first
    files["/b.tar"] = Served(bytes(tampered))
    destination = tmp_path / "b.tar"
    with (
        HttpxFetcher() as fetcher,
        pytest.raises(TargetHashMismatch, match=r"the (sha256|sha512) of the downloaded file does not match"),
    ):
        fetcher.download_target(f"{url}/b.tar", destination, len(data), signed_hashes(data))
    assert not destination.exists()
    assert not part_of(destination).exists()
    assert digest_threads() == []


@pytest.mark.usefixtures("digest_mode")
def test_endless_data_attack_is_cut_at_the_signed_length(server: tuple[str, dict[str, Served]], tmp_path: Path) -> None:
    url, files = server
    data = bundle()
    files["/b.tar"] = Served(data, extra=4 * MIB)
    destination = tmp_path / "b.tar"
    with HttpxFetcher() as fetcher, pytest.raises(TargetTooLong, match=f"signed length of {len(data)}"):
        fetcher.download_target(f"{url}/b.tar", destination, len(data), signed_hashes(data))
    assert not destination.exists()
    assert part_of(destination).stat().st_size == 0
    assert digest_threads() == []


@pytest.mark.usefixtures("digest_mode")
def test_cut_download_resumes_from_its_part_file(server: tuple[str, dict[str, Served]], tmp_path: Path) -> None:
    url, files = server
    data = bundle()
    cut = 5 * MIB + 777
    files["/b.tar"] = Served(data, cut_after=cut)
    destination = tmp_path / "b.tar"
    with HttpxFetcher() as fetcher:
        with pytest.raises(UpdateTransportError, match=f"after {cut} of {len(data)} bytes"):
            fetcher.download_target(f"{url}/b.tar", destination, len(data), signed_hashes(data))
        assert not destination.exists()
        assert part_of(destination).read_bytes() == data[:cut]
        fetcher.download_target(f"{url}/b.tar", destination, len(data), signed_hashes(data))
    assert files["/b.tar"].ranges == [None, f"bytes={cut}-"]
    assert destination.read_bytes() == data
    assert digest_threads() == []


@pytest.mark.usefixtures("digest_mode")
def test_damaged_part_file_is_never_used(server: tuple[str, dict[str, Served]], tmp_path: Path) -> None:
    """A part file whose bytes changed on disk (a power loss, a bad sector) fails the signed hash
    after the resume, is deleted, and the next attempt downloads everything again."""
    url, files = server
    data = bundle()
    files["/b.tar"] = Served(data, cut_after=3 * MIB)
    destination = tmp_path / "b.tar"
    with HttpxFetcher() as fetcher:
        with pytest.raises(UpdateTransportError):
            fetcher.download_target(f"{url}/b.tar", destination, len(data), signed_hashes(data))
        with part_of(destination).open("r+b") as f:
            f.seek(MIB)
            f.write(b"\0" * 4096)
        with pytest.raises(TargetHashMismatch):
            fetcher.download_target(f"{url}/b.tar", destination, len(data), signed_hashes(data))
        assert not destination.exists() and not part_of(destination).exists()
        fetcher.download_target(f"{url}/b.tar", destination, len(data), signed_hashes(data))
    assert files["/b.tar"].ranges == [None, f"bytes={3 * MIB}-", None]
    assert destination.read_bytes() == data


@pytest.mark.usefixtures("digest_mode")
def test_stop_ends_a_stalled_download_within_a_second_and_keeps_the_part(
    server: tuple[str, dict[str, Served]], tmp_path: Path
) -> None:
    url, files = server
    data = bundle()
    served = files["/b.tar"] = Served(data, stall_after=3 * MIB)
    destination = tmp_path / "b.tar"
    cancel = threading.Event()
    outcome: list[BaseException] = []

    def download() -> None:
        try:
            fetcher.download_target(f"{url}/b.tar", destination, len(data), signed_hashes(data))
        except BaseException as e:
            outcome.append(e)

    with HttpxFetcher(timeout=30.0, cancel=cancel) as fetcher:
        worker = threading.Thread(target=download)
        worker.start()
        assert served.stalled.wait(10)
        time.sleep(0.2)  # let the receiving thread block in its read
        stopped_at = time.monotonic()
        cancel.set()
        fetcher.interrupt()
        worker.join(5)
        elapsed = time.monotonic() - stopped_at
        assert not worker.is_alive()
        assert elapsed < 1.0, f"the stalled download took {elapsed:.2f} s to stop"
        assert len(outcome) == 1 and isinstance(outcome[0], UpdateTransportError), outcome
        kept = part_of(destination).stat().st_size
        assert 0 < kept <= 3 * MIB
        assert part_of(destination).read_bytes() == data[:kept]
        assert digest_threads() == []
        # The next start resumes where the stopped one ended.
        served.stall_after = None
        cancel.clear()
        fetcher.download_target(f"{url}/b.tar", destination, len(data), signed_hashes(data))
    assert served.ranges[-1] == f"bytes={kept}-"
    assert destination.read_bytes() == data


def test_writeback_hint_is_available_for_regular_files(tmp_path: Path) -> None:
    if _sync_file_range() is None:
        pytest.skip("this C library has no sync_file_range (not Linux)")
    with (tmp_path / "f").open("wb", buffering=0) as f:
        f.write(b"\1" * WRITEBACK_BYTES)
        writeback = _Writeback(f.fileno(), 0)
        writeback.written(WRITEBACK_BYTES)
        assert writeback._call is not None  # the kernel took the hint


def test_refused_writeback_hint_does_not_stop_a_download() -> None:
    # A pipe has no page cache to write back: the kernel refuses (ESPIPE) and the hint switches itself off.
    if _sync_file_range() is None:
        pytest.skip("this C library has no sync_file_range (not Linux)")
    read_end, write_end = os.pipe()
    try:
        writeback = _Writeback(write_end, 0)
        writeback.written(WRITEBACK_BYTES)
        assert writeback._call is None
        writeback.written(2 * WRITEBACK_BYTES)  # and is not tried again
    finally:
        os.close(read_end)
        os.close(write_end)


def download_noting_digest_threads(url: str, destination: Path, data: bytes) -> set[int]:
    """Download, noting after every chunk how many hashing threads run."""
    seen: set[int] = set()

    def note(name: str) -> None:
        if name == "download.chunk":
            seen.add(len(digest_threads()))

    with HttpxFetcher() as fetcher:
        fetcher.download_target(url, destination, len(data), signed_hashes(data), failpoint=note)
    assert destination.read_bytes() == data
    return seen


def test_hashing_runs_beside_the_receiving_thread_when_a_core_is_free(
    server: tuple[str, dict[str, Served]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    monkeypatch.setattr(fetcher_module, "_load", lambda: 0.5)  # an idle device
    url, files = server
    data = bundle()
    files["/b.tar"] = Served(data)
    assert download_noting_digest_threads(f"{url}/b.tar", tmp_path / "b.tar", data) == {1}
    assert digest_threads() == []


def test_busy_device_hashes_in_the_receiving_thread(
    server: tuple[str, dict[str, Served]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetcher_module, "_load", lambda: 8.0)
    url, files = server
    data = bundle()
    files["/b.tar"] = Served(data)
    assert download_noting_digest_threads(f"{url}/b.tar", tmp_path / "b.tar", data) == {0}


def test_one_cpu_hashes_in_the_receiving_thread(
    server: tuple[str, dict[str, Served]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetcher_module, "_load", lambda: 0.0)
    url, files = server
    data = bundle()
    files["/b.tar"] = Served(data)
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(everywhere)})  # this thread only: the device has one CPU
    try:
        assert download_noting_digest_threads(f"{url}/b.tar", tmp_path / "b.tar", data) == {0}
    finally:
        os.sched_setaffinity(0, everywhere)


@pytest.mark.parametrize(
    ("cpus", "load", "background"),
    [(1, 0.0, False), (2, 0.3, True), (2, 1.0, True), (2, 1.5, False), (4, 2.9, True), (4, 6.0, False)],
)
def test_hashing_thread_only_where_a_core_is_spare(cpus: int, load: float, background: bool) -> None:
    assert fetcher_module._spare_cpu(cpus, load) is background
