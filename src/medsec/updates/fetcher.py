"""HTTP for the update client: a ``tuf.ngclient`` fetcher over httpx, plus bounded, resumable target downloads.

Metadata goes through :meth:`HttpxFetcher.fetch`, which ``tuf.ngclient`` bounds by the
lengths it trusts (TUF 5.2-5.6). Targets go through :meth:`HttpxFetcher.download_target`:
the bytes land in ``<destination>.part`` next to the destination, a later call continues
with an HTTP ``Range`` request where the last one stopped (a cut connection, a crash, a
power loss), at most ``length`` bytes are ever accepted, and the file is moved into place
only after its length and every hash matched (TUF 5.7.3). A download can be stopped from
another thread (``cancel`` and :meth:`HttpxFetcher.interrupt`); it keeps its part file.

The receiving thread writes each chunk itself (one short system call); where a core is free,
a second thread hashes batches of the same chunks, so the SHA-256 of a large bundle adds
little to the download's time. Writeback to disk is started every few MiB, so the one fsync
that makes the verified bundle durable has little left to do.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import queue
import re
import socket
import threading
from abc import ABC, abstractmethod
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
HASH_BATCH_BYTES = 2 * 1024 * 1024  # hand chunks to the hashing thread a few MiB at a time
HASH_BATCHES = 4  # batches in flight: bounds the memory held for hashing to ~10 MiB
WRITEBACK_BYTES = 8 * 1024 * 1024  # start writing the part file back to disk every 8 MiB
SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>
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
        # Unbuffered: every chunk reaches the page cache as soon as it is received, so a kill
        # between two chunks keeps all of them for the resume.
        with os.fdopen(fd, "r+b", buffering=0) as f:
            offset = os.fstat(f.fileno()).st_size
            if offset > length:
                # A part longer than the target cannot be a prefix of it.
                f.truncate(0)
                offset = 0
            offset = _hash_prefix(f, offset, hashers)
            if offset < length:
                self._continue(url, f, offset, length, hashers, failpoint)
            else:
                os.fsync(f.fileno())
        for name, hasher in hashers.items():
            if hasher.hexdigest() != hashes[name].lower():
                part.unlink(missing_ok=True)
                raise TargetHashMismatch(f"{url}: the {name} of the downloaded file does not match the signed target")
        failpoint("download.verified")
        # Durable before it gets its final name: the update state records this name as downloaded next.
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
    ) -> None:
        """Fetch bytes ``offset..length`` into ``f`` and feed them to ``hashers``; on return ``f`` is
        complete and fsynced and ``hashers`` have seen all of it."""
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
            offset = _start_offset(url, response, f, offset, hashers)
            f.seek(offset)
            digest = _digest_for(hashers, _Writeback(f.fileno(), offset))
            try:
                offset = self._receive(url, response, f, offset, length, digest, failpoint)
                # The durability point of the whole download; the hashing thread finishes meanwhile.
                os.fsync(f.fileno())
                digest.finish()
            finally:
                digest.abandon()
        finally:
            self._active = None
            response.close()

    def _receive(
        self,
        url: str,
        response: httpx.Response,
        f: Any,
        offset: int,
        length: int,
        digest: _Digest,
        failpoint: Failpoint,
    ) -> int:
        fd = f.fileno()
        cancel = self._cancel
        try:
            # Chunks as the connection delivers them: re-chunking to another size would copy them.
            for chunk in response.iter_raw():
                if len(chunk) > length - offset:
                    # TUF 5.7.3: never accept more than the signed length (endless data attack).
                    f.truncate(0)
                    raise TargetTooLong(f"{url}: the server sent more than the signed length of {length} bytes")
                _write_all(fd, chunk)
                digest.feed(chunk)
                offset += len(chunk)
                failpoint("download.chunk")
                if cancel.is_set():
                    raise UpdateTransportError(f"GET {url}: stopped after {offset} of {length} bytes; resumes later")
        except httpx.HTTPError as e:
            raise UpdateTransportError(f"GET {url}: connection failed after {offset} of {length} bytes: {e}") from e
        except OSError as e:
            raise UpdateStateError(f"cannot write the download: {e}") from e
        if offset < length:
            raise UpdateTransportError(f"GET {url}: connection closed after {offset} of {length} bytes")
        return offset


def _start_offset(url: str, response: httpx.Response, f: Any, offset: int, hashers: dict[str, Any]) -> int:
    """Check the status of a (range) response; return where its body starts in the file."""
    if response.status_code == httpx.codes.PARTIAL_CONTENT and offset:
        _check_content_range(url, response, offset)
        return offset
    if response.status_code == httpx.codes.OK:
        if offset:
            # The server ignored the range: start over rather than append a second copy.
            logger.info("%s: server does not resume; downloading from the start", url)
            f.truncate(0)
            for name in list(hashers):
                hashers[name] = hashlib.new(name)
        return 0
    if response.status_code == httpx.codes.REQUESTED_RANGE_NOT_SATISFIABLE:
        f.truncate(0)
        raise UpdateTransportError(f"{url}: server refused to resume at byte {offset}; restarting next time")
    raise UpdateTransportError(f"GET {url}: HTTP {response.status_code}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Digest(ABC):
    """Hashes the chunks the receiving thread has written, and starts their writeback to disk.

    Both are done after the write and, where a core is free, away from the receiving thread,
    whose speed is the download's speed (:class:`_BackgroundDigest`); otherwise in place
    (:class:`_InlineDigest`).
    """

    def __init__(self, hashers: Mapping[str, Any], writeback: _Writeback) -> None:
        self._hashers = tuple(hashers.values())
        self._writeback = writeback

    @abstractmethod
    def feed(self, chunk: bytes) -> None:
        """``chunk`` follows the chunks fed before and is in the file now."""

    @abstractmethod
    def finish(self) -> None:
        """Return once every chunk fed is hashed."""

    @abstractmethod
    def abandon(self) -> None:
        """Stop without hashing what is still pending (the download failed; the hashes are not used)."""

    def _digest(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            for hasher in self._hashers:
                hasher.update(chunk)
        self._writeback.written(sum(map(len, chunks)))


class _InlineDigest(_Digest):
    """No free core: a second thread would only add hand-offs, so hash each chunk as it is written."""

    def feed(self, chunk: bytes) -> None:
        self._digest([chunk])

    def finish(self) -> None:
        """Nothing is pending: every chunk was hashed when it was fed."""

    def abandon(self) -> None:
        """Nothing is pending."""


class _BackgroundDigest(_Digest):
    """Hashes on a second thread while the next chunks arrive.

    ``hashlib`` releases the GIL while it hashes a buffer larger than 2 KiB, so the digest
    runs on the other core. Chunks go over in batches of a few MiB: the receiving thread hands
    off a handful of times per download rather than once per network read (each hand-off wakes
    a thread and moves the GIL, which is what made a per-chunk hand-off slow). A batch holds the
    very ``bytes`` objects the HTTP library returned, so nothing is copied, and at most
    ``HASH_BATCHES`` batches wait, so memory stays bounded.
    """

    def __init__(self, hashers: Mapping[str, Any], writeback: _Writeback) -> None:
        super().__init__(hashers, writeback)
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=HASH_BATCHES)
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._abandoned = False
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="medsec-download-digest", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self._abandoned or self._error is not None:
                continue
            try:
                self._digest(batch)
            except BaseException as e:  # handed to the receiving thread in finish()
                self._error = e

    def feed(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= HASH_BATCH_BYTES:
            self._hand_off()

    def finish(self) -> None:
        if self._batch:
            self._hand_off()
        self._stop()
        if self._error is not None:
            raise UpdateStateError(f"cannot hash the download: {self._error}") from self._error

    def abandon(self) -> None:
        self._abandoned = True
        self._batch = []
        self._stop()

    def _hand_off(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        self._queue.put(batch)

    def _stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._queue.put(None)
            self._thread.join()


def _digest_for(hashers: Mapping[str, Any], writeback: _Writeback) -> _Digest:
    if _spare_cpu(_usable_cpus(), _load()):
        return _BackgroundDigest(hashers, writeback)
    return _InlineDigest(hashers, writeback)


def _spare_cpu(cpus: int, load: float) -> bool:
    """Whether a hashing thread would find a core of its own.

    Only then does it shorten the download; on a busy or single-core device its wake-ups and
    GIL switches cost more CPU than hashing in place (measured: ~5-10 % more CPU per bundle),
    CPU that the device's own work needs more.
    """
    return cpus >= 2 and load <= cpus - 1


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _load() -> float:
    """Runnable threads over the last minute (the download's own thread included)."""
    try:
        return os.getloadavg()[0]
    except OSError:  # unknown: assume busy, the cheaper choice
        return float("inf")


class _Writeback:
    """Starts writeback of the part file every ``WRITEBACK_BYTES`` (Linux ``sync_file_range``).

    Only a hint to the kernel: durability still comes from the fsync at the end, which then
    finds a few MiB left to write instead of the whole bundle. Where the call is missing or
    refused (another OS, a file system without it), downloads work the same, only the final
    fsync waits longer.
    """

    def __init__(self, fd: int, offset: int) -> None:
        self._fd = fd
        self._started = offset  # the start of the range not yet handed to writeback
        self._end = offset
        self._call = _sync_file_range()

    def written(self, count: int) -> None:
        """``count`` more bytes, following the ones before, are in the file."""
        self._end += count
        if self._call is None or self._end - self._started < WRITEBACK_BYTES:
            return
        if self._call(self._fd, self._started, self._end - self._started, SYNC_FILE_RANGE_WRITE) != 0:
            logger.debug("sync_file_range refused (errno %d); the final fsync writes everything", ctypes.get_errno())
            self._call = None
        self._started = self._end


@functools.cache
def _sync_file_range() -> Any | None:
    """libc's ``sync_file_range``, or None where there is none (looked up on first use, not at import)."""
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


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
