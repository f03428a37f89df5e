"""Stopping on SIGTERM and SIGINT without a lock in the signal handler.

A Python signal handler runs on the main thread between two bytecodes, possibly while that thread
holds the internal lock of the very ``threading.Event`` it would set (inside ``stop.wait()``, which
takes and re-takes that lock). ``stop.set()`` in the handler then waits for itself, forever: the
process ignores every later signal and has to be killed. :func:`stop_on_signals` keeps the handler
empty; Python's C-level handler writes the signal number to a pipe (``signal.set_wakeup_fd``), and a
watcher thread, which holds no lock, sets the event.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """The Python-level handler: nothing (the watcher thread acts on the signal)."""


@contextlib.contextmanager
def stop_on_signals(
    stop: threading.Event,
    signals: Iterable[signal.Signals] = STOP_SIGNALS,
    *,
    on_signal: Callable[[int], None] | None = None,
) -> Iterator[None]:
    """Set ``stop`` (after calling ``on_signal(signum)``) when one of ``signals`` arrives.

    Main thread only, as for ``signal.signal``. The previous handlers and wakeup fd come back on exit.
    """
    wanted = {int(s) for s in signals}
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise

    def watch() -> None:
        while data := os.read(read_fd, 64):  # empty once the write end is closed
            for signum in data:
                if signum in wanted:
                    if on_signal is not None:
                        on_signal(signum)
                    stop.set()

    previous = {sig: signal.signal(sig, _ignore) for sig in wanted}
    watcher = threading.Thread(target=watch, name="medsec-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)
        watcher.join(timeout=5)
        os.close(read_fd)
