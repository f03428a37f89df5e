"""Runs one device update in a child process and SIGKILLs itself at a named failpoint.

``MEDSEC_FAILPOINT=<name>`` (and optionally ``MEDSEC_FAILPOINT_HIT=<n>``, the n-th time that
failpoint is reached) selects where; ``MEDSEC_TEST_HEALTH=fail`` makes the health check fail.
Usage: ``python crash_child.py DEVICE_ROOT SERVER_URL``. Only the tests run this.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from medsec.updates.client import DeviceIdentity, UpdateClient, UpdatePaths
from medsec.updates.device_update import RESTING, DeviceUpdater
from medsec.updates.fetcher import HttpxFetcher
from medsec.updates.health import CommandCheck, HealthChecker
from medsec.updates.installer import DirectoryInstaller
from medsec.updates.slots import DirectorySlots
from medsec.updates.window import MaintenancePolicy

IDENTITY = DeviceIdentity(serial="IC300-0001", hardware_id="ic300-rev-b", product="infusion-pump")


def make_failpoint() -> object:
    wanted = os.environ.get("MEDSEC_FAILPOINT")
    hit_at = int(os.environ.get("MEDSEC_FAILPOINT_HIT", "1"))
    seen = 0

    def failpoint(name: str) -> None:
        nonlocal seen
        if name == wanted:
            seen += 1
            if seen == hit_at:
                os.kill(os.getpid(), signal.SIGKILL)

    return failpoint


def health_checker() -> HealthChecker:
    if os.environ.get("MEDSEC_TEST_HEALTH") == "fail":
        return HealthChecker((CommandCheck(("/bin/false",), 10),))
    return HealthChecker((CommandCheck(("bin/selftest",), 10),))


def main(root: Path, url: str) -> int:
    failpoint = make_failpoint()
    paths = UpdatePaths(root)
    with HttpxFetcher() as fetcher, UpdateClient(paths, IDENTITY, url, fetcher=fetcher) as client:
        installer = DirectoryInstaller(DirectorySlots(paths.slots_dir, failpoint=failpoint), failpoint=failpoint)  # type: ignore[arg-type]
        updater = DeviceUpdater(
            paths.state_file,
            client,
            installer,
            health=health_checker(),
            policy=MaintenancePolicy(always=True),
            failpoint=failpoint,  # type: ignore[arg-type]
        )
        for _ in range(5):
            result = updater.step()
            if result.phase in RESTING:
                break
    print(result.phase.value)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
