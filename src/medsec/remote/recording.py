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
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RecordingError("recording_unreadable", f"cannot read {path}: {e.strerror}") from e
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
