"""Fixtures for device protection: a dedicated tmpfs mount standing in for a device root.

Protection tests mark ONLY this mount with fanotify, never ``/`` or another mount of the
machine: a permission mark on a mount the machine runs from can block every exec on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from medsec.protect.errors import FanotifyError
from medsec.protect.fanotify import FAN_CLASS_CONTENT, Fanotify


def _fanotify_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (fanotify permission events and tmpfs mounts)"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "needs mount(8) and umount(8)"
    try:
        Fanotify(FAN_CLASS_CONTENT).close()
    except FanotifyError as e:
        return f"fanotify is unavailable here: {e}"
    return None


def mount_tmpfs(where: Path) -> None:
    """Mount a small fresh tmpfs on ``where`` (a directory this test created)."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "medsec-device", str(where)],
        check=True,
        timeout=30,
    )


def unmount(where: Path) -> None:
    """Unmount ``where``; a busy mount is detached lazily so the test run never hangs on it."""
    done = subprocess.run(["umount", str(where)], check=False, capture_output=True, timeout=30)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True, timeout=30)


@pytest.fixture
def device_mount(tmp_path: Path) -> Iterator[Path]:
    """A dedicated tmpfs mount (the only thing protection tests may mark), unmounted afterwards.

    Skips with the reason when not root or when fanotify is unavailable.
    """
    reason = _fanotify_unavailable()
    if reason:
        pytest.skip(reason)
    where = tmp_path / "device-root"
    mount_tmpfs(where)
    try:
        if not os.path.ismount(where):
            pytest.fail(f"{where} is not a mount point after mount -t tmpfs")
        yield where
    finally:
        unmount(where)


def install_binary(mount: Path, source: str, name: str | None = None) -> Path:
    """Copy a system binary (resolving symlinks) into ``mount``/bin and return the copy's path."""
    real = Path(source).resolve()
    target = mount / "bin" / (name or Path(source).name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(real, target)
    target.chmod(0o755)
    return target


def policy_document(**overrides: object) -> dict[str, object]:
    """A complete protection policy document for tests (every field explicit, as in production)."""
    document: dict[str, object] = {
        "format": "medsec-protect-policy/v1",
        "product": "infusion-pump",
        "model": "IP-200",
        "version": 3,
        "mode": "enforce",
        "failure_mode": "fail_closed",
        "decision_deadline_ms": 1000,
        "interpreters": [],
        "loaders": [],
        "script_suffixes": [".sh", ".py"],
        "updater_sha256": "00" * 32,
        "excluded_paths": [],
        "memfd_noexec": None,
    }
    document.update(overrides)
    return document
