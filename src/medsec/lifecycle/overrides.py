"""Manufacturer overrides of feed support dates, each carrying its evidence (SM-4).

Feed data (endoflife.date) and overrides are kept apart: an :class:`EffectiveCycle` holds the untouched feed
cycle and the override, answers with the override where it sets a field, and says which source each answer came
from, so a hospital-facing plan can cite the evidence (who decided, when, on what document).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from medsec.lifecycle.endoflife import ProductCycle, SupportEnd
from medsec.lifecycle.errors import OverrideError

Source = Literal["override", "feed"]
OVERRIDE_FIELDS = ("eol", "eoas", "eoes")


@dataclass(frozen=True)
class Evidence:
    """Why an override is right: who recorded it, when, from which URL or document, and a note."""

    author: str
    recorded_at: dt.datetime
    source: str  # URL or document reference (e.g. a supplier letter number)
    note: str = ""

    def __post_init__(self) -> None:
        if not self.author.strip():
            raise OverrideError("override evidence needs the author who recorded it")
        if not self.source.strip():
            raise OverrideError("override evidence needs a source URL or document reference")
        if self.recorded_at.tzinfo is None:
            raise OverrideError("override evidence needs a timezone-aware recorded_at")


@dataclass(frozen=True)
class LifecycleOverride:
    """Replacement support dates for one product cycle; None leaves the feed value in place."""

    product: str
    cycle: str
    evidence: Evidence
    eol: SupportEnd | None = None
    eoas: SupportEnd | None = None
    eoes: SupportEnd | None = None

    def __post_init__(self) -> None:
        if self.eol is None and self.eoas is None and self.eoes is None:
            raise OverrideError(f"override for {self.product} {self.cycle} changes no date")


@dataclass(frozen=True)
class EffectiveCycle:
    """A feed cycle with an optional override applied on read."""

    feed: ProductCycle
    override: LifecycleOverride | None = None

    def _pick(self, name: str) -> tuple[SupportEnd | None, Source]:
        if self.override is not None and getattr(self.override, name) is not None:
            value: SupportEnd | None = getattr(self.override, name)
            return value, "override"
        return getattr(self.feed, name), "feed"

    @property
    def eol(self) -> SupportEnd:
        value, _ = self._pick("eol")
        return False if value is None else value

    @property
    def eoas(self) -> SupportEnd | None:
        return self._pick("eoas")[0]

    @property
    def eoes(self) -> SupportEnd | None:
        return self._pick("eoes")[0]

    def source_of(self, name: str) -> Source:
        if name not in OVERRIDE_FIELDS:
            raise ValueError(f"unknown support field {name!r}")
        return self._pick(name)[1]


@dataclass(frozen=True)
class OverrideSet:
    """At most one override per (product, cycle)."""

    overrides: tuple[LifecycleOverride, ...] = ()

    def __post_init__(self) -> None:
        seen: set[tuple[str, str]] = set()
        for o in self.overrides:
            key = (o.product, o.cycle)
            if key in seen:
                raise OverrideError(f"two overrides for {o.product} {o.cycle}; merge them into one")
            seen.add(key)

    def for_cycle(self, product: str, cycle: str) -> LifecycleOverride | None:
        for o in self.overrides:
            if o.product == product and o.cycle == cycle:
                return o
        return None

    def apply(self, cycle: ProductCycle) -> EffectiveCycle:
        return EffectiveCycle(cycle, self.for_cycle(cycle.product, cycle.cycle))


def _support_to_json(value: SupportEnd | None) -> str | bool | None:
    return value.isoformat() if isinstance(value, dt.date) else value


def _support_from_json(value: Any, where: str) -> SupportEnd | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise OverrideError(f"{where}: a date (yyyy-mm-dd), a boolean or null expected, not {value!r}")


def overrides_to_json(overrides: OverrideSet) -> bytes:
    """The overrides file: a JSON list, stored apart from the feed files."""
    items = [
        {
            "product": o.product,
            "cycle": o.cycle,
            **{name: _support_to_json(getattr(o, name)) for name in OVERRIDE_FIELDS},
            "evidence": {
                "author": o.evidence.author,
                "recorded_at": o.evidence.recorded_at.isoformat(),
                "source": o.evidence.source,
                "note": o.evidence.note,
            },
        }
        for o in overrides.overrides
    ]
    return json.dumps(items, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"


def overrides_from_json(data: bytes) -> OverrideSet:
    try:
        items = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OverrideError(f"overrides file is not JSON: {e}") from e
    if not isinstance(items, list):
        raise OverrideError("overrides file must hold a JSON list")
    return OverrideSet(tuple(_override_from_json(item, f"overrides[{i}]") for i, item in enumerate(items)))


def _override_from_json(item: Any, where: str) -> LifecycleOverride:
    if not isinstance(item, Mapping) or not isinstance(item.get("evidence"), Mapping):
        raise OverrideError(f"{where}: an object with an 'evidence' object expected")
    ev = item["evidence"]
    try:
        evidence = Evidence(
            author=str(ev["author"]),
            recorded_at=dt.datetime.fromisoformat(str(ev["recorded_at"])),
            source=str(ev["source"]),
            note=str(ev.get("note", "")),
        )
        return LifecycleOverride(
            product=str(item["product"]),
            cycle=str(item["cycle"]),
            evidence=evidence,
            **{name: _support_from_json(item.get(name), f"{where}.{name}") for name in OVERRIDE_FIELDS},
        )
    except (KeyError, ValueError) as e:
        raise OverrideError(f"{where}: {e}") from e


def effective_cycles(cycles: Iterable[ProductCycle], overrides: OverrideSet) -> tuple[EffectiveCycle, ...]:
    return tuple(overrides.apply(c) for c in cycles)
