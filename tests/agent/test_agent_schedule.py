from __future__ import annotations

import random

import pytest

from medsec.agent.schedule import Backoff, jittered


@pytest.mark.parametrize("interval", [1, 60, 3600])
def test_jitter_stays_within_twenty_percent(interval: int) -> None:
    rng = random.Random(1)
    values = [jittered(interval, rng) for _ in range(5000)]
    assert all(0.8 * interval <= v <= 1.2 * interval for v in values)
    # Spread over the whole band, not a constant offset.
    assert min(values) < 0.82 * interval
    assert max(values) > 1.18 * interval


def test_backoff_doubles_and_is_capped() -> None:
    backoff = Backoff(5, 300, random.Random(2))
    delays = [backoff.next_delay() for _ in range(40)]
    assert 4 <= delays[0] <= 6
    assert 8 <= delays[1] <= 12
    assert 16 <= delays[2] <= 24
    assert all(d <= 300 for d in delays)
    assert all(240 <= d <= 300 for d in delays[8:])
    assert backoff.failures == 40


def test_backoff_reset_starts_over() -> None:
    backoff = Backoff(1, 60, random.Random(3))
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 1.2


def test_backoff_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        Backoff(10, 5, random.Random())
