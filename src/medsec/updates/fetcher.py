"""HTTP for the update client: a ``tuf.ngclient`` fetcher over httpx, plus bounded, resumable target downloads.

Metadata goes through :meth:`HttpxFetcher.fetch`, which ``tuf.ngclient`` bounds by the
lengths it trusts (TUF 5.2-5.6). Targets go through :meth:`HttpxFetcher.download_target`:
the bytes land in ``<destination>.part`` next to the destination, a later call continues
with an HTTP ``Range`` request where the last one stopped (a cut connection, a crash, a
power loss), at most ``length`` bytes are ever accepted, and the file is moved into place
only after its length and every hash matched (TUF 5.7.3). A download can be stopped from
another thread (``cancel`` and :meth:`HttpxFetcher.interrupt`); it keeps its part file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from tuf.api import exceptions as tuf_exceptions
from tuf.ngclient.fetcher import FetcherInterface

from medsec.atomic_file import fsync_dir
from medsec.updates.device_errors import (
    TargetHashMismatch,
    TargetRejected,
    TargetTooLong,
    UpdateStateError,
    UpdateTransportError,
)

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
CHUNK_SIZE = 1024 * 1024
QUEUE_CHUNKS = 64
PART_SUFFIX = ".part"
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

Failpoint = Callable[[str], None]


def no_failpoint(name: str) -> None:
    """The production failpoint: does nothing."""


class HttpxFetcher(FetcherInterface):
    """A ``FetcherInterface`` over one ``httpx.Client`` (shared connection pool, no redirects followed)."""

    def __init__(
        self,
        client: httpx.Client | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        chunk_size: int = CHUNK_SIZE,
        user_agent: str = "medsec-agent",
        cancel: threading.Event | None = None,
    ) -> None:
        self._own_client = client is None
        self._client = client or httpx.Client(
            timeout=timeout, follow_redirects=False, headers={"User-Agent": user_agent}
        )
        self._chunk_size = chunk_size
        # Set by the agent when it stops: a target download ends at the next chunk, keeping its part file.
        self._cancel = cancel if cancel is not None else threading.Event()
        self._active: httpx.Response | None = None  # the target download in progress, for interrupt()

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> HttpxFetcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- tuf.ngclient -------------------------------------------------------------------------------

    def _fetch(self, url: str) -> Iterator[bytes]:
        # The request is sent here, not lazily in the generator, so ngclient sees connection and
        # status errors from fetch() as DownloadError/DownloadHTTPError.
        response = self._open(url, {})
        if response.status_code != httpx.codes.OK:
            response.close()
            raise tuf_exceptions.DownloadHTTPError(f"GET {url}: HTTP {response.status_code}", response.status_code)
        return self._chunks(response)

    def _chunks(self, response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(self._chunk_size)
        except httpx.HTTPError as e:
            raise tuf_exceptions.DownloadError(f"GET {response.request.url}: {e}") from e
        finally:
            response.close()

    def _open(self, url: str, headers: dict[str, str]) -> httpx.Response:
        try:
            request = self._client.build_request("GET", url, headers=headers)
            return self._client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise tuf_exceptions.DownloadError(f"GET {url}: {e}") from e

    def interrupt(self) -> None:
        """Cut the target download in progress, from another thread (with ``cancel`` set first).

        A read blocked on a stalled server would otherwise hold a stopping agent for the whole
        read timeout; shutting the socket down wakes it at once, and the part file is kept.
        """
        response = self._active
        stream = response.extensions.get("network_stream") if response is not None else None
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- targets --------------------------------------------------------------------------------------

    def download_target(
        self,
        url: str,
        destination: Path,
        length: int,
        hashes: Mapping[str, str],
        *,
        failpoint: Failpoint = no_failpoint,
    ) -> Path:
        """Download ``url`` into ``destination``, resuming ``destination.part``; return ``destination``.

        Raises TargetTooLong (more than ``length`` bytes offered), TargetHashMismatch (the
        complete file has the wrong hash: the part file is deleted), TargetRejected (no usable
        hash), or UpdateTransportError (the part file is kept for the next call).
        """
        hashers = _hashers(hashes)
        part = destination.with_name(destination.name + PART_SUFFIX)
        destination.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "r+b") as f:
            offset = os.fstat(f.fileno()).st_size
            if offset > length:
                # A part longer than the target cannot be a prefix of it.
                f.truncate(0)
                offset = 0
            offset = _hash_prefix(f, offset, hashers)
            if offset < length:
                offset = self._continue(url, f, offset, length, hashers, failpoint)
            f.flush()
            os.fsync(f.fileno())
        for name, hasher in hashers.items():
            if hasher.hexdigest() != hashes[name].lower():
                part.unlink(missing_ok=True)
                raise TargetHashMismatch(f"{url}: the {name} of the downloaded file does not match the signed target")
        failpoint("download.verified")
        os.replace(part, destination)
        fsync_dir(destination.parent)
        failpoint("download.moved")
        return destination

    def _continue(
        self,
        url: str,
        f: Any,
        offset: int,
        length: int,
        hashers: dict[str, Any],
        failpoint: Failpoint,
    ) -> int:
        # Ranges count bytes of the encoded body, so ask for no transfer coding and read it raw.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        if self._cancel.is_set():
            raise UpdateTransportError(f"GET {url}: not started, the agent is stopping")
        try:
            response = self._open(url, headers)
        except tuf_exceptions.DownloadError as e:
            raise UpdateTransportError(str(e)) from e
        self._active = response
        try:
            if response.status_code == httpx.codes.PARTIAL_CONTENT and offset:
                _check_content_range(url, response, offset)
            elif response.status_code == httpx.codes.OK:
                if offset:
                    # The server ignored the range: start over rather than append a second copy.
                    logger.info("%s: server does not resume; downloading from the start", url)
                    f.seek(0)
                    f.truncate(0)
                    offset = 0
                    for name in list(hashers):
                        hashers[name] = hashlib.new(name)
            elif response.status_code == httpx.codes.REQUESTED_RANGE_NOT_SATISFIABLE:
                f.truncate(0)
                raise UpdateTransportError(f"{url}: server refused to resume at byte {offset}; restarting next time")
            else:
                raise UpdateTransportError(f"GET {url}: HTTP {response.status_code}")
            f.seek(offset)
            sink = _HashingWriter(f, hashers)
            cancel = self._cancel
            try:
                # Whatever arrived is written even when the connection is cut (close() below), so a
                # resume never fetches it again.
                for chunk in response.iter_raw():
                    room = length - offset
                    if len(chunk) > room:
                        # TUF 5.7.3: never accept more than the signed length (endless data attack).
                        sink.close()
                        f.truncate(0)
                        raise TargetTooLong(f"{url}: the server sent more than the signed length of {length} bytes")
                    sink.put(chunk)
                    offset += len(chunk)
                    failpoint("download.chunk")
                    if cancel.is_set():
                        raise UpdateTransportError(
                            f"GET {url}: stopped after {offset} of {length} bytes; resumes later"
                        )
            except httpx.HTTPError as e:
                raise UpdateTransportError(f"GET {url}: connection failed after {offset} of {length} bytes: {e}") from e
            finally:
                sink.close()
        finally:
            self._active = None
            response.close()
        if offset < length:
            raise UpdateTransportError(f"GET {url}: connection closed after {offset} of {length} bytes")
        return offset


class _HashingWriter:
    """Writes and hashes chunks on a second thread while the next chunk is received.

    Both ``write`` and ``hashlib`` release the GIL on large buffers, so receiving, hashing
    and writing overlap; the queue is bounded, so memory stays bounded too.
    """

    def __init__(self, f: Any, hashers: dict[str, Any]) -> None:
        self._f = f
        self._hashers = hashers
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="medsec-download-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                self._f.write(chunk)
                for hasher in self._hashers.values():
                    hasher.update(chunk)
            except BaseException as e:  # handed to the receiving thread in close()/put()
                self._error = e

    def put(self, chunk: bytes) -> None:
        if self._error is not None:
            self.close()
        self._queue.put(chunk)

    def close(self) -> None:
        """Wait until every queued chunk is written; re-raise a write error."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise UpdateStateError(f"cannot write the download: {self._error}") from self._error


def _hashers(hashes: Mapping[str, str]) -> dict[str, Any]:
    if not hashes:
        raise TargetRejected("the target lists no hashes")
    hashers: dict[str, Any] = {}
    for name in hashes:
        try:
            hashers[name] = hashlib.new(name)
        except ValueError as e:
            raise TargetRejected(f"the target hash algorithm {name!r} is not supported") from e
    return hashers


def _hash_prefix(f: Any, size: int, hashers: dict[str, Any]) -> int:
    """Feed the part already on disk into the hashers; return how many bytes it holds."""
    f.seek(0)
    done = 0
    while done < size:
        block = f.read(min(CHUNK_SIZE, size - done))
        if not block:
            break
        for hasher in hashers.values():
            hasher.update(block)
        done += len(block)
    if done:
        logger.info("resuming a download at byte %d", done)
    return done


def _check_content_range(url: str, response: httpx.Response, offset: int) -> None:
    match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None or int(match.group(1)) != offset:
        raise UpdateTransportError(f"{url}: the server answered the range request for byte {offset} inconsistently")


def copy_target(source: Path, destination: Path, length: int, hashes: Mapping[str, str]) -> Path:
    """Verify a local file against a signed target and put it at ``destination``; return ``destination``.

    Reads at most ``length + 1`` bytes, so a huge or endless file (a FIFO, a device node) is
    refused as soon as it is too long. When ``source`` is ``destination`` it is only checked.
    """
    hashers = _hashers(hashes)
    same = source.resolve() == destination.resolve() if destination.exists() else False
    part = destination.with_name(destination.name + PART_SUFFIX)
    done = 0
    try:
        src = source.open("rb")
    except OSError as e:
        raise TargetRejected(f"{source} cannot be read: {e.strerror}") from e
    with src:
        out = None if same else _open_part(part)
        try:
            while block := src.read(min(CHUNK_SIZE, length + 1 - done)):
                done += len(block)
                if done > length:
                    raise TargetTooLong(f"{source} is longer than the signed length of {length} bytes")
                for hasher in hashers.values():
                    hasher.update(block)
                if out is not None:
                    out.write(block)
            if out is not None:
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            if out is not None:
                part.unlink(missing_ok=True)
            raise
        finally:
            if out is not None:
                out.close()
    mismatch = done != length or any(h.hexdigest() != hashes[n].lower() for n, h in hashers.items())
    if mismatch:
        if same:
            destination.unlink(missing_ok=True)
        else:
            part.unlink(missing_ok=True)
        raise TargetHashMismatch(f"{source} does not match the signed target (length or hash)")
    if not same:
        os.replace(part, destination)
        fsync_dir(destination.parent)
    return destination


def _open_part(part: Path) -> Any:
    part.parent.mkdir(parents=True, exist_ok=True)
    part.unlink(missing_ok=True)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "wb")
