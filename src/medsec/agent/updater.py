"""Signed updates inside the agent: builds the device updater from ``agent.json`` and drives it.

The daemon calls :meth:`AgentUpdater.step` after each successful check-in; it runs the
update state machine (:class:`medsec.updates.device_update.DeviceUpdater`) only when it is due,
so check-ins are not slowed down between update steps. Every transition goes into the signed
access log as ``update.<phase>`` before the state machine saves it, and the next signed version
report carries the ``update`` object and the version the running slot really holds.

A step that downloads or runs health checks takes as long as they take (bounded by the
fetcher's timeouts and the health checks' deadlines); the daemon reports right after any step
that changed the phase.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

import httpx

from medsec.agent.access_log import AccessLog
from medsec.agent.client import make_http_client
from medsec.agent.config import AgentConfig
from medsec.agent.update_auth import DirectorRequestAuth
from medsec.agent.update_config import UpdateConfig
from medsec.crypto.keys import SigningKey
from medsec.protocol import MAX_REASON
from medsec.updates.client import DeviceIdentity, UpdateClient, UpdatePaths
from medsec.updates.device_errors import DeviceUpdateError
from medsec.updates.device_update import DeviceUpdater, Transition
from medsec.updates.fetcher import HttpxFetcher
from medsec.updates.installer import DirectoryInstaller
from medsec.updates.slots import DirectorySlots

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class AgentUpdater:
    """One device's updater as the daemon sees it: ``step``, ``report``, ``running_version``."""

    def __init__(
        self,
        config: AgentConfig,
        settings: UpdateConfig,
        key: SigningKey,
        access_log: AccessLog,
        *,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._log = access_log
        self._clock = clock
        self._own_http = http is None
        self._http = http if http is not None else make_http_client(config.ca_file, DOWNLOAD_TIMEOUT)
        self._http.auth = DirectorRequestAuth(key, config.serial, clock)
        self._changed = False
        self._next_at = 0.0
        self._last_error: str | None = None
        self._retry = settings.retry_seconds
        paths = UpdatePaths(config.root)
        identity = DeviceIdentity(serial=config.serial, hardware_id=config.hardware_id, product=settings.product)
        self._fetcher = HttpxFetcher(self._http)
        self._client = UpdateClient(paths, identity, config.server_url, fetcher=self._fetcher)
        try:
            self._installer = DirectoryInstaller(DirectorySlots(paths.slots_dir, max_attempts=settings.max_attempts))
            self._updater = DeviceUpdater(
                paths.state_file,
                self._client,
                self._installer,
                health=settings.health,
                policy=settings.maintenance,
                clinical_use=settings.clinical_use,
                on_transition=self._record,
                poll_seconds=settings.poll_seconds,
                retry_seconds=settings.retry_seconds,
            )
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(
        cls,
        config: AgentConfig,
        key: SigningKey,
        access_log: AccessLog,
        *,
        clock: Callable[[], float] = time.time,
    ) -> AgentUpdater | None:
        """The updater for ``config``, or None when ``agent.json`` has no ``update`` section."""
        if config.update is None:
            return None
        return cls(config, config.update, key, access_log, clock=clock)

    def close(self) -> None:
        self._client.close()
        self._fetcher.close()
        if self._own_http:
            self._http.close()

    @property
    def updater(self) -> DeviceUpdater:
        return self._updater

    def step(self) -> float:
        """Advance the update if due; return seconds until the daemon should call again (0: report now)."""
        now = self._clock()
        if now < self._next_at:
            return self._next_at - now
        self._changed = False
        try:
            result = self._updater.step()
        except DeviceUpdateError as e:
            # Damaged local state: keep checking in (the report tells the truth) and try again later.
            logger.error("update step failed: %s", e.diagnostics())
            self._note_error(e)
            wait = float(self._retry)
        else:
            wait = result.next_step_seconds
            if result.error is not None:
                logger.info("update step: %s", result.error.diagnostics())
            else:
                self._last_error = None
        self._next_at = self._clock() + wait
        return 0.0 if self._changed else wait

    def running_version(self) -> str | None:
        """The version of the running slot, or None before any slot exists."""
        try:
            running = self._updater.status().running
        except DeviceUpdateError as e:
            logger.warning("cannot read the slots: %s", e)
            return None
        return running.version if running is not None else None

    def report(self) -> dict[str, Any]:
        """The ``update`` object of the signed version report."""
        state = self._updater.state
        target = state.target
        reason = state.reason[:MAX_REASON] if state.reason else None
        return {
            "state": state.phase.value,
            "release_counter": target.release_counter if target else None,
            "target": target.name if target else None,
            "reason": reason,
            "campaign": target.campaign if target else None,
        }

    # -- internals -----------------------------------------------------------------------------------

    def _record(self, transition: Transition) -> None:
        fields = {k: (v.value if isinstance(v, Enum) else v) for k, v in transition.fields().items()}
        self._log.record(f"update.{transition.phase.value}", **fields)
        self._changed = True

    def _note_error(self, error: DeviceUpdateError) -> None:
        if self._last_error == error.code:
            return
        self._last_error = error.code
        self._log.record("update.error", code=error.code, detail=str(error)[:500])
