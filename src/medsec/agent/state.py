"""The agent's persistent state (``ROOT/var/lib/medsec/state.json``).

Every change is written atomically (temp file, fsync, rename), so a crash
leaves either the previous or the new state, never a torn file. The report
counter is persisted *before* a report is signed, so no counter value is ever
signed twice, whatever happens to the process afterwards.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from medsec.atomic_file import atomic_write
from medsec.errors import AgentError

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
MAX_STATE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class AgentState:
    enrolled: bool = False
    counter: int = 0  # the highest counter ever reserved; the next report uses counter + 1
    nonce: str | None = None  # the nonce to echo in the next report
    server_log_key: str | None = None
    witness_key: str | None = None
    checkin_interval_seconds: int | None = None  # the server's wish; overrides the local setting
    cosigned_checkpoint: str | None = None  # our log checkpoint with the server's witness cosignature
    cosigned_size: int = 0  # the log size that checkpoint covers
    acked_size: int = 0  # the log size in the last report the server accepted (its witness holds that tree)
    last_sent_size: int | None = None  # the log size in the last report sent, answered or not
    last_checkin_at: int | None = None  # Unix seconds of the last accepted check-in
    last_reported_version: str | None = None
    last_reported_state: str | None = None


_TYPES: dict[str, tuple[type, ...]] = {
    "enrolled": (bool,),
    "counter": (int,),
    "nonce": (str, type(None)),
    "server_log_key": (str, type(None)),
    "witness_key": (str, type(None)),
    "checkin_interval_seconds": (int, type(None)),
    "cosigned_checkpoint": (str, type(None)),
    "cosigned_size": (int,),
    "acked_size": (int,),
    "last_sent_size": (int, type(None)),
    "last_checkin_at": (int, type(None)),
    "last_reported_version": (str, type(None)),
    "last_reported_state": (str, type(None)),
}


def _check_type(name: str, value: Any) -> None:
    allowed = _TYPES[name]
    # bool is an int subclass; a counter of ``true`` is corruption, not 1.
    if isinstance(value, bool) and bool not in allowed:
        raise AgentError(f"state field {name!r} has the wrong type")
    if not isinstance(value, allowed):
        raise AgentError(f"state field {name!r} has the wrong type")


def state_from_json(data: Any) -> AgentState:
    if not isinstance(data, dict):
        raise AgentError("state is not a JSON object")
    if data.get("format") != STATE_FORMAT:
        raise AgentError(f"state format {data.get('format')!r} is not supported (expected {STATE_FORMAT})")
    values = {k: v for k, v in data.items() if k != "format"}
    unknown = sorted(set(values) - set(_TYPES))
    if unknown:
        raise AgentError(f"state has unknown field {unknown[0]!r}")
    for name, value in values.items():
        _check_type(name, value)
    state = AgentState(**values)
    if min(state.counter, state.cosigned_size, state.acked_size, state.last_sent_size or 0) < 0:
        raise AgentError("state counters must not be negative")
    return state


def state_to_json(state: AgentState) -> dict[str, Any]:
    return {"format": STATE_FORMAT, **asdict(state)}


class StateStore:
    """Reads and atomically replaces one state file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> AgentState:
        """The stored state, or a fresh one if there is none yet; AgentError if the file is damaged."""
        try:
            with self.path.open("rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return AgentState()
        except OSError as e:
            raise AgentError(f"cannot read agent state {self.path}: {e.strerror}") from e
        if len(raw) > MAX_STATE_BYTES:
            raise AgentError(f"agent state {self.path} is larger than {MAX_STATE_BYTES} bytes")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AgentError(f"agent state {self.path} is not valid JSON: {e}") from e
        try:
            return state_from_json(data)
        except AgentError as e:
            raise AgentError(f"agent state {self.path}: {e}") from None

    def save(self, state: AgentState) -> None:
        data = json.dumps(state_to_json(state), indent=2, sort_keys=True).encode("utf-8") + b"\n"
        try:
            atomic_write(self.path, data, mode=0o600)
        except OSError as e:
            raise AgentError(f"cannot write agent state {self.path}: {e.strerror}") from e

    def reserve_counter(self, state: AgentState) -> AgentState:
        """Persist ``state`` with the counter advanced by one and return it.

        The caller signs with the returned counter only after this returns, so
        a crash at any later point makes the next start skip that value.
        """
        reserved = replace(state, counter=state.counter + 1)
        self.save(reserved)
        return reserved

    def remove_stale_temp_files(self) -> None:
        """Delete temp files a crash left behind mid-write (only call while holding the agent lock)."""
        for leftover in self.path.parent.glob(f".{self.path.name}.*"):
            logger.info("removing %s left by an interrupted write", leftover)
            leftover.unlink(missing_ok=True)
