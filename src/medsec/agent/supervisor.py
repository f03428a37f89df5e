"""Keeps the agent running: restarts it when it dies, with backoff when it keeps dying (RL-1).

The supervisor is deliberately small and holds no device state: it starts the agent as a
child process, waits, and starts it again when it exits for any reason other than the
supervisor's own stop (a SIGKILL, an OOM kill, a crash, a fatal error). The first restart comes
after ``initial_delay`` seconds; each further restart of a child that lived less than
``stable_seconds`` doubles the delay up to ``max_delay``, so an agent that cannot start (a
broken config) does not spin. What the device missed while the agent was down is recorded by
the agent itself on its next start (``agent.gap``, :mod:`medsec.agent.heartbeat`).

On SIGTERM or SIGINT the supervisor passes SIGTERM to the agent, waits for its clean stop, and
exits; an agent that does not stop within ``stop_timeout`` is killed.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medsec.signals import stop_on_signals

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1


@dataclass(frozen=True)
class RestartPolicy:
    initial_delay: float = 1.0
    max_delay: float = 60.0
    stable_seconds: float = 60.0  # a child that lived this long counts as healthy: the delay starts over
    stop_timeout: float = 30.0

    def next_delay(self, previous: float | None, lived: float) -> float:
        """The wait before the next start, after a child that lived ``lived`` seconds."""
        if previous is None or lived >= self.stable_seconds:
            return self.initial_delay
        return min(previous * 2, self.max_delay)


def agent_command(root: Path, *, verbose: bool = False) -> list[str]:
    """The command line of the supervised agent: this Python, ``-m medsec.agent --root ROOT``.

    The agent's own entry point, not the ``medsec`` CLI, so a restart does not wait for the
    server and gateway code to load.
    """
    return [sys.executable, "-m", "medsec.agent", "--root", str(root), *(["--verbose"] if verbose else [])]


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Supervisor:
    """Runs ``command`` until :meth:`run`'s ``stop`` is set, restarting it whenever it ends."""

    def __init__(
        self,
        command: Sequence[str],
        policy: RestartPolicy | None = None,
        *,
        on_start: Callable[[int], None] | None = None,
    ) -> None:
        self._command = list(command)
        self._policy = policy or RestartPolicy()
        self._on_start = on_start
        self.restarts = 0
        self.delays: list[float] = []  # the wait before each restart, in order

    def run(self, stop: threading.Event) -> None:
        delay: float | None = None
        while not stop.is_set():
            started = time.monotonic()
            child = subprocess.Popen(self._command)  # noqa: S603  (our own argv, built by agent_command)
            logger.info("agent started (pid %d)", child.pid)
            if self._on_start is not None:
                self._on_start(child.pid)
            returncode = self._wait(child, stop)
            if stop.is_set():
                return
            lived = time.monotonic() - started
            delay = self._policy.next_delay(delay, lived)
            self.restarts += 1
            self.delays.append(delay)
            logger.warning(
                "agent (pid %d) %s after %.1f s; restarting in %.1f s",
                child.pid,
                describe_exit(returncode),
                lived,
                delay,
            )
            stop.wait(delay)

    def _wait(self, child: subprocess.Popen[bytes], stop: threading.Event) -> int:
        """The child's exit status; on ``stop``, stop the child first."""
        while not stop.is_set():
            returncode = child.poll()
            if returncode is not None:
                return returncode
            stop.wait(POLL_SECONDS)
        child.send_signal(signal.SIGTERM)
        try:
            return child.wait(self._policy.stop_timeout)
        except subprocess.TimeoutExpired:
            logger.error("agent (pid %d) did not stop within %.0f s; killing it", child.pid, self._policy.stop_timeout)
            child.kill()
            return child.wait()


def run_supervisor(command: Sequence[str], policy: RestartPolicy | None = None) -> int:
    """Supervise ``command`` until SIGTERM or SIGINT (main thread only); return the number of restarts."""
    stop = threading.Event()

    def log_signal(signum: int) -> None:
        logger.info("supervisor received signal %d; stopping the agent", signum)

    with stop_on_signals(stop, on_signal=log_signal):
        supervisor = Supervisor(command, policy)
        supervisor.run(stop)
        return supervisor.restarts
