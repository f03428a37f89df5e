"""Directory A/B slots: ``ROOT/slots/{a,b}``, the running one named by the symlink ``ROOT/slots/current``.

A slot counts as holding a release only when its marker ``<slot>/.medsec-slot/release.json``
exists; the marker is removed before a slot is cleared and written (atomically) only after
every file was written, hashed and fsynced. So a crash mid-write never leaves a slot that
looks complete.

``ROOT/slots/slots.json`` (atomic writes) records the committed slot, the slot on trial and
its attempt counter, the directory equivalent of a bootloader's boot counter. ``current``
is switched with ``os.replace`` of a new symlink. The state file is always written before
the symlink moves, and :meth:`DirectorySlots.recover` repairs the one gap that leaves: a
``current`` that names neither the committed nor the trial slot is pointed back at the
committed one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from medsec.atomic_file import atomic_write, fsync_dir
from medsec.updates.device_errors import UpdateStateError
from medsec.updates.fetcher import Failpoint, no_failpoint

logger = logging.getLogger(__name__)

SLOT_NAMES = ("a", "b")
MARKER_DIR = ".medsec-slot"
MARKER_FILE = "release.json"
TRUSTDB_FILE = "trustdb.json"  # the release's signed trust database, next to the marker (RL-3)
STATE_FILE = "slots.json"
CURRENT_LINK = "current"
STATE_FORMAT = 1
DEFAULT_MAX_ATTEMPTS = 3
MAX_MARKER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class SlotState:
    committed: str | None = None
    trying: str | None = None  # switched to, not yet committed
    attempts: int = 0  # health-check attempts of the trial slot (boot counter)
    last_rollback: str | None = None  # why the last trial slot was abandoned


@dataclass(frozen=True)
class SlotRelease:
    """What a complete slot holds: written last, read to know what runs."""

    product: str
    version: str
    release_counter: int
    target_name: str
    target_hashes: dict[str, str]
    manifest: dict[str, Any]


class DirectorySlots:
    def __init__(
        self, slots_dir: Path, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS, failpoint: Failpoint = no_failpoint
    ) -> None:
        if max_attempts < 1:
            raise UpdateStateError("max_attempts must be at least 1")
        self.dir = slots_dir
        self.max_attempts = max_attempts
        self._failpoint = failpoint

    # -- reading -------------------------------------------------------------------------------------

    def slot_dir(self, slot: str) -> Path:
        if slot not in SLOT_NAMES:
            raise UpdateStateError(f"unknown slot {slot!r}")
        return self.dir / slot

    def state(self) -> SlotState:
        path = self.dir / STATE_FILE
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return SlotState()
        except (OSError, ValueError) as e:
            raise UpdateStateError(f"slot state {path} is unreadable: {e}") from e
        if not isinstance(data, dict) or data.pop("format", None) != STATE_FORMAT:
            raise UpdateStateError(f"slot state {path} has an unknown format")
        try:
            state = SlotState(**data)
        except TypeError as e:
            raise UpdateStateError(f"slot state {path} is damaged: {e}") from e
        for slot in (state.committed, state.trying):
            if slot is not None and slot not in SLOT_NAMES:
                raise UpdateStateError(f"slot state {path} names unknown slot {slot!r}")
        if not isinstance(state.attempts, int) or state.attempts < 0:
            raise UpdateStateError(f"slot state {path} has a bad attempt counter")
        return state

    def current(self) -> str | None:
        """The slot ``current`` points at, or None before the first install."""
        try:
            target = os.readlink(self.dir / CURRENT_LINK)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise UpdateStateError(f"{self.dir / CURRENT_LINK} is not a symlink: {e.strerror}") from e
        if target not in SLOT_NAMES:
            raise UpdateStateError(f"{self.dir / CURRENT_LINK} points at {target!r}, not a slot")
        return target

    def trust_db_path(self, slot: str) -> Path:
        """Where ``slot`` keeps its release's signed trust database: it switches with the slot."""
        return self.slot_dir(slot) / MARKER_DIR / TRUSTDB_FILE

    def release(self, slot: str) -> SlotRelease | None:
        """The release a complete slot holds, or None when the slot is empty or half-written."""
        path = self.slot_dir(slot) / MARKER_DIR / MARKER_FILE
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_MARKER_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise UpdateStateError(f"slot marker {path} is unreadable: {e.strerror}") from e
        try:
            data = json.loads(raw)
            return SlotRelease(**data)
        except (ValueError, TypeError) as e:
            raise UpdateStateError(f"slot marker {path} is damaged: {e}") from e

    def inactive(self) -> str:
        """The slot an install writes to: never the committed one."""
        committed = self.state().committed
        return "b" if committed == "a" else "a"

    # -- changing ------------------------------------------------------------------------------------

    def recover(self) -> SlotState:
        """Make ``current`` agree with the state file after a crash; return the state."""
        state = self.state()
        current = self.current()
        if state.committed is None and state.trying is None:
            return state
        if current not in (state.committed, state.trying):
            fallback = state.committed or state.trying
            assert fallback is not None
            logger.warning("slots: current is %s, state says %s; pointing current at %s", current, state, fallback)
            self._point_current(fallback)
        elif state.trying is not None and current != state.trying:
            # The switch was recorded but the symlink never moved: the trial never started.
            state = replace(state, trying=None, attempts=0)
            self._save(state)
        return state

    def begin_write(self, slot: str) -> Path:
        """Invalidate and empty ``slot`` for a new release; return its folder."""
        state = self.recover()
        if slot in (state.committed, self.current()):
            raise UpdateStateError(f"slot {slot} is in use and cannot be written")
        if state.trying == slot:
            self._save(replace(state, trying=None, attempts=0))
        path = self.slot_dir(slot)
        marker = path / MARKER_DIR / MARKER_FILE
        if marker.exists():
            # Marker first: a crash while clearing must not leave a "complete" slot with holes.
            marker.unlink()
            fsync_dir(marker.parent)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, mode=0o755)
        (path / MARKER_DIR).mkdir(mode=0o755)
        fsync_dir(self.dir)
        return path

    def finish_write(self, slot: str, release: SlotRelease) -> None:
        """Mark ``slot`` complete (after all its files are fsynced)."""
        path = self.slot_dir(slot) / MARKER_DIR / MARKER_FILE
        data = json.dumps(asdict(release), sort_keys=True, separators=(",", ":")).encode("utf-8")
        atomic_write(path, data)

    def switch(self, slot: str) -> None:
        """Start a trial of ``slot``: record it, then point ``current`` at it."""
        if self.release(slot) is None:
            raise UpdateStateError(f"slot {slot} holds no complete release")
        state = self.recover()
        if state.committed == slot:
            raise UpdateStateError(f"slot {slot} is already the committed slot")
        if not (state.trying == slot and self.current() == slot):
            self._save(replace(state, trying=slot, attempts=0))
            self._failpoint("switch.recorded")
            self._point_current(slot)
        self._failpoint("switch.done")

    def record_attempt(self) -> int:
        """Count one more attempt of the trial slot; return the count (persisted before the attempt)."""
        state = self.recover()
        if state.trying is None:
            raise UpdateStateError("no slot is on trial")
        state = replace(state, attempts=state.attempts + 1)
        self._save(state)
        return state.attempts

    def commit(self) -> None:
        """Make the trial slot the committed one."""
        state = self.recover()
        if state.trying is None:
            raise UpdateStateError("no slot is on trial")
        self._failpoint("commit.before")
        self._save(SlotState(committed=state.trying, trying=None, attempts=0, last_rollback=state.last_rollback))
        self._failpoint("commit.done")

    def rollback(self, reason: str) -> None:
        """Abandon the trial slot and run the committed one again."""
        state = self.recover()
        if state.trying is None:
            return
        bad = state.trying
        if state.committed is None:
            raise UpdateStateError("no committed slot to roll back to")
        self._save(replace(state, trying=None, attempts=0, last_rollback=reason))
        self._failpoint("rollback.recorded")
        self._point_current(state.committed)
        marker = self.slot_dir(bad) / MARKER_DIR / MARKER_FILE
        # A slot that failed its trial is never switched to again without a fresh install.
        marker.unlink(missing_ok=True)
        fsync_dir(marker.parent)
        self._failpoint("rollback.done")

    def _save(self, state: SlotState) -> None:
        data = json.dumps({"format": STATE_FORMAT, **asdict(state)}, sort_keys=True).encode("utf-8") + b"\n"
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / STATE_FILE, data)

    def _point_current(self, slot: str) -> None:
        self.slot_dir(slot)
        tmp = self.dir / f".{CURRENT_LINK}.new"
        tmp.unlink(missing_ok=True)
        os.symlink(slot, tmp)
        os.replace(tmp, self.dir / CURRENT_LINK)
        fsync_dir(self.dir)
