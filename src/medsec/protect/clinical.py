"""A simulated essential ("clinical") function, to show the essential performance continues (RL-1, RL-2).

The process stands in for what a device must never stop doing (an infusion pump's delivery
loop): every ``interval`` (100 ms by default) it reads its configuration and appends one
heartbeat line with a sequence number to a file::

    <seq> <monotonic ns> <config state: ok|kept> <rate>

``kept`` means the configuration could not be read or was invalid, so the last good one was
used: an attack on the configuration must never stop the loop. Tests and the demo run it as a
separate process (``python -m medsec.protect.clinical --config C --heartbeat H``) while files
are attacked and restored, then check the sequence numbers and the gaps between beats.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsec.signals import stop_on_signals

DEFAULT_INTERVAL = 0.1
MAX_CONFIG_BYTES = 64 * 1024


@dataclass(frozen=True)
class ClinicalConfig:
    rate_ml_per_h: int


@dataclass(frozen=True)
class Beat:
    seq: int
    monotonic_ns: int
    config_state: str  # ok | kept
    rate: int


def parse_config(data: bytes) -> ClinicalConfig:
    """The process's settings: ``{"rate_ml_per_h": 1..1200}``; ValueError names the problem."""
    raw: Any = json.loads(data)
    if not isinstance(raw, dict):
        raise ValueError("config is not a JSON object")
    rate = raw.get("rate_ml_per_h")
    if type(rate) is not int or not 1 <= rate <= 1200:
        raise ValueError("rate_ml_per_h must be an integer from 1 to 1200")
    return ClinicalConfig(rate)


def _read_config(path: Path) -> ClinicalConfig | None:
    try:
        with path.open("rb") as f:
            return parse_config(f.read(MAX_CONFIG_BYTES))
    except (OSError, ValueError):
        return None


def run(
    config_path: Path,
    heartbeat_path: Path,
    *,
    interval: float = DEFAULT_INTERVAL,
    stop: threading.Event | None = None,
    beats: int | None = None,
) -> int:
    """Beat until ``stop`` is set or ``beats`` were written; return the number written.

    The first configuration must be valid: a device does not start on a broken setting.
    """
    config = _read_config(config_path)
    if config is None:
        raise SystemExit(f"{config_path}: no valid configuration to start with")
    stop = stop or threading.Event()
    fd = os.open(heartbeat_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    seq = 0
    deadline = time.monotonic()
    try:
        while not stop.is_set() and (beats is None or seq < beats):
            fresh = _read_config(config_path)
            state = "ok" if fresh is not None else "kept"
            config = fresh or config
            seq += 1
            os.write(fd, f"{seq} {time.monotonic_ns()} {state} {config.rate_ml_per_h}\n".encode("ascii"))
            deadline += interval
            # Sleep to the next tick; if late (a stall), beat at once rather than drift further.
            stop.wait(max(0.0, deadline - time.monotonic()))
            deadline = max(deadline, time.monotonic() - interval)
    finally:
        os.close(fd)
    return seq


def read_beats(path: Path) -> list[Beat]:
    """Parse a heartbeat file (a torn last line, being written right now, is skipped)."""
    beats = []
    for line in path.read_text(encoding="ascii").splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        beats.append(Beat(int(parts[0]), int(parts[1]), parts[2], int(parts[3])))
    return beats


def max_gap_seconds(beats: Sequence[Beat]) -> float:
    """The longest time between two consecutive beats."""
    gaps = [(b.monotonic_ns - a.monotonic_ns) / 1e9 for a, b in itertools.pairwise(beats)]
    return max(gaps, default=0.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medsec.protect.clinical", description="simulated essential function"
    )
    parser.add_argument("--config", type=Path, required=True, help="JSON settings read on every beat")
    parser.add_argument("--heartbeat", type=Path, required=True, help="file the beats are appended to")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between beats")
    parser.add_argument("--beats", type=int, default=None, help="stop after this many beats")
    args = parser.parse_args(argv)
    stop = threading.Event()
    with stop_on_signals(stop):
        run(args.config, args.heartbeat, interval=args.interval, stop=stop, beats=args.beats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
