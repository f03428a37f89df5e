"""A read-only summary of one device root, for ``medsec agent status``."""

from __future__ import annotations

import fcntl
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medsec.agent.access_log import checkpoint_size
from medsec.agent.config import AgentConfig, DeviceLayout
from medsec.agent.state import StateStore


def agent_status(root: Path) -> dict[str, Any]:
    """Serial, enrollment, counter, access-log size and last check-in of the device at ``root``.

    Reads files only; it neither creates a key nor takes the agent's lock, so it
    is safe to call while the daemon runs.
    """
    config = AgentConfig.load(root)
    layout = config.layout
    state = StateStore(layout.state_file).load()
    last = state.last_checkin_at
    return {
        "serial": config.serial,
        "server_url": config.server_url,
        "running": _is_running(layout),
        "enrolled": state.enrolled,
        "counter": state.counter,
        "log_size": checkpoint_size(layout.access_log_dir),
        "cosigned_size": state.cosigned_size,
        "last_checkin_at": datetime.fromtimestamp(last, UTC).isoformat() if last is not None else None,
    }


def _is_running(layout: DeviceLayout) -> bool:
    try:
        fd = os.open(layout.lock_file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
