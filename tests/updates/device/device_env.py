"""A simulated device root next to real image and director repositories served over HTTP."""

from __future__ import annotations

import hashlib
import os
import stat
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from medsec.updates.client import AssignedTarget, DeviceIdentity, UpdateClient, UpdatePaths
from medsec.updates.device_update import DeviceUpdater, Transition
from medsec.updates.fetcher import Failpoint, HttpxFetcher, no_failpoint
from medsec.updates.health import CommandCheck, HealthChecker
from medsec.updates.installer import DirectoryInstaller
from medsec.updates.slots import MARKER_DIR, DirectorySlots, SlotRelease
from medsec.updates.window import ClinicalUseProbe, MaintenancePolicy

from .range_server import Behaviour
from .repo_builder import (
    HARDWARE_ID,
    PRODUCT,
    SERIAL,
    Bundle,
    DirectorRepo,
    ImageRepo,
    make_bundle,
    release_custom,
    target_name,
)

ALWAYS = MaintenancePolicy(always=True)
SELFTEST_OK = b"#!/bin/sh\nexit 0\n"
SELFTEST_FAIL = b"#!/bin/sh\necho broken >&2\nexit 3\n"
IDENTITY = DeviceIdentity(serial=SERIAL, hardware_id=HARDWARE_ID, product=PRODUCT)


def release_files(version: str, *, selftest: bytes = SELFTEST_OK, big: int = 0) -> dict[str, tuple[bytes, int]]:
    files = {
        "bin/selftest": (selftest, 0o755),
        "bin/pump-ctl": (f"#!/bin/sh\necho pump {version}\n".encode(), 0o755),
        "etc/pump.conf": (f"build={version}\n".encode(), 0o640),
        "share/doc/README": (b"infusion pump\n", 0o644),
    }
    if big:
        files["lib/firmware.bin"] = (hashlib.shake_256(version.encode()).digest(big), 0o644)
    return files


def provision(root: Path, image_root: bytes, director_root: bytes, bundle: Bundle) -> None:
    """What the factory does: embed the trust roots and install the first release into slot a."""
    trust = root / "usr/share/medsec/trust"
    trust.mkdir(parents=True)
    (trust / "image-root.json").write_bytes(image_root)
    (trust / "director-root.json").write_bytes(director_root)
    paths = UpdatePaths(root)
    factory = paths.root / "factory-release.tar"
    factory.write_bytes(bundle.data)
    target = AssignedTarget(
        name=target_name(bundle.version),
        length=len(bundle.data),
        hashes={"sha256": bundle.sha256},
        product=PRODUCT,
        version=bundle.version,
        release_counter=bundle.counter,
        hardware_ids=(HARDWARE_ID,),
        min_from_version="1.0.0",
    )
    installer = DirectoryInstaller(DirectorySlots(paths.slots_dir))
    installer.install(factory, target, "a")
    installer.switch("a")
    installer.commit()
    factory.unlink()


def check_slot(slot_dir: Path) -> SlotRelease:
    """Assert that a slot holds exactly its release: every file, hash and mode, nothing else."""
    slots = DirectorySlots(slot_dir.parent)
    release = slots.release(slot_dir.name)
    assert release is not None, f"slot {slot_dir.name} is not complete"
    expected = {p["path"]: p for p in release.manifest["payload"]}
    found = set()
    for dirpath, dirnames, filenames in os.walk(slot_dir):
        rel_dir = Path(dirpath).relative_to(slot_dir)
        if rel_dir.parts[:1] == (MARKER_DIR,):
            continue
        for name in filenames:
            path = Path(dirpath) / name
            rel = str(rel_dir / name) if str(rel_dir) != "." else name
            info = path.lstat()
            assert stat.S_ISREG(info.st_mode), rel
            assert rel in expected, f"unexpected file {rel}"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == expected[rel]["sha256"], rel
            assert stat.S_IMODE(info.st_mode) == expected[rel]["mode"], rel
            found.add(rel)
        for name in dirnames:
            assert not (Path(dirpath) / name).is_symlink()
    assert found == set(expected)
    return release


def running_release(root: Path) -> SlotRelease:
    slots = DirectorySlots(root / "slots")
    current = slots.current()
    assert current is not None
    return check_slot(root / "slots" / current)


@dataclass
class DeviceEnv:
    tmp: Path
    www: Path
    url: str
    behaviour: Behaviour
    image: ImageRepo
    director: DirectorRepo
    root: Path
    stack: ExitStack
    transitions: list[Transition] = field(default_factory=list)
    now: datetime = field(default_factory=lambda: datetime(2025, 4, 1, 3, 0, tzinfo=UTC))

    @property
    def paths(self) -> UpdatePaths:
        return UpdatePaths(self.root)

    def release(
        self,
        version: str,
        counter: int,
        *,
        files: dict[str, tuple[bytes, int]] | None = None,
        assign: bool = True,
        **bundle_kw: Any,
    ) -> TargetFile:
        bundle = make_bundle(version, counter, files or release_files(version), **bundle_kw)
        target = self.image.add_target(target_name(version), bundle.data, release_custom(bundle))
        self.image.publish()
        if assign:
            self.director.assign(target)
        return target

    def client(self, **fetcher_kw: Any) -> UpdateClient:
        fetcher = self.stack.enter_context(HttpxFetcher(**fetcher_kw))
        return self.stack.enter_context(UpdateClient(self.paths, IDENTITY, self.url, fetcher=fetcher))

    def installer(self, *, max_attempts: int = 3, failpoint: Failpoint = no_failpoint) -> DirectoryInstaller:
        return DirectoryInstaller(
            DirectorySlots(self.paths.slots_dir, max_attempts=max_attempts, failpoint=failpoint), failpoint=failpoint
        )

    def updater(
        self,
        *,
        policy: MaintenancePolicy = ALWAYS,
        health: HealthChecker | None = None,
        clinical: ClinicalUseProbe | None = None,
        max_attempts: int = 3,
        failpoint: Failpoint = no_failpoint,
        client: UpdateClient | None = None,
    ) -> DeviceUpdater:
        return DeviceUpdater(
            self.paths.state_file,
            client or self.client(),
            self.installer(max_attempts=max_attempts, failpoint=failpoint),
            health=health or HealthChecker((CommandCheck(("bin/selftest",), 10),)),
            policy=policy,
            clinical_use=clinical,
            clock=lambda: self.now,
            on_transition=self.transitions.append,
            failpoint=failpoint,
            poll_seconds=60,
            retry_seconds=5,
        )

    def running_version(self) -> str:
        return running_release(self.root).version
