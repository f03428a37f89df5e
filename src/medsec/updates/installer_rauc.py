"""An installer backend for devices whose A/B slots are managed by RAUC (https://rauc.io).

**Not tested here**: it needs the ``rauc`` service, a bootloader with slot selection and real
partitions, none of which exist in this repository's CI. It is a documented, thin mapping of
:class:`~medsec.updates.installer.InstallerBackend` onto the ``rauc`` command line, and raises
:class:`~medsec.updates.device_errors.InstallerError` with a clear message when ``rauc`` is
not installed.

How the mapping works:

- The medsec bundle stays the unit of trust (TUF verifies it; the manifest lists every file).
  For a RAUC device its payload holds exactly one ``*.raucb`` file, RAUC's own signed bundle.
  :meth:`RaucInstaller.install` unpacks the medsec bundle with the same checks as the
  directory backend into a staging folder, then runs ``rauc install <file>.raucb``. RAUC then
  checks its own signature, writes the inactive slot group and marks it primary for the next
  boot; so ``install`` also performs the switch, and :meth:`switch` only asks for a reboot
  through ``reboot_command``.
- Boot attempts are counted by the bootloader (RAUC's ``boot-attempts`` integration), so
  :meth:`record_attempt` reads nothing and returns 1; the bootloader falls back by itself
  when the limit is exceeded.
- :meth:`commit` is ``rauc status mark-good booted``; :meth:`rollback` is
  ``rauc status mark-bad booted`` followed by ``reboot_command``, after which the bootloader
  starts the other (committed) slot.
- What runs is read from ``rauc status --output-format=json`` and the marker medsec keeps in
  ``state_dir``.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medsec.atomic_file import atomic_write
from medsec.updates.client import AssignedTarget, InstalledRelease
from medsec.updates.device_errors import BundleRejected, InstallerError, UpdateStateError
from medsec.updates.fetcher import copy_target
from medsec.updates.installer import InstallerStatus, unpack_bundle
from medsec.updates.slots import SlotRelease

logger = logging.getLogger(__name__)

RAUC_TIMEOUT = 3600.0
STATUS_TIMEOUT = 60.0


class RaucInstaller:
    def __init__(
        self,
        state_dir: Path,
        *,
        rauc: str = "rauc",
        reboot_command: Sequence[str] = ("systemctl", "reboot"),
    ) -> None:
        found = shutil.which(rauc)
        if found is None:
            raise InstallerError(
                f"the RAUC installer backend needs the {rauc!r} command, which is not installed; "
                "use the directory backend or install RAUC on the device image"
            )
        self._rauc = found
        self._reboot = tuple(reboot_command)
        self._state_dir = state_dir

    def _run(self, *args: str, timeout: float = STATUS_TIMEOUT) -> str:
        try:
            result = subprocess.run(  # noqa: S603  (fixed program, arguments from verified data)
                [self._rauc, *args], capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise InstallerError(f"rauc {' '.join(args)} failed: {e}") from e
        if result.returncode != 0:
            raise InstallerError(
                f"rauc {' '.join(args)} exited with {result.returncode}: {result.stderr.strip()[-500:]}"
            )
        return result.stdout

    def _rauc_status(self) -> dict[str, Any]:
        try:
            data = json.loads(self._run("status", "--output-format=json"))
        except ValueError as e:
            raise InstallerError(f"rauc status is not JSON: {e}") from e
        if not isinstance(data, dict):
            raise InstallerError("rauc status is not a JSON object")
        return data

    def _marker(self, name: str) -> SlotRelease | None:
        path = self._state_dir / f"{name}.json"
        try:
            return SlotRelease(**json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            raise UpdateStateError(f"RAUC release marker {path} is damaged: {e}") from e

    def recover(self) -> InstallerStatus:
        return self.status()

    def status(self) -> InstallerStatus:
        data = self._rauc_status()
        booted, primary = data.get("booted"), data.get("boot_primary")
        committed = self._marker("committed")
        trying = self._marker("trying")
        running = trying if trying is not None and booted == primary else committed
        return InstallerStatus(
            current=str(booted) if booted else None,
            committed="committed" if committed else None,
            trying="trying" if trying else None,
            attempts=1 if trying else 0,
            max_attempts=1,
            running=InstalledRelease(running.version, running.release_counter, running.target_name)
            if running
            else None,
            last_rollback=None,
        )

    def installed(self) -> InstalledRelease | None:
        release = self._marker("committed")
        return InstalledRelease(release.version, release.release_counter, release.target_name) if release else None

    def target_slot(self) -> str:
        return "trying"

    def holds(self, slot: str, target: AssignedTarget) -> bool:
        release = self._marker("trying")
        return release is not None and release.target_hashes == dict(target.hashes)

    def install(self, bundle: Path, target: AssignedTarget, slot: str) -> None:
        copy_target(bundle, bundle, target.length, target.hashes)
        with tempfile.TemporaryDirectory(dir=self._state_dir) as staging:
            manifest = unpack_bundle(bundle, target, Path(staging))
            raucb = [p.path for p in manifest.payload if p.path.endswith(".raucb")]
            if len(raucb) != 1:
                raise BundleRejected("a bundle for a RAUC device must carry exactly one .raucb file")
            self._run("install", str(Path(staging) / raucb[0]), timeout=RAUC_TIMEOUT)
        release = SlotRelease(
            product=manifest.product,
            version=manifest.version,
            release_counter=manifest.release_counter,
            target_name=target.name,
            target_hashes=dict(target.hashes),
            manifest=dict(manifest.raw),
        )
        atomic_write(self._state_dir / "trying.json", json.dumps(asdict(release)).encode("utf-8"))

    def switch(self, slot: str) -> None:
        logger.info("RAUC marked the new slot primary; rebooting into it")
        self._reboot_now()

    def slot_path(self, slot: str) -> Path:
        return Path("/")

    def record_attempt(self) -> int:
        return 1

    def commit(self) -> None:
        self._run("status", "mark-good", "booted")
        trying = self._state_dir / "trying.json"
        if trying.exists():
            trying.replace(self._state_dir / "committed.json")

    def rollback(self, reason: str) -> None:
        logger.error("RAUC rollback: %s", reason)
        self._run("status", "mark-bad", "booted")
        (self._state_dir / "trying.json").unlink(missing_ok=True)
        self._reboot_now()

    def _reboot_now(self) -> None:
        try:
            subprocess.run(list(self._reboot), check=True, timeout=STATUS_TIMEOUT)  # noqa: S603
        except (OSError, subprocess.SubprocessError) as e:
            raise InstallerError(f"cannot reboot with {' '.join(self._reboot)}: {e}") from e
