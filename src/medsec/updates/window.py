"""When a device may install: hospital maintenance windows and the clinical-use inhibit.

Downloading is allowed at any time; installing (which restarts the device's function) only
inside a window the hospital set, and never while the device says it is in clinical use
(SM-1: updates must not disturb care; RL-1: keep the essential function running).

The policy and :func:`install_decision` are pure: the caller passes ``now``. The two
clinical-use probes at the end are the only I/O here, and both fail safe: when they cannot
tell, the device counts as in use.

Policy JSON (device config, or the director's ``install_window``)::

    {"timezone": "Asia/Tokyo",
     "weekly": [{"days": ["tue", "thu"], "start": "02:00", "duration_minutes": 120}],
     "one_off": [{"start": "2025-01-10T22:00:00+09:00", "end": "2025-01-11T01:00:00+09:00"}],
     "always": false}

No window at all means no automatic install.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from medsec.updates.device_errors import UpdateSettingsError

logger = logging.getLogger(__name__)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_WINDOW = timedelta(days=1)
DEFAULT_RECHECK = 300.0
_TIME_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True)
class WeeklyWindow:
    days: frozenset[int]  # 0 = Monday
    start: time
    duration: timedelta
    tz: ZoneInfo

    def _openings(self, around: datetime) -> list[tuple[datetime, datetime]]:
        local_day = around.astimezone(self.tz).date()
        spans = []
        for offset in range(-1, 9):
            day: date = local_day + timedelta(days=offset)
            if day.weekday() in self.days:
                start = datetime.combine(day, self.start, tzinfo=self.tz)
                # Durations are real elapsed time, also across a DST change.
                start_utc = start.astimezone(UTC)
                spans.append((start_utc, start_utc + self.duration))
        return spans


@dataclass(frozen=True)
class OneOffWindow:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class MaintenancePolicy:
    weekly: tuple[WeeklyWindow, ...] = ()
    one_off: tuple[OneOffWindow, ...] = ()
    always: bool = False

    def _spans(self, now: datetime) -> list[tuple[datetime, datetime]]:
        spans = [(w.start, w.end) for w in self.one_off]
        for rule in self.weekly:
            spans.extend(rule._openings(now))
        return spans

    def is_open(self, now: datetime) -> bool:
        _aware(now)
        return self.always or any(start <= now < end for start, end in self._spans(now))

    def next_opening(self, now: datetime) -> datetime | None:
        """The next start of a window after ``now`` (None if none is planned)."""
        _aware(now)
        starts = [start for start, _ in self._spans(now) if start > now]
        return min(starts) if starts else None

    @classmethod
    def from_mapping(cls, data: Any) -> MaintenancePolicy:
        if not isinstance(data, dict):
            raise UpdateSettingsError("a maintenance policy must be a JSON object")
        unknown = sorted(set(data) - {"timezone", "weekly", "one_off", "always"})
        if unknown:
            raise UpdateSettingsError(f"maintenance policy: unknown field {unknown[0]!r}")
        tz = _zone(data.get("timezone", "UTC"))
        always = data.get("always", False)
        if not isinstance(always, bool):
            raise UpdateSettingsError("maintenance policy: 'always' must be true or false")
        return cls(
            weekly=tuple(_weekly(rule, tz) for rule in _list(data, "weekly")),
            one_off=tuple(_one_off(rule) for rule in _list(data, "one_off")),
            always=always,
        )


@dataclass(frozen=True)
class InstallDecision:
    allowed: bool
    reason: str  # "in_window", "outside_window", "clinical_use"
    retry_after_seconds: float = 0.0


def install_decision(now: datetime, policy: MaintenancePolicy, *, in_clinical_use: bool) -> InstallDecision:
    """May the device install now? Clinical use wins over any window."""
    if in_clinical_use:
        return InstallDecision(False, "clinical_use", DEFAULT_RECHECK)
    if policy.is_open(now):
        return InstallDecision(True, "in_window")
    opening = policy.next_opening(now)
    wait = DEFAULT_RECHECK if opening is None else max(1.0, min((opening - now).total_seconds(), DEFAULT_RECHECK))
    return InstallDecision(False, "outside_window", wait)


def _aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("pass a timezone-aware datetime")


def _list(data: dict[str, Any], name: str) -> list[Any]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise UpdateSettingsError(f"maintenance policy: {name!r} must be a list")
    return value


def _zone(name: Any) -> ZoneInfo:
    if not isinstance(name, str):
        raise UpdateSettingsError("maintenance policy: 'timezone' must be an IANA name such as 'Asia/Tokyo'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise UpdateSettingsError(f"maintenance policy: unknown timezone {name!r}") from e


def _weekly(rule: Any, tz: ZoneInfo) -> WeeklyWindow:
    if not isinstance(rule, dict):
        raise UpdateSettingsError("maintenance policy: a weekly rule must be an object")
    days = rule.get("days")
    if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
        raise UpdateSettingsError(f"maintenance policy: 'days' must be a non-empty list of {', '.join(DAYS)}")
    match = _TIME_RE.fullmatch(str(rule.get("start", "")))
    if match is None:
        raise UpdateSettingsError("maintenance policy: 'start' must be HH:MM")
    minutes = rule.get("duration_minutes")
    if not isinstance(minutes, int) or isinstance(minutes, bool) or not 1 <= minutes <= MAX_WINDOW.total_seconds() / 60:
        raise UpdateSettingsError("maintenance policy: 'duration_minutes' must be 1 to 1440")
    zone = _zone(rule["timezone"]) if "timezone" in rule else tz
    return WeeklyWindow(
        days=frozenset(DAYS.index(d) for d in days),
        start=time(int(match.group(1)), int(match.group(2))),
        duration=timedelta(minutes=minutes),
        tz=zone,
    )


def _one_off(rule: Any) -> OneOffWindow:
    if not isinstance(rule, dict):
        raise UpdateSettingsError("maintenance policy: a one-off window must be an object")
    try:
        start = datetime.fromisoformat(str(rule["start"]))
        end = datetime.fromisoformat(str(rule["end"]))
    except (KeyError, ValueError) as e:
        raise UpdateSettingsError("maintenance policy: one-off 'start'/'end' must be ISO 8601 times") from e
    if start.tzinfo is None or end.tzinfo is None or end <= start:
        raise UpdateSettingsError("maintenance policy: one-off windows need a UTC offset and end after start")
    return OneOffWindow(start, end)


# -- clinical-use probes (I/O) -----------------------------------------------------------------------


class ClinicalUseProbe(Protocol):
    def in_use(self) -> bool:
        """True while the device is being used on a patient (or when that cannot be told)."""


class NeverInUse:
    """For devices with no clinical-use signal, and for tests."""

    def in_use(self) -> bool:
        return False


@dataclass(frozen=True)
class FlagFileProbe:
    """The device's application creates ``path`` while in use and removes it afterwards."""

    path: Path

    def in_use(self) -> bool:
        try:
            self.path.lstat()
        except FileNotFoundError:
            return False
        except OSError:
            return True
        return True


@dataclass(frozen=True)
class CommandProbe:
    """Runs ``argv``: exit 0 means in use, 1 means idle, anything else (or a timeout) means in use."""

    argv: Sequence[str]
    timeout_seconds: float = 10.0

    def in_use(self) -> bool:
        try:
            result = subprocess.run(  # noqa: S603  (argv from the device's own config)
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=self.timeout_seconds,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            logger.warning("clinical-use probe %s failed (%s); assuming in use", self.argv[0], e)
            return True
        return result.returncode != 1
