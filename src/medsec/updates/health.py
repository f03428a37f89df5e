"""Health checks that gate the commit of a newly switched slot (SM-1, RL-1).

Every check has its own deadline and the whole run has one too; a check that hangs is a
failed check, so a broken release is rolled back instead of waiting forever. Checks come from
the device config::

    [{"type": "command", "argv": ["bin/selftest", "--quick"], "timeout_seconds": 30},
     {"type": "file", "path": "run/ready", "timeout_seconds": 20},
     {"type": "port", "host": "127.0.0.1", "port": 8443, "timeout_seconds": 20}]

A relative ``argv[0]`` or ``path`` is taken inside the new slot and must stay inside it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from medsec.updates.device_errors import HealthCheckFailed, UpdateSettingsError

logger = logging.getLogger(__name__)

DEFAULT_CHECK_TIMEOUT = 30.0
DEFAULT_TOTAL_TIMEOUT = 300.0
MAX_TIMEOUT = 3600.0
POLL_INTERVAL = 0.1


class HealthCheck(Protocol):
    @property
    def timeout_seconds(self) -> float: ...

    def run(self, slot_root: Path, deadline: float) -> None:
        """Return if healthy before ``deadline`` (a ``time.monotonic()`` value); raise HealthCheckFailed if not."""


def _inside(slot_root: Path, relative: str, what: str) -> Path:
    path = (slot_root / relative).resolve()
    if not path.is_relative_to(slot_root.resolve()):
        raise HealthCheckFailed(f"{what} {relative!r} leaves the slot")
    return path


@dataclass(frozen=True)
class CommandCheck:
    argv: tuple[str, ...]
    timeout_seconds: float = DEFAULT_CHECK_TIMEOUT

    def run(self, slot_root: Path, deadline: float) -> None:
        program = self.argv[0]
        if not os.path.isabs(program):
            program = str(_inside(slot_root, program, "health command"))
        limit = max(0.0, min(self.timeout_seconds, deadline - time.monotonic()))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MEDSEC_SLOT": str(slot_root)}
        try:
            # Own session so a timeout kills the whole process group, not only the direct child.
            proc = subprocess.Popen(  # noqa: S603  (argv from the device's own config)
                [program, *self.argv[1:]],
                cwd=slot_root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            raise HealthCheckFailed(f"health command {self.argv[0]!r} cannot start: {e.strerror}") from e
        try:
            output, _ = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise HealthCheckFailed(f"health command {self.argv[0]!r} did not finish within {limit:.1f} s") from None
        if proc.returncode != 0:
            tail = output[-300:].decode("utf-8", errors="replace").strip()
            raise HealthCheckFailed(f"health command {self.argv[0]!r} exited with {proc.returncode}: {tail}")


@dataclass(frozen=True)
class FileCheck:
    path: str
    timeout_seconds: float = DEFAULT_CHECK_TIMEOUT

    def run(self, slot_root: Path, deadline: float) -> None:
        path = Path(self.path) if os.path.isabs(self.path) else _inside(slot_root, self.path, "health file")
        end = min(deadline, time.monotonic() + self.timeout_seconds)
        while not path.exists():
            if time.monotonic() >= end:
                raise HealthCheckFailed(f"health file {self.path!r} did not appear in time")
            time.sleep(POLL_INTERVAL)


@dataclass(frozen=True)
class PortCheck:
    port: int
    host: str = "127.0.0.1"
    timeout_seconds: float = DEFAULT_CHECK_TIMEOUT

    def run(self, slot_root: Path, deadline: float) -> None:
        end = min(deadline, time.monotonic() + self.timeout_seconds)
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise HealthCheckFailed(f"nothing accepted connections on {self.host}:{self.port} in time")
            try:
                with socket.create_connection((self.host, self.port), timeout=max(0.05, min(remaining, 5.0))):
                    return
            except OSError:
                time.sleep(min(POLL_INTERVAL, max(0.0, end - time.monotonic())))


@dataclass(frozen=True)
class HealthChecker:
    checks: tuple[HealthCheck, ...] = ()
    total_timeout_seconds: float = DEFAULT_TOTAL_TIMEOUT
    monotonic: Callable[[], float] = time.monotonic

    def run(self, slot_root: Path) -> None:
        """Run every check in order against ``slot_root``; raise HealthCheckFailed at the first failure."""
        deadline = self.monotonic() + self.total_timeout_seconds
        for check in self.checks:
            if self.monotonic() >= deadline:
                raise HealthCheckFailed("the health checks did not finish within their total time")
            check.run(slot_root, deadline)

    @classmethod
    def from_config(cls, data: Any, *, total_timeout_seconds: float = DEFAULT_TOTAL_TIMEOUT) -> HealthChecker:
        if not isinstance(data, list):
            raise UpdateSettingsError("health checks must be a JSON list")
        return cls(tuple(_check(item) for item in data), total_timeout_seconds)


def _timeout(item: dict[str, Any]) -> float:
    value = item.get("timeout_seconds", DEFAULT_CHECK_TIMEOUT)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= MAX_TIMEOUT:
        raise UpdateSettingsError(f"health check 'timeout_seconds' must be above 0 and at most {MAX_TIMEOUT:.0f}")
    return float(value)


def _check(item: Any) -> HealthCheck:
    if not isinstance(item, dict):
        raise UpdateSettingsError("a health check must be a JSON object")
    kind = item.get("type")
    if kind == "command":
        argv = item.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
            raise UpdateSettingsError("a command health check needs 'argv', a non-empty list of strings")
        return CommandCheck(tuple(argv), _timeout(item))
    if kind == "file":
        path = item.get("path")
        if not isinstance(path, str) or not path:
            raise UpdateSettingsError("a file health check needs 'path'")
        return FileCheck(path, _timeout(item))
    if kind == "port":
        port, host = item.get("port"), item.get("host", "127.0.0.1")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536 or not isinstance(host, str):
            raise UpdateSettingsError("a port health check needs 'port' (1-65535) and optionally 'host'")
        return PortCheck(port, host, _timeout(item))
    raise UpdateSettingsError(f"unknown health check type {kind!r} (known: command, file, port)")
