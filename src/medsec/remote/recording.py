"""Session recordings in asciicast v2, sealed with their own SHA-256.

The file is the asciicast v2 header line followed by ``[time, code, data]``
event lines: ``o`` output, ``i`` input, ``m`` markers (approval, start, file
transfers with their SHA-256, end). The last line is the seal
``[time, "m", "sha256:<hex>"]`` over every byte before it; the same hash goes
into the server's audit log, so a recording changed afterwards is detected
both by :func:`verify_recording` and against the log.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from medsec.remote.errors import RecordingError

SEAL_PREFIX = "sha256:"


class AsciicastRecorder:
    """Writes one terminal channel's recording; call :meth:`close` to seal it."""

    def __init__(
        self,
        path: Path,
        *,
        width: int = 80,
        height: int = 24,
        title: str = "",
        env: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._clock = clock
        self._start = clock()
        self._hash = hashlib.sha256()
        self._file: IO[bytes] | None = open(path, "xb")  # noqa: SIM115 - kept open for the session
        os.chmod(path, 0o600)
        header: dict[str, Any] = {"version": 2, "width": width, "height": height, "timestamp": int(self._start)}
        if title:
            header["title"] = title
        if env:
            header["env"] = env
        self._write_line(header)
        self.sha256: str | None = None

    def _write_line(self, value: Any) -> None:
        if self._file is None:
            raise RecordingError("recording_closed", f"recording {self.path} is already sealed")
        line = json.dumps(value, ensure_ascii=False, separators=(", ", ": ")).encode("utf-8") + b"\n"
        self._hash.update(line)
        self._file.write(line)

    def _elapsed(self) -> float:
        return round(max(0.0, self._clock() - self._start), 6)

    def output(self, data: bytes | str) -> None:
        self._write_line([self._elapsed(), "o", _text(data)])

    def input(self, data: bytes | str) -> None:
        self._write_line([self._elapsed(), "i", _text(data)])

    def marker(self, label: str) -> None:
        self._write_line([self._elapsed(), "m", label])

    def file_transfer(self, direction: str, name: str, sha256: str, size: int) -> None:
        self.marker(f"file {direction} {name} sha256={sha256} size={size}")

    @property
    def closed(self) -> bool:
        return self._file is None

    def close(self) -> str:
        """Seal the recording and return its SHA-256 (hex) over everything before the seal."""
        if self._file is None:
            assert self.sha256 is not None
            return self.sha256
        digest = self._hash.hexdigest()
        line = json.dumps([self._elapsed(), "m", SEAL_PREFIX + digest], separators=(", ", ": ")).encode() + b"\n"
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self.sha256 = digest
        return digest


def _text(data: bytes | str) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


@dataclass(frozen=True)
class RecordingSummary:
    sha256: str
    events: int
    markers: tuple[str, ...]
    duration: float


def verify_recording(path: Path, expected_sha256: str | None = None) -> RecordingSummary:
    """Check the seal (and ``expected_sha256`` from the audit log, when given); raise RecordingError."""
    return verify_recording_bytes(_read(path), expected_sha256)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise RecordingError("recording_unreadable", f"cannot read recording {path.name}: {e.strerror}") from e


def verify_recording_bytes(data: bytes, expected_sha256: str | None = None) -> RecordingSummary:
    """:func:`verify_recording` over bytes already read (so what is checked is what is shown or sent)."""
    body, sep, seal_line = data.rstrip(b"\n").rpartition(b"\n")
    if not sep:
        raise RecordingError("recording_malformed", "recording has no seal line")
    body += b"\n"
    try:
        seal = json.loads(seal_line)
        lines = [json.loads(line) for line in body.splitlines()]
    except ValueError as e:
        raise RecordingError("recording_malformed", f"recording is not asciicast v2 JSON lines: {e}") from e
    if not (isinstance(seal, list) and len(seal) == 3 and seal[1] == "m" and str(seal[2]).startswith(SEAL_PREFIX)):
        raise RecordingError("recording_unsealed", "the last line of the recording is not its seal")
    actual = hashlib.sha256(body).hexdigest()
    if seal[2] != SEAL_PREFIX + actual:
        raise RecordingError("recording_tampered", "the recording does not match its own SHA-256 seal")
    if expected_sha256 is not None and expected_sha256 != actual:
        raise RecordingError("recording_tampered", "the recording's SHA-256 differs from the one in the audit log")
    header = lines[0] if lines else None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise RecordingError("recording_malformed", "the first line is not an asciicast v2 header")
    events = lines[1:]
    for ev in events:
        if not (isinstance(ev, list) and len(ev) == 3 and ev[1] in ("o", "i", "m", "r")):
            raise RecordingError("recording_malformed", f"not an asciicast v2 event: {ev!r}")
    markers = tuple(str(ev[2]) for ev in events if ev[1] == "m")
    duration = float(seal[0]) if isinstance(seal[0], (int, float)) else 0.0
    return RecordingSummary(sha256=actual, events=len(events), markers=markers, duration=duration)


# -- playback ---------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
MAX_PLAYBACK_LINES = 20_000


@dataclass(frozen=True)
class PlaybackLine:
    """One line of a reconstructed recording: terminal ``output``, typed ``input`` or a ``marker``."""

    at: float
    kind: str
    text: str


@dataclass(frozen=True)
class Playback:
    summary: RecordingSummary
    header: dict[str, Any]
    lines: tuple[PlaybackLine, ...]
    truncated: bool

    @property
    def commands(self) -> tuple[str, ...]:
        return tuple(line.text for line in self.lines if line.kind == "input" and line.text.strip())

    @property
    def file_transfers(self) -> tuple[str, ...]:
        return tuple(line.text for line in self.lines if line.kind == "marker" and line.text.startswith("file "))


class _LineBuilder:
    """Turns a terminal byte stream into lines: CR/LF end a line, backspace erases, escapes are dropped."""

    def __init__(self, kind: str, out: list[PlaybackLine]) -> None:
        self.kind = kind
        self.out = out
        self.buf: list[str] = []
        self.started: float | None = None

    def feed(self, at: float, text: str) -> None:
        for ch in _ANSI.sub("", text):
            if ch in "\r\n":
                self.flush(at)
            elif ch in "\b\x7f":
                if self.buf:
                    self.buf.pop()
            elif ch == "\t" or ch >= " ":
                if self.started is None:
                    self.started = at
                self.buf.append(ch)

    def flush(self, at: float) -> None:
        if self.buf:
            self.out.append(
                PlaybackLine(self.started if self.started is not None else at, self.kind, "".join(self.buf))
            )
        self.buf.clear()
        self.started = None


def read_playback(path: Path, expected_sha256: str) -> Playback:
    """Verify ``path`` against its seal and the audit log's hash, then reconstruct it as text lines."""
    return parse_playback(_read(path), expected_sha256)


def parse_playback(data: bytes, expected_sha256: str) -> Playback:
    """Verify ``data`` against its seal and the audit log's hash, then reconstruct it as text lines.

    Raises RecordingError (``recording_tampered`` and friends) before anything is shown, so a
    changed recording is never presented as if it were good.
    """
    summary = verify_recording_bytes(data, expected_sha256)
    raw = data.decode("utf-8", "replace").splitlines()
    header = json.loads(raw[0])
    lines: list[PlaybackLine] = []
    output = _LineBuilder("output", lines)
    typed = _LineBuilder("input", lines)
    for text in raw[1:-1]:  # the last line is the seal
        at, code, data = json.loads(text)
        at = float(at)
        if code == "o":
            output.feed(at, str(data))
        elif code == "i":
            typed.feed(at, str(data))
        elif code == "m":
            output.flush(at)
            typed.flush(at)
            lines.append(PlaybackLine(at, "marker", str(data)))
        if len(lines) > MAX_PLAYBACK_LINES:
            break
    output.flush(summary.duration)
    typed.flush(summary.duration)
    truncated = len(lines) > MAX_PLAYBACK_LINES
    return Playback(summary, header, tuple(lines[:MAX_PLAYBACK_LINES]), truncated)
