from __future__ import annotations

import datetime as dt

import pytest

from medsec.lifecycle.errors import OverrideError
from medsec.lifecycle.overrides import (
    Evidence,
    LifecycleOverride,
    OverrideSet,
    overrides_from_json,
    overrides_to_json,
)

pytestmark = pytest.mark.req("SM-4")

WHEN = dt.datetime(2025, 1, 10, 9, 0, tzinfo=dt.UTC)


def test_override_wins_and_feed_stays_untouched(products, debian_official_dates) -> None:
    feed = products["debian"].cycle("9")
    effective = debian_official_dates.apply(feed)
    assert effective.eol == dt.date(2020, 7, 6)
    assert effective.eoes == dt.date(2022, 6, 30)
    assert effective.source_of("eol") == "override"
    assert effective.source_of("eoas") == "feed"
    assert effective.eoas is None
    assert feed.eol == dt.date(2020, 7, 18)  # the feed value is kept apart
    assert effective.feed is feed


def test_cycle_without_override_reads_the_feed(products, debian_official_dates) -> None:
    effective = debian_official_dates.apply(products["debian"].cycle("10"))
    assert effective.override is None
    assert effective.source_of("eol") == "feed"


@pytest.mark.parametrize(
    ("author", "source", "recorded_at"),
    [("", "https://x", WHEN), ("me", " ", WHEN), ("me", "doc-1", dt.datetime(2025, 1, 1))],
)
def test_override_without_evidence_is_refused(author: str, source: str, recorded_at: dt.datetime) -> None:
    with pytest.raises(OverrideError):
        Evidence(author, recorded_at, source)


def test_override_must_change_something() -> None:
    with pytest.raises(OverrideError):
        LifecycleOverride("debian", "9", Evidence("me", WHEN, "doc-1"))


def test_two_overrides_for_one_cycle_are_refused() -> None:
    ev = Evidence("me", WHEN, "doc-1")
    with pytest.raises(OverrideError):
        OverrideSet((LifecycleOverride("debian", "9", ev, eol=True), LifecycleOverride("debian", "9", ev, eoes=False)))


def test_json_round_trip(debian_official_dates) -> None:
    data = overrides_to_json(debian_official_dates)
    assert overrides_from_json(data) == debian_official_dates


@pytest.mark.parametrize(
    "data",
    [
        b"{}",
        b"not json",
        b'[{"product": "debian"}]',
        b'[{"product":"d","cycle":"9","eol":"soon","evidence":{"author":"a","recorded_at":"2025-01-01T00:00:00+00:00","source":"s"}}]',
    ],
)
def test_malformed_overrides_file_is_refused(data: bytes) -> None:
    with pytest.raises(OverrideError):
        overrides_from_json(data)
