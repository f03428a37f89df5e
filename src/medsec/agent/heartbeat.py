"""The agent's heartbeat file, and the gap a crash leaves in the device's watch (RL-1).

While the agent runs, a thread rewrites ``var/lib/medsec/heartbeat.json`` every few seconds
(atomically: a crash leaves the previous beat, never a torn file) with the time, the process id
and ``"state": "running"``. A clean stop writes ``"state": "stopped"`` after ``agent.stopped`` is
in the access log. So on the next start a beat that still says ``running`` means the previous
run ended without logging it (SIGKILL, an OOM kill, a power cut, a hang the supervisor ended):
the agent appends ``agent.gap`` with the last beat and the restart time to its signed access log,
and the next check-in carries that log to the server's witness.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsec.atomic_file import atomic_write

logger = logging.getLogger(__name__)

HEARTBEAT_FORMAT = 1
MAX_HEARTBEAT_BYTES = 4096
STATE_RUNNING = "running"
STATE_STOPPED = "stopped"


@dataclass(frozen=True)
class Gap:
    """The time the device was not watched: from the last heartbeat of a run that did not stop cleanly."""

    last_heartbeat_at: float | None  # None: the beat was unreadable (a damaged file counts as a gap)
    restarted_at: float
    previous_pid: int | None

    @property
    def seconds(self) -> float:
        if self.last_heartbeat_at is None:
            return 0.0
        return max(0.0, self.restarted_at - self.last_heartbeat_at)

    def fields(self) -> dict[str, Any]:
        """The fields of the ``agent.gap`` access-log entry (Unix seconds, as every entry's ``at``).

        Whole seconds, because canonical JSON has no floats; rounded outwards, so the logged
        gap is never shorter than the real one.
        """
        last = math.floor(self.last_heartbeat_at) if self.last_heartbeat_at is not None else None
        restarted = math.ceil(self.restarted_at)
        return {
            "last_heartbeat_at": last,
            "restarted_at": restarted,
            "gap_seconds": restarted - last if last is not None else None,
            "previous_pid": self.previous_pid,
        }


class Heartbeat:
    """Writes the heartbeat file on a thread while the agent runs; reads what the last run left."""

    def __init__(self, path: Path, interval: float, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._interval = interval
        self._clock = clock
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def previous_gap(self) -> Gap | None:
        """The gap the previous run left, or None if it stopped cleanly (or there was none)."""
        try:
            with self.path.open("rb") as f:
                raw = f.read(MAX_HEARTBEAT_BYTES + 1)
        except FileNotFoundError:
            return None  # the first start on this device root
        except OSError as e:
            logger.warning("cannot read heartbeat %s: %s", self.path, e.strerror)
            return Gap(None, self._clock(), None)
        beat = _parse(raw)
        if beat is None:
            logger.warning("heartbeat %s is damaged; logging a gap of unknown length", self.path)
            return Gap(None, self._clock(), None)
        if beat["state"] == STATE_STOPPED:
            return None
        return Gap(float(beat["at"]), self._clock(), int(beat["pid"]))

    def start(self) -> None:
        """Write the first beat now and keep beating every ``interval`` seconds until :meth:`stop`."""
        self._beat(STATE_RUNNING)
        self._thread = threading.Thread(target=self._run, name="medsec-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, *, clean: bool) -> None:
        """Stop beating; with ``clean`` mark the run as stopped, so the next start logs no gap."""
        self._halt.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)
        if clean:
            try:
                self._beat(STATE_STOPPED)
            except OSError as e:
                logger.warning("cannot write heartbeat %s: %s", self.path, e.strerror)

    def _run(self) -> None:
        while not self._halt.wait(self._interval):
            try:
                self._beat(STATE_RUNNING)
            except OSError as e:
                # A full disk must not stop the agent; the next start then reports a longer gap.
                logger.warning("cannot write heartbeat %s: %s", self.path, e.strerror)

    def _beat(self, state: str) -> None:
        data = {"format": HEARTBEAT_FORMAT, "at": round(self._clock(), 3), "pid": os.getpid(), "state": state}
        atomic_write(self.path, json.dumps(data, sort_keys=True).encode("utf-8") + b"\n", mode=0o600)


def _parse(raw: bytes) -> dict[str, Any] | None:
    """The beat in ``raw`` if it is well formed, else None."""
    if len(raw) > MAX_HEARTBEAT_BYTES:
        return None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != HEARTBEAT_FORMAT:
        return None
    at, pid, state = data.get("at"), data.get("pid"), data.get("state")
    if not isinstance(at, int | float) or isinstance(at, bool) or not isinstance(pid, int) or isinstance(pid, bool):
        return None
    if state not in (STATE_RUNNING, STATE_STOPPED):
        return None
    return data
