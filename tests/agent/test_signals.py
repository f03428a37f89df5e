"""Stopping on SIGTERM/SIGINT (medsec.signals): the stop event is set by a watcher thread, never by the
signal handler itself, so a signal that lands while the main thread is inside ``stop.wait()`` (holding
the event's lock) cannot hang the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from medsec.signals import stop_on_signals

# Waits on the event in a tight loop, so most signals land inside Event.wait, and exits when it is set.
CHILD = r"""
import sys, threading
from medsec.signals import stop_on_signals
stop = threading.Event()
with stop_on_signals(stop):
    print("ready", flush=True)
    while not stop.wait(0.00001):
        pass
print("stopped", flush=True)
"""


def test_a_signal_during_stop_wait_always_stops_the_process() -> None:
    for round_ in range(20):
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            time.sleep(0.01 * (round_ % 5))
            child.send_signal(signal.SIGTERM if round_ % 2 else signal.SIGINT)
            out, _ = child.communicate(timeout=10)
        finally:
            child.kill()
        assert (child.returncode, out.strip()) == (0, "stopped"), f"round {round_}"


def test_handlers_and_wakeup_fd_come_back() -> None:
    stop = threading.Event()
    before = signal.getsignal(signal.SIGTERM)
    seen: list[int] = []
    with stop_on_signals(stop, [signal.SIGTERM], on_signal=seen.append):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
    assert seen == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.set_wakeup_fd(-1) == -1  # nothing of ours is left installed
