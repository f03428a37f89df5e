"""The ctypes fanotify layer against the real kernel, on a dedicated tmpfs mount only."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from medsec.protect.errors import FanotifyError
from medsec.protect.fanotify import (
    FAN_CLASS_CONTENT,
    FAN_CLASS_NOTIF,
    FAN_CLOSE_WRITE,
    FAN_MODIFY,
    FAN_OPEN_EXEC_PERM,
    Fanotify,
    FanotifyEvent,
)

from .conftest import _fanotify_unavailable, install_binary

pytestmark = [pytest.mark.timeout(60)]


class Responder:
    """Answers every permission event on a thread: deny for paths in ``deny``, allow the rest."""

    def __init__(self, fan: Fanotify, deny: set[str]) -> None:
        self.fan = fan
        self.deny = deny
        self.seen: list[tuple[int, str | None, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for event in self.fan.read_events(timeout=0.05):
                try:
                    path = event.path()
                    self.seen.append((event.mask, path, event.pid))
                    if event.is_permission:
                        self.fan.respond(event.fd, allow=path not in self.deny)
                finally:
                    event.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def content_group() -> Iterator[Fanotify]:
    reason = _fanotify_unavailable()
    if reason is not None:
        pytest.skip(reason)
    fan = Fanotify(FAN_CLASS_CONTENT)
    try:
        yield fan
    finally:
        fan.close()


@pytest.mark.req("RL-3")
def test_exec_permission_event_is_denied_with_eperm(device_mount: Path, content_group: Fanotify) -> None:
    allowed = install_binary(device_mount, "/bin/true", "ok")
    refused = install_binary(device_mount, "/bin/true", "refused")
    content_group.mark(device_mount, FAN_OPEN_EXEC_PERM)
    responder = Responder(content_group, {str(refused)})
    try:
        assert subprocess.run([str(allowed)], check=False, timeout=20).returncode == 0
        with pytest.raises(PermissionError) as caught:
            subprocess.run([str(refused)], check=False, timeout=20)
        assert caught.value.errno == errno.EPERM
    finally:
        responder.stop()
    paths = {path for mask, path, _ in responder.seen if mask & FAN_OPEN_EXEC_PERM}
    assert {str(allowed), str(refused)} <= paths


def test_notification_group_reports_close_write_and_modify(device_mount: Path) -> None:
    fan = Fanotify(FAN_CLASS_NOTIF)
    try:
        fan.mark(device_mount, FAN_CLOSE_WRITE | FAN_MODIFY)
        target = device_mount / "config.txt"
        target.write_text("changed\n")
        events: list[FanotifyEvent] = []
        for _ in range(20):
            events.extend(fan.read_events(timeout=0.1))
            if any(e.mask & FAN_CLOSE_WRITE for e in events):
                break
        try:
            assert all(not e.is_permission for e in events)
            masks = 0
            for event in events:
                masks |= event.mask
                assert event.path() == str(target)
                assert event.pid == os.getpid()
            assert masks & FAN_MODIFY and masks & FAN_CLOSE_WRITE
        finally:
            for event in events:
                event.close()
    finally:
        fan.close()


def test_read_events_times_out_with_nothing(device_mount: Path, content_group: Fanotify) -> None:
    content_group.mark(device_mount, FAN_OPEN_EXEC_PERM)
    assert list(content_group.read_events(timeout=0.05)) == []


def test_mark_on_missing_path_names_call_and_errno(content_group: Fanotify, tmp_path: Path) -> None:
    with pytest.raises(FanotifyError, match=r"fanotify_mark failed: ENOENT"):
        content_group.mark(tmp_path / "missing", FAN_OPEN_EXEC_PERM)


def test_respond_to_unknown_event_names_call_and_errno(content_group: Fanotify) -> None:
    with pytest.raises(FanotifyError, match=r"write\(fanotify_response\) failed: ENOENT"):
        content_group.respond(12345, allow=True)


def test_closed_group_refuses_use() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (fanotify_init)")
    fan = Fanotify(FAN_CLASS_NOTIF)
    fan.close()
    fan.close()  # idempotent
    assert fan.closed
    with pytest.raises(FanotifyError, match="closed"):
        fan.mark("/nonexistent", FAN_MODIFY)
