"""Protection events and counters: the one shape every protection part reports in.

An event is what the device's Merkle access log records and what the server stores
and shows (blocked executions, integrity events, port drift). Its JSON form::

    {"category": "exec",            # exec | open | integrity | port | interface | usb | console | agent
     "action": "deny",              # see ACTIONS
     "mode": "enforce",             # learn | monitor | enforce, or null where modes do not apply
     "rule": "not_in_trustdb",      # the rule that decided, a short snake_case name
     "subject": {"pid": 4242, "exe": "/usr/bin/bash", "sha256": "ab12..."},   # or null
     "object": {"path": "/opt/device/tmp/x", "sha256": "cd34..."},           # or null
     "detail": "free text, at most 500 characters",
     "time": "2026-11-26T10:00:00.123456Z"}

:class:`Metrics` is the snapshot of counters an engine keeps: decisions per rule,
cache hits and misses, the deepest queue seen, and a latency histogram with fixed
bucket bounds (microseconds) so snapshots from many devices can be summed.
"""

from __future__ import annotations

import bisect
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from medsec.errors import ProtocolError

CATEGORIES = ("exec", "open", "integrity", "port", "interface", "usb", "console", "agent")
MODES = ("learn", "monitor", "enforce")
ACTIONS = (
    "allow",  # permitted (normally counted, not logged one by one)
    "deny",  # refused in enforce mode
    "would_deny",  # monitor mode: enforce would have refused
    "learned",  # learn mode: added to the trust list being built
    "detected",  # an integrity or drift finding
    "restored",  # a protected file put back from the known-good copy
    "quarantined",  # a file moved aside because no known-good copy exists
    "applied",  # a policy (ports, USB, interfaces, trust database) was applied
    "drift",  # the running state left the signed policy
    "gap",  # the agent was not running for a while (supervisor restart)
    "error",  # a protection part failed; detail says how
)
MAX_DETAIL = 500
MAX_PATH = 4096
_RULE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# Latency histogram bucket upper bounds in microseconds; the last bucket is everything above.
LATENCY_BUCKETS_US = (5, 10, 20, 50, 100, 250, 500, 1000, 2500, 10000, 100000)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _opt_str(value: Any, name: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"event field {name!r} must be a string of at most {limit} characters")
    return value


def _opt_sha(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise ProtocolError(f"event field {name!r} must be 64 lowercase hex digits")
    return value


@dataclass(frozen=True)
class Subject:
    """The process that acted: its pid, its executable's path and SHA-256 where known."""

    pid: int | None = None
    exe: str | None = None
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "exe": self.exe, "sha256": self.sha256}

    @classmethod
    def from_json(cls, value: Any) -> Subject:
        if not isinstance(value, dict) or set(value) - {"pid", "exe", "sha256"}:
            raise ProtocolError("event field 'subject' must be an object with pid, exe, sha256")
        pid = value.get("pid")
        if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid < 0):
            raise ProtocolError("event field 'subject.pid' must be a non-negative integer")
        return cls(
            pid, _opt_str(value.get("exe"), "subject.exe", MAX_PATH), _opt_sha(value.get("sha256"), "subject.sha256")
        )


@dataclass(frozen=True)
class Object:
    """The file acted on: its path and SHA-256 where known."""

    path: str | None = None
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256}

    @classmethod
    def from_json(cls, value: Any) -> Object:
        if not isinstance(value, dict) or set(value) - {"path", "sha256"}:
            raise ProtocolError("event field 'object' must be an object with path, sha256")
        return cls(_opt_str(value.get("path"), "object.path", MAX_PATH), _opt_sha(value.get("sha256"), "object.sha256"))


@dataclass(frozen=True)
class ProtectionEvent:
    category: str
    action: str
    rule: str
    mode: str | None = None
    subject: Subject | None = None
    object: Object | None = None
    detail: str = ""
    time: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ProtocolError(f"event category {self.category!r} is not one of {', '.join(CATEGORIES)}")
        if self.action not in ACTIONS:
            raise ProtocolError(f"event action {self.action!r} is not one of {', '.join(ACTIONS)}")
        if self.mode is not None and self.mode not in MODES:
            raise ProtocolError(f"event mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not isinstance(self.rule, str) or not _RULE_RE.match(self.rule):
            raise ProtocolError("event rule must be a short snake_case name")
        if not isinstance(self.detail, str) or len(self.detail) > MAX_DETAIL:
            raise ProtocolError(f"event detail must be a string of at most {MAX_DETAIL} characters")
        try:
            datetime.strptime(self.time, "%Y-%m-%dT%H:%M:%S.%fZ")
        except (TypeError, ValueError) as e:
            raise ProtocolError(
                "event time must be RFC 3339 UTC with microseconds, e.g. 2026-01-01T00:00:00.000000Z"
            ) from e

    def to_json(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "action": self.action,
            "mode": self.mode,
            "rule": self.rule,
            "subject": self.subject.to_json() if self.subject else None,
            "object": self.object.to_json() if self.object else None,
            "detail": self.detail,
            "time": self.time,
        }

    @classmethod
    def from_json(cls, value: Any) -> ProtectionEvent:
        """Parse and check an event; every fault raises ProtocolError naming the field."""
        if not isinstance(value, dict):
            raise ProtocolError("an event must be a JSON object")
        unknown = set(value) - {"category", "action", "mode", "rule", "subject", "object", "detail", "time"}
        if unknown:
            raise ProtocolError(f"event has unknown fields: {sorted(unknown)}")
        for name in ("category", "action", "rule", "time"):
            if not isinstance(value.get(name), str):
                raise ProtocolError(f"event field {name!r} is missing or not a string")
        subject = value.get("subject")
        obj = value.get("object")
        return cls(
            category=value["category"],
            action=value["action"],
            rule=value["rule"],
            mode=value.get("mode"),
            subject=Subject.from_json(subject) if subject is not None else None,
            object=Object.from_json(obj) if obj is not None else None,
            detail=value.get("detail", ""),
            time=value["time"],
        )


class Metrics:
    """Thread-safe counters of one protection engine; :meth:`snapshot` gives plain JSON."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.decisions: dict[str, int] = {}
        self.cache_hits = 0
        self.cache_misses = 0
        self.max_queue_depth = 0
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS_US) + 1)

    def record(self, rule: str, latency_us: float, *, cache_hit: bool, queue_depth: int = 0) -> None:
        with self._lock:
            self.decisions[rule] = self.decisions.get(rule, 0) + 1
            if cache_hit:
                self.cache_hits += 1
            else:
                self.cache_misses += 1
            self.max_queue_depth = max(self.max_queue_depth, queue_depth)
            self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS_US, latency_us)] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lookups = self.cache_hits + self.cache_misses
            return {
                "decisions": dict(self.decisions),
                "cache_hits": self.cache_hits,
                "cache_misses": self.cache_misses,
                "cache_hit_ratio": (self.cache_hits / lookups) if lookups else None,
                "max_queue_depth": self.max_queue_depth,
                "latency_buckets_us": list(LATENCY_BUCKETS_US),
                "latency_counts": list(self.latency_buckets),
            }
