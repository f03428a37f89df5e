"""Signed updates inside the agent: builds the device updater from ``agent.json`` and drives it.

The update state machine (:class:`medsec.updates.device_update.DeviceUpdater`) runs on its own
thread (:meth:`AgentUpdater.start_thread`), so a download that takes minutes on a hospital network,
or a health check that waits for the device, never holds up the signed check-ins the server and
the hospital rely on (SM-1, SM-5). Every transition goes into the signed access log as
``update.<phase>`` before the state machine saves it; once it is saved the daemon is woken to
send a report at once, and that report carries the ``update`` object and the version the running
slot really holds.

Shutdown is cooperative: the stop flag is also the fetcher's cancel flag, so a download stops at
the next chunk and keeps its ``.part`` file for the next start (resumed with an HTTP Range request).
A SIGKILL at any point leaves what the state machine's crash tests cover: its state file is
written atomically and every step is re-entrant.
"""

from __future__ import annotations

import logging
import threading
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
from medsec.updates.device_update import DeviceUpdater, Transition, UpdateState
from medsec.updates.fetcher import HttpxFetcher
from medsec.updates.installer import DirectoryInstaller
from medsec.updates.slots import DirectorySlots

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
THREAD_JOIN_TIMEOUT = 30.0  # a step ends at the next download chunk; a health check may need its deadline


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
        # Set to stop: ends the thread's wait and, as the fetcher's cancel flag, a download in progress.
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_saved: Callable[[], None] = _nothing
        self._thread_error: BaseException | None = None
        paths = UpdatePaths(config.root)
        identity = DeviceIdentity(serial=config.serial, hardware_id=config.hardware_id, product=settings.product)
        self._fetcher = HttpxFetcher(self._http, cancel=self._halt)
        self._client = UpdateClient(paths, identity, config.server_url, fetcher=self._fetcher)
        try:
            self._installer = DirectoryInstaller(
                DirectorySlots(paths.slots_dir, max_attempts=settings.max_attempts),
                trustdb_check=_trustdb_check(config),
            )
            self._updater = DeviceUpdater(
                paths.state_file,
                self._client,
                self._installer,
                health=settings.health,
                policy=settings.maintenance,
                clinical_use=settings.clinical_use,
                on_transition=self._record,
                on_saved=self._saved,
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
        self.stop_thread()
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

    # -- the update thread ------------------------------------------------------------------------

    def start_thread(self, on_saved: Callable[[], None]) -> None:
        """Run :meth:`step` on a thread of its own until :meth:`stop_thread`; ``on_saved`` after each new phase.

        Idempotent: a second call while the thread runs does nothing.
        """
        if self._thread is not None:
            return
        self._on_saved = on_saved
        self._thread = threading.Thread(target=self._loop, name="medsec-updater", daemon=True)
        self._thread.start()

    def stop_thread(self, timeout: float = THREAD_JOIN_TIMEOUT) -> bool:
        """Stop the update thread and wait for it; False if it did not end within ``timeout``."""
        self._halt.set()
        self._fetcher.interrupt()
        thread, self._thread = self._thread, None
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("the update thread did not stop within %.0f s", timeout)
            return False
        return True

    @property
    def thread_error(self) -> BaseException | None:
        """What ended the update thread, if it was not asked to stop (a damaged access log, say)."""
        return self._thread_error

    def _loop(self) -> None:
        try:
            while not self._halt.is_set():
                self.step()
                self._halt.wait(max(0.0, self._next_at - self._clock()))
        except BaseException as e:  # handed to the check-in loop, which stops the agent with it
            logger.exception("the update thread failed")
            self._thread_error = e
            self._on_saved()

    # -- status ------------------------------------------------------------------------------------

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

    def _saved(self, state: UpdateState) -> None:
        self._on_saved()

    def _note_error(self, error: DeviceUpdateError) -> None:
        if self._last_error == error.code:
            return
        self._last_error = error.code
        self._log.record("update.error", code=error.code, detail=str(error)[:500])


def _nothing() -> None:
    """The default ``on_saved``: no daemon to wake."""


def _trustdb_check(config: AgentConfig) -> Callable[[bytes | None, str, int], None] | None:
    """When the allowlist comes from the active slot, a release whose trust database does not verify
    is never installed (a device with a fixed trust database file takes releases as they are)."""
    if config.protection is None or config.protection.trustdb_file is not None:
        return None
    from medsec.protect import trustdb  # protection code only when configured

    return trustdb.installer_check([trustdb.read_verify_key(p) for p in config.protection.trust_keys])
