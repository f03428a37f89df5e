"""The device-side update state machine (SM-1, SM-5, SM-6, RL-1).

::

    idle ─▶ downloading ─▶ downloaded ─▶ waiting_for_window ─▶ installing ─▶ switched ─▶ health_check
     ▲           │              │                 │                 │                        │
     │           ▼              ▼                 ▼                 ▼                        ├─▶ committed
     └──── failed(reason) ◀─────┴─────────────────┴─────────────────┘                        └─▶ rolled_back

``committed``, ``rolled_back`` and ``failed`` behave like ``idle`` on the next step: the device
asks the director again. The state lives in ``ROOT/var/lib/medsec/updates/state.json`` and is
written atomically on every transition, so :meth:`DeviceUpdater.step` after a restart continues
where the last process stopped; every step it takes is idempotent:

- ``downloading`` resumes the ``.part`` file;
- ``installing`` rewrites the inactive slot unless it already holds the target, then switches
  (a no-op when the switch already happened);
- ``health_check`` counts one attempt before running the checks, so a release that crashes the
  device during its checks is rolled back after ``max_attempts`` tries, like a bootloader's
  boot counter; a rollback reason is recorded before the rollback starts.

Each transition is reported to ``on_transition`` *before* it is saved: after a crash a report
may repeat, but none goes missing (the same rule as the agent's access log).

Installing waits for a maintenance window and for the device to be out of clinical use
(:mod:`medsec.updates.window`); downloading does not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from medsec.atomic_file import atomic_write
from medsec.updates.client import AssignedTarget, InstalledRelease, VerifiedBundle
from medsec.updates.device_errors import (
    DeviceUpdateError,
    HealthCheckFailed,
    UpdateRejected,
    UpdateStateError,
    UpdateTransportError,
)
from medsec.updates.fetcher import PART_SUFFIX, Failpoint, no_failpoint
from medsec.updates.health import HealthChecker
from medsec.updates.installer import InstallerBackend, check_manifest, read_manifest
from medsec.updates.window import ClinicalUseProbe, MaintenancePolicy, NeverInUse, install_decision

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
MAX_STATE_BYTES = 1024 * 1024
MAX_REFUSED = 16
DEFAULT_POLL_SECONDS = 3600.0
DEFAULT_RETRY_SECONDS = 60.0
MAX_CHAIN = 16


class Phase(StrEnum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    WAITING_FOR_WINDOW = "waiting_for_window"
    INSTALLING = "installing"
    SWITCHED = "switched"
    HEALTH_CHECK = "health_check"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


RESTING = frozenset({Phase.IDLE, Phase.COMMITTED, Phase.ROLLED_BACK, Phase.FAILED})
BEFORE_INSTALL = RESTING | {Phase.DOWNLOADING, Phase.DOWNLOADED, Phase.WAITING_FOR_WINDOW}


@dataclass(frozen=True)
class UpdateState:
    phase: Phase = Phase.IDLE
    target: AssignedTarget | None = None
    bundle: str | None = None
    slot: str | None = None
    reason: str | None = None  # why failed / rolled back / waiting
    code: str | None = None  # the error code of a failure
    from_version: str | None = None
    pending_rollback: str | None = None  # written before a rollback starts, so a crash cannot lose why
    refused: tuple[str, ...] = ()  # sha256 of releases that failed their trial: never retried
    changed_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "phase": self.phase.value,
            "target": self.target.to_json() if self.target else None,
            "bundle": self.bundle,
            "slot": self.slot,
            "reason": self.reason,
            "code": self.code,
            "from_version": self.from_version,
            "pending_rollback": self.pending_rollback,
            "refused": list(self.refused),
            "changed_at": self.changed_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> UpdateState:
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise UpdateStateError("update state has an unknown format")
        try:
            return cls(
                phase=Phase(data["phase"]),
                target=AssignedTarget.from_json(data["target"]) if data.get("target") else None,
                bundle=data.get("bundle"),
                slot=data.get("slot"),
                reason=data.get("reason"),
                code=data.get("code"),
                from_version=data.get("from_version"),
                pending_rollback=data.get("pending_rollback"),
                refused=tuple(str(r) for r in data.get("refused", [])),
                changed_at=data.get("changed_at"),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise UpdateStateError(f"update state is damaged: {e}") from e


@dataclass(frozen=True)
class Transition:
    """One reported change of phase (for the access log and the signed version report)."""

    previous: Phase
    phase: Phase
    at: str
    target_name: str | None
    target_version: str | None
    release_counter: int | None
    reason: str | None
    code: str | None

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class StepResult:
    phase: Phase
    next_step_seconds: float
    error: DeviceUpdateError | None = None


@dataclass(frozen=True)
class UpdateStatus:
    """The truth to report: the state machine's phase and what actually runs."""

    phase: Phase
    running: InstalledRelease | None
    committed: InstalledRelease | None
    target_version: str | None
    reason: str | None
    attempts: int


class UpdateSource(Protocol):
    """What the state machine needs from :class:`medsec.updates.client.UpdateClient`."""

    def check(self, installed: InstalledRelease | None) -> AssignedTarget | None: ...

    def download(self, target: AssignedTarget, *, failpoint: Failpoint = ...) -> Path: ...

    def install_offline_bundle(
        self, path: Path, metadata_dir: Path, *, installed: InstalledRelease | None
    ) -> VerifiedBundle: ...


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> UpdateState:
        try:
            with self.path.open("rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return UpdateState()
        except OSError as e:
            raise UpdateStateError(f"cannot read update state {self.path}: {e.strerror}") from e
        if len(raw) > MAX_STATE_BYTES:
            raise UpdateStateError(f"update state {self.path} is too large")
        try:
            return UpdateState.from_json(json.loads(raw))
        except ValueError as e:
            raise UpdateStateError(f"update state {self.path} is not JSON: {e}") from e

    def save(self, state: UpdateState) -> None:
        data = json.dumps(state.to_json(), indent=2, sort_keys=True).encode("utf-8") + b"\n"
        try:
            atomic_write(self.path, data, mode=0o600)
        except OSError as e:
            raise UpdateStateError(f"cannot write update state {self.path}: {e.strerror}") from e


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _ignore_saved(state: UpdateState) -> None:
    """The default ``on_saved``: nobody waits for new phases."""


def _ignore(transition: Transition) -> None:
    """Default transition sink."""


class DeviceUpdater:
    """Drives one device's update; call :meth:`step` periodically (it never blocks on a window)."""

    def __init__(
        self,
        state_file: Path,
        source: UpdateSource,
        installer: InstallerBackend,
        *,
        health: HealthChecker | None = None,
        policy: MaintenancePolicy | None = None,
        clinical_use: ClinicalUseProbe | None = None,
        clock: Callable[[], datetime] = _utc_now,
        on_transition: Callable[[Transition], None] = _ignore,
        on_saved: Callable[[UpdateState], None] = _ignore_saved,
        failpoint: Failpoint = no_failpoint,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        self._store = StateFile(state_file)
        self._source = source
        self._installer = installer
        self._health = health or HealthChecker()
        self._policy = policy or MaintenancePolicy()
        self._clinical = clinical_use or NeverInUse()
        self._clock = clock
        self._report = on_transition
        self._on_saved = on_saved
        self._failpoint = failpoint
        self._poll = poll_seconds
        self._retry = retry_seconds
        # A restart after a crash: first make the slots consistent, then read where we were.
        self._installer.recover()
        self._state = self._store.load()

    @property
    def state(self) -> UpdateState:
        return self._state

    def status(self) -> UpdateStatus:
        slots = self._installer.status()
        return UpdateStatus(
            phase=self._state.phase,
            running=slots.running,
            committed=self._installer.installed(),
            target_version=self._state.target.version if self._state.target else None,
            reason=self._state.reason,
            attempts=slots.attempts,
        )

    # -- driving -------------------------------------------------------------------------------------

    def step(self) -> StepResult:
        """Advance as far as possible now; return the phase and when to call again.

        Remote and transport failures are returned in ``error`` (and rejected updates move
        to ``failed``); damaged local state raises UpdateStateError.
        """
        for _ in range(MAX_CHAIN):
            result = self._advance()
            if result is not None:
                return result
        return StepResult(self._state.phase, 0.0)

    def stage_offline_bundle(self, bundle: Path, metadata_dir: Path) -> UpdateState:
        """Verify a USB bundle with the same rule as online and queue it for install."""
        if self._state.phase not in BEFORE_INSTALL:
            raise UpdateStateError(f"an install is in progress ({self._state.phase}); try again when it ends")
        try:
            verified = self._source.install_offline_bundle(bundle, metadata_dir, installed=self._installer.installed())
        except UpdateRejected as e:
            self._fail(e)
            raise
        self._move(
            Phase.DOWNLOADED,
            target=verified.target,
            bundle=str(verified.path),
            slot=None,
            reason="offline",
            code=None,
            from_version=self._installed_version(),
        )
        return self._state

    def _advance(self) -> StepResult | None:
        phase = self._state.phase
        if phase in RESTING:
            return self._check()
        handlers: dict[Phase, Callable[[], StepResult | None]] = {
            Phase.DOWNLOADING: self._download,
            Phase.DOWNLOADED: self._after_download,
            Phase.WAITING_FOR_WINDOW: self._wait_for_window,
            Phase.INSTALLING: self._install,
            Phase.SWITCHED: self._start_health_check,
            Phase.HEALTH_CHECK: self._health_check,
        }
        return handlers[phase]()

    # -- phases --------------------------------------------------------------------------------------

    def _check(self) -> StepResult | None:
        try:
            target = self._source.check(self._installer.installed())
        except UpdateTransportError as e:
            logger.warning("update check failed: %s", e)
            return StepResult(self._state.phase, self._retry, e)
        except UpdateRejected as e:
            logger.error("update refused: %s", e.diagnostics())
            self._fail(e)
            return StepResult(self._state.phase, self._poll, e)
        if target is None or target.hashes.get("sha256") in self._state.refused:
            return StepResult(self._state.phase, self._poll)
        self._move(
            Phase.DOWNLOADING,
            target=target,
            bundle=None,
            slot=None,
            reason=None,
            code=None,
            from_version=self._installed_version(),
        )
        return None

    def _download(self) -> StepResult | None:
        target = self._target()
        try:
            path = self._source.download(target, failpoint=self._failpoint)
        except UpdateTransportError as e:
            logger.warning("download of %s interrupted: %s", target.name, e)
            return StepResult(self._state.phase, self._retry, e)
        except UpdateRejected as e:
            self._fail(e)
            return StepResult(self._state.phase, self._poll, e)
        self._move(Phase.DOWNLOADED, bundle=str(path))
        return None

    def _after_download(self) -> StepResult | None:
        target = self._target()
        try:
            # Early check of the manifest, so a bad bundle fails now, not in the maintenance window.
            check_manifest(read_manifest(self._bundle()), target)
        except UpdateRejected as e:
            self._fail(e)
            return StepResult(self._state.phase, self._poll, e)
        return self._wait_for_window()

    def _wait_for_window(self) -> StepResult | None:
        target = self._target()
        policy = self._policy
        if target.install_window is not None:
            # The hospital's window, delivered signed by the director, overrides the local default.
            policy = MaintenancePolicy.from_mapping(target.install_window)
        decision = install_decision(self._clock(), policy, in_clinical_use=self._clinical.in_use())
        if not decision.allowed:
            if self._state.phase != Phase.WAITING_FOR_WINDOW or self._state.reason != decision.reason:
                self._move(Phase.WAITING_FOR_WINDOW, reason=decision.reason)
            return StepResult(self._state.phase, decision.retry_after_seconds)
        self._move(Phase.INSTALLING, slot=self._installer.target_slot(), reason=None)
        return None

    def _install(self) -> StepResult | None:
        target, slot = self._target(), self._slot()
        try:
            if not self._installer.holds(slot, target):
                self._installer.install(self._bundle(), target, slot)
            self._failpoint("install.done")
            self._installer.switch(slot)
        except UpdateRejected as e:
            self._fail(e)
            return StepResult(self._state.phase, self._poll, e)
        except DeviceUpdateError as e:
            self._fail(e)
            return StepResult(self._state.phase, self._retry, e)
        self._move(Phase.SWITCHED)
        return None

    def _start_health_check(self) -> StepResult | None:
        self._move(Phase.HEALTH_CHECK)
        return None

    def _health_check(self) -> StepResult | None:
        slot = self._slot()
        status = self._installer.recover()
        if status.committed == slot and status.trying is None:
            # Committed before the last process could record it.
            return self._committed()
        if status.trying != slot:
            return self._rolled_back(self._state.pending_rollback or "the slot was no longer on trial after a restart")
        if self._state.pending_rollback is not None:
            return self._rollback(self._state.pending_rollback, None)
        attempts = self._installer.record_attempt()
        if attempts > status.max_attempts:
            return self._rollback(f"health check attempt {attempts} exceeds the limit of {status.max_attempts}", None)
        self._failpoint("health.attempt")
        try:
            self._health.run(self._installer.slot_path(slot))
        except HealthCheckFailed as e:
            return self._rollback(str(e), e)
        self._installer.commit()
        return self._committed()

    def _committed(self) -> StepResult:
        self._move(Phase.COMMITTED, reason=None, pending_rollback=None)
        self._discard_bundle()
        return StepResult(self._state.phase, self._poll)

    def _rollback(self, reason: str, error: DeviceUpdateError | None) -> StepResult:
        logger.error("rolling back %s: %s", self._target().name, reason)
        self._save(replace(self._state, pending_rollback=reason))
        self._installer.rollback(reason)
        result = self._rolled_back(reason)
        return replace(result, error=error)

    def _rolled_back(self, reason: str) -> StepResult:
        digest = self._target().hashes.get("sha256")
        refused = self._state.refused
        if digest and digest not in refused:
            refused = (*refused, digest)[-MAX_REFUSED:]
        self._move(
            Phase.ROLLED_BACK, reason=reason, code=HealthCheckFailed.code, pending_rollback=None, refused=refused
        )
        self._discard_bundle()
        return StepResult(self._state.phase, self._poll)

    # -- helpers -------------------------------------------------------------------------------------

    def _fail(self, error: DeviceUpdateError) -> None:
        self._move(Phase.FAILED, reason=str(error)[:500], code=error.code, slot=None)
        if not isinstance(error, UpdateTransportError):
            self._discard_bundle()

    def _move(self, phase: Phase, **changes: Any) -> None:
        at = self._clock().isoformat()
        new = replace(self._state, phase=phase, changed_at=at, **changes)
        target = new.target
        self._report(
            Transition(
                previous=self._state.phase,
                phase=phase,
                at=at,
                target_name=target.name if target else None,
                target_version=target.version if target else None,
                release_counter=target.release_counter if target else None,
                reason=new.reason,
                code=new.code,
            )
        )
        self._save(new)
        self._on_saved(new)  # after the save: whoever reports the new phase reads it from the saved state
        self._failpoint(f"state.{phase.value}")

    def _save(self, state: UpdateState) -> None:
        self._store.save(state)
        self._state = state

    def _target(self) -> AssignedTarget:
        if self._state.target is None:
            raise UpdateStateError(f"update state is {self._state.phase} but names no target")
        return self._state.target

    def _bundle(self) -> Path:
        if self._state.bundle is None:
            raise UpdateStateError(f"update state is {self._state.phase} but names no bundle")
        return Path(self._state.bundle)

    def _slot(self) -> str:
        if self._state.slot is None:
            raise UpdateStateError(f"update state is {self._state.phase} but names no slot")
        return self._state.slot

    def _installed_version(self) -> str | None:
        installed = self._installer.installed()
        return installed.version if installed else None

    def _discard_bundle(self) -> None:
        if self._state.bundle is None:
            return
        bundle = Path(self._state.bundle)
        for path in (bundle, bundle.with_name(bundle.name + PART_SUFFIX)):
            path.unlink(missing_ok=True)
        self._save(replace(self._state, bundle=None))
