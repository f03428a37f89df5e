"""When to talk to the server next: jittered intervals and capped exponential backoff.

Jitter keeps a fleet that booted together (power cut, site restart) from
polling the server in lockstep.
"""

from __future__ import annotations

import random

JITTER = 0.2


def jittered(seconds: float, rng: random.Random) -> float:
    """``seconds`` moved at random by up to ±20%."""
    return seconds * rng.uniform(1.0 - JITTER, 1.0 + JITTER)


class Backoff:
    """Exponential backoff from ``initial`` seconds, doubling per failure, never above ``maximum``."""

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self._initial = initial
        self._maximum = maximum
        self._rng = rng
        self._failures = 0

    @property
    def failures(self) -> int:
        return self._failures

    def reset(self) -> None:
        self._failures = 0

    def next_delay(self) -> float:
        """Record one more failure and return how long to wait before the next attempt."""
        # The exponent is bounded so a long outage cannot overflow the float.
        base = min(self._maximum, self._initial * 2 ** min(self._failures, 32))
        self._failures += 1
        return self._rng.uniform(base * (1.0 - JITTER), min(base * (1.0 + JITTER), self._maximum))
