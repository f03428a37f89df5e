"""The device daemon: enroll once, then send signed version reports on a jittered schedule.

One :class:`Agent` owns one device root while it runs (an exclusive lock on
``var/lib/medsec/agent.lock``), so two daemons can never interleave counters
or log appends on the same device. Signed updates run on a thread of their own
(:mod:`medsec.agent.updater`), so a long download never delays a check-in; a
heartbeat file (:mod:`medsec.agent.heartbeat`) lets the next start log how long
the agent was away when it did not stop cleanly (RL-1).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import re
import stat
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from medsec.agent.access_log import AccessLog, parse_verifier_key
from medsec.agent.client import ServerClient, ServerUnavailable, make_http_client
from medsec.agent.config import MAX_CHECKIN_INTERVAL, AgentConfig
from medsec.agent.heartbeat import Heartbeat
from medsec.agent.schedule import Backoff, jittered
from medsec.agent.state import AgentState, StateStore
from medsec.auditlog.checkpoint import Checkpoint
from medsec.auditlog.note import parse_note
from medsec.auditlog.witness import verify_cosignature
from medsec.crypto.keys import SigningKey
from medsec.errors import AgentError, AuditLogError, CheckinRejected, ConfigError, CryptoError, ProtocolError
from medsec.protocol import MAX_FIELD, CheckinResponse, EnrollmentRequest, VersionReport
from medsec.signals import stop_on_signals

if TYPE_CHECKING:
    from medsec.agent.protection import DeviceProtection
    from medsec.agent.updater import AgentUpdater

logger = logging.getLogger(__name__)

AGENT_STATE_RUNNING = "running"
UNKNOWN_VERSION = "unknown"
MAX_SMALL_FILE = 4096
MAX_EVENT_TEXT = 500
STOP_POLL_SECONDS = 0.25  # how soon a waiting check-in loop notices ``stop`` while the update thread may wake it
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class Agent:
    """A started agent on one device root. Use :meth:`start` and close it (or use ``with``)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        key: SigningKey,
        store: StateStore,
        state: AgentState,
        access_log: AccessLog,
        http: httpx.Client,
        lock_fd: int,
        own_http: bool,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.config = config
        self._key = key
        self._store = store
        self._state = state
        self.access_log = access_log
        self._http = http
        self._own_http = own_http
        self._client = ServerClient(config.server_url, http)
        self._lock_fd: int | None = lock_fd
        self._clock = clock
        self._rng = rng
        self._backoff = Backoff(config.retry_initial_seconds, config.retry_max_seconds, rng)
        # The last refusal written to the access log, so a device stuck on the same
        # refusal does not add an entry every retry.
        self._last_problem: tuple[str, str] | None = None
        self._clean_stop = False  # set once agent.stopped is in the log: the heartbeat then says so
        self.updates: AgentUpdater | None = None  # signed updates, when agent.json has an 'update' section
        self.protection: DeviceProtection | None = None  # allowlist, integrity, ports: its own threads
        self._wake = threading.Event()  # set by the update thread when a new phase is saved: report it now
        self.heartbeat = Heartbeat(config.layout.heartbeat_file, config.heartbeat_seconds, clock)

    @classmethod
    def start(
        cls,
        config: AgentConfig,
        *,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> Agent:
        """Take the device lock, load or create the device key and state, and log ``agent.started``."""
        layout = config.layout
        layout.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with ExitStack() as cleanup:
            lock_fd = _acquire_lock(layout.lock_file)
            cleanup.callback(os.close, lock_fd)
            store = StateStore(layout.state_file)
            store.remove_stale_temp_files()
            state = store.load()
            key, created = _load_or_create_key(config)
            access_log = AccessLog(layout.access_log_dir, config.serial, key, clock)
            cleanup.callback(access_log.close)
            if created:
                access_log.record("agent.key_created", public_key=key.verify_key.to_base64())
            own_http = http is None
            if http is None:
                http = make_http_client(config.ca_file)
                cleanup.callback(http.close)
            agent = cls(
                config,
                key=key,
                store=store,
                state=state,
                access_log=access_log,
                http=http,
                lock_fd=lock_fd,
                own_http=own_http,
                clock=clock,
                rng=rng if rng is not None else random.SystemRandom(),
            )
            if config.update is not None:
                from medsec.agent.updater import AgentUpdater  # update code only when configured

                agent.updates = AgentUpdater(config, config.update, key, access_log, clock=clock)
                cleanup.callback(agent.updates.close)
            cleanup.callback(agent.heartbeat.stop, clean=False)
            agent._after_start()
            if config.protection is not None:
                from medsec.agent.protection import start_protection  # protection code only when configured

                agent.protection = start_protection(config, key, access_log)
                cleanup.callback(agent.protection.stop)
            cleanup.pop_all()
        return agent

    def _after_start(self) -> None:
        if self._state.enrolled:
            # A crash between saving the enrollment and deleting the token leaves it behind.
            self._delete_token()
        gap = self.heartbeat.previous_gap()
        if gap is not None:
            # RL-1: the device was unwatched from the last heartbeat until now (a crash, a kill, power loss).
            logger.warning("the previous agent run did not stop cleanly; unwatched for %.0f s", gap.seconds)
            self.access_log.record("agent.gap", **gap.fields())
        self.heartbeat.start()
        self.access_log.record(
            "agent.started",
            serial=self.config.serial,
            pid=os.getpid(),
            enrolled=self._state.enrolled,
            counter=self._state.counter,
            installed_version=self._installed_version(),
        )
        logger.info("agent for %s started (enrolled=%s)", self.config.serial, self._state.enrolled)

    @property
    def state(self) -> AgentState:
        return self._state

    @property
    def checkin_interval(self) -> int:
        # The server may steer the interval, but never make a device go silent for days.
        wanted = self._state.checkin_interval_seconds or self.config.checkin_interval_seconds
        return min(wanted, MAX_CHECKIN_INTERVAL)

    # -- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> Agent:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(error=exc)

    def close(self, error: BaseException | None = None) -> None:
        """Log ``agent.stopped`` and release the device."""
        if self._lock_fd is None:
            return
        try:
            fields: dict[str, Any] = {"reason": "requested" if error is None else "error"}
            if error is not None:
                fields["error"] = type(error).__name__
            if self.updates is not None:
                # The update thread writes to the log: it ends before the log's last entry.
                self.updates.stop_thread()
            if self.protection is not None:
                self.protection.stop()  # answers every pending permission event, then writes its last entries
            self.access_log.record("agent.stopped", **fields)
            self._clean_stop = True
            logger.info("agent for %s stopped", self.config.serial)
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock_fd is None:
            return
        with ExitStack() as stack:
            # Run in reverse: the log closes first, the device lock is released last.
            stack.callback(os.close, self._lock_fd)
            self._lock_fd = None
            if self._own_http:
                stack.callback(self._http.close)
            stack.callback(self.access_log.close)
            if self.updates is not None:
                stack.callback(self.updates.close)
            # First of all: stop the heartbeat, and say the stop was clean only if it was requested.
            stack.callback(self.heartbeat.stop, clean=self._clean_stop)

    def run(self, stop: threading.Event) -> None:
        """Enroll if needed, then check in until ``stop`` is set."""
        while not stop.is_set():
            delay = self.step()
            logger.debug("next contact with the server in %.1f s", delay)
            self._wait(stop, delay)

    def _wait(self, stop: threading.Event, delay: float) -> None:
        """Sleep ``delay`` seconds, less if ``stop`` is set or the update thread saved a new phase."""
        if self.updates is None:
            stop.wait(delay)
            return
        deadline = time.monotonic() + delay
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._wake.wait(min(remaining, STOP_POLL_SECONDS)):
                return

    def step(self) -> float:
        """One enrollment or check-in attempt; return the seconds to wait before the next one.

        Failures the server or network causes are handled here (logged, backoff);
        failures of the device's own state (AgentError, AuditLogError) propagate.
        """
        enrolling = not self._state.enrolled
        self._wake.clear()  # this report carries every phase saved so far
        if self.updates is not None and self.updates.thread_error is not None:
            raise self.updates.thread_error
        try:
            if enrolling:
                self.enroll()
            else:
                self.checkin()
        except CheckinRejected as e:
            event = "agent.enrollment_refused" if enrolling else "agent.checkin_refused"
            logger.warning("%s: %s", event, e.diagnostics())
            self._note_problem(event, e.code, str(e))
            return self._backoff.next_delay()
        except ServerUnavailable as e:
            logger.warning("server unavailable: %s", e)
            return self._backoff.next_delay()
        except ProtocolError as e:
            logger.warning("unusable server answer: %s", e)
            self._note_problem("agent.bad_server_answer", "malformed", str(e))
            return self._backoff.next_delay()
        except ConfigError as e:
            logger.error("%s", e.diagnostics())
            return self._backoff.next_delay()
        self._backoff.reset()
        self._last_problem = None
        # Right after enrolling, report at once so the server learns our version.
        delay = 0.0 if enrolling else jittered(self.checkin_interval, self._rng)
        if self.updates is not None and not enrolling:
            # Director requests are signed with the enrolled key, so updates start after enrollment.
            self.updates.start_thread(self._wake.set)
        return delay

    def _note_problem(self, event: str, code: str, detail: str) -> None:
        if self._last_problem == (event, code):
            return
        self._last_problem = (event, code)
        self.access_log.record(event, code=code, detail=detail[:MAX_EVENT_TEXT])

    # -- enrollment ----------------------------------------------------------------------------------

    def enroll(self) -> None:
        """Enroll with the one-time token; raise CheckinRejected on refusal."""
        token = self._read_token()
        request = EnrollmentRequest(
            token=token,
            serial=self.config.serial,
            hardware_id=self.config.hardware_id,
            public_key=self._key.verify_key.to_base64(),
        )
        response = self._client.enroll(request.sign(self._key))
        if response.serial != self.config.serial:
            raise ProtocolError(f"server enrolled serial {response.serial!r}, not {self.config.serial!r}")
        for name in ("server_log_key", "witness_key"):
            try:
                parse_verifier_key(getattr(response, name))
            except (AuditLogError, CryptoError) as e:
                raise ProtocolError(f"enrollment answer field {name!r} is not a verifier key: {e}") from e
        self._set_state(
            replace(
                self._state,
                enrolled=True,
                nonce=response.nonce,
                server_log_key=response.server_log_key,
                witness_key=response.witness_key,
                checkin_interval_seconds=response.checkin_interval_seconds,
            )
        )
        self.access_log.record(
            "agent.enrolled",
            serial=response.serial,
            public_key=self._key.verify_key.to_base64(),
            server_log_key=response.server_log_key,
            witness_key=response.witness_key,
        )
        self._delete_token()
        logger.info("enrolled %s", self.config.serial)

    def _read_token(self) -> str:
        path = self.config.enrollment_token_file
        if path is None:
            raise ConfigError("the device is not enrolled and agent.json names no 'enrollment_token_file'")
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_SMALL_FILE + 1)
        except FileNotFoundError as e:
            raise ConfigError(f"the device is not enrolled and the enrollment token {path} does not exist") from e
        except OSError as e:
            raise ConfigError(f"cannot read enrollment token {path}: {e.strerror}") from e
        token = raw.decode("utf-8", errors="replace").strip()
        if not token or len(token) > MAX_FIELD or _CONTROL_RE.search(token):
            raise ConfigError(f"enrollment token {path} must hold one line of at most {MAX_FIELD} characters")
        return token

    def _delete_token(self) -> None:
        path = self.config.enrollment_token_file
        if path is None:
            return
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            logger.warning("cannot delete used enrollment token %s: %s", path, e.strerror)

    # -- check-in ------------------------------------------------------------------------------------

    def checkin(self) -> CheckinResponse:
        """Send one signed version report; on ``stale_nonce`` resynchronise the nonce and retry once."""
        if self._state.nonce is None:
            self._resync_nonce()
        previous_sent = self._state.last_sent_size
        try:
            # The server's witness holds the tree of the last report it accepted, whether or not
            # we accepted its cosignature, so the consistency proof starts there.
            return self._send_report(self._state.acked_size)
        except CheckinRejected as e:
            if e.code != "stale_nonce":
                raise
            logger.info("server says our nonce is stale (a lost answer?); fetching the current one")
        base = self._resync_nonce()
        if base is None:
            # A stale nonce means the server accepted a report whose answer we lost, most likely
            # the one sent before this attempt, so its witness now holds that report's tree.
            base = self._state.acked_size
            if previous_sent is not None and base <= previous_sent <= self.access_log.size:
                base = previous_sent
        return self._send_report(base)

    def _resync_nonce(self) -> int | None:
        """Fetch the current nonce; return the witness's size if the server says what it last cosigned."""
        nonce, note = self._client.current_nonce(self.config.serial)
        state = replace(self._state, nonce=nonce)
        base = None
        if note is not None:
            try:
                self._verify_cosigned(note, None)
                base = self.access_log.check_own_checkpoint(note)
            except (AuditLogError, CryptoError, ProtocolError) as e:
                logger.error("refusing the server's cosigned checkpoint: %s", e.diagnostics())
                self._note_problem("agent.cosignature_invalid", "resync", e.diagnostics())
            else:
                state = replace(state, acked_size=base)
                if base >= state.cosigned_size:
                    state = replace(state, cosigned_checkpoint=note, cosigned_size=base)
        self._set_state(state)
        return base

    def _send_report(self, proof_base: int) -> CheckinResponse:
        version = self._installed_version()
        agent_state = AGENT_STATE_RUNNING
        # The update and remote-link threads append too: take the size the signed checkpoint covers.
        checkpoint = self.access_log.checkpoint()
        size = Checkpoint.parse(parse_note(checkpoint)[0]).size
        proof = self.access_log.consistency_proof_b64(proof_base, size)
        # Persist the counter before signing: whatever happens next, it is never used again.
        self._state = self._store.reserve_counter(replace(self._state, last_sent_size=size))
        report = VersionReport(
            serial=self.config.serial,
            hardware_id=self.config.hardware_id,
            installed_version=version,
            agent_state=agent_state,
            counter=self._state.counter,
            nonce=self._state.nonce or "",
            sent_at=int(self._clock()),
            log_checkpoint=checkpoint,
            log_consistency_proof=proof,
            update=self.updates.report() if self.updates is not None else None,
        )
        response = self._client.checkin(report.sign(self._key))
        self._accept(report, response, checkpoint, size)
        return response

    def _accept(self, report: VersionReport, response: CheckinResponse, checkpoint: str, size: int) -> None:
        new = replace(
            self._state,
            nonce=response.nonce,
            checkin_interval_seconds=response.checkin_interval_seconds,
            last_checkin_at=int(self._clock()),
            acked_size=size,
        )
        if response.cosigned_checkpoint is not None:
            try:
                self._verify_cosigned(response.cosigned_checkpoint, checkpoint)
            except (AuditLogError, CryptoError, ProtocolError) as e:
                logger.error("refusing the server's cosigned checkpoint: %s", e.diagnostics())
                self.access_log.record("agent.cosignature_invalid", size=size, detail=e.diagnostics()[:MAX_EVENT_TEXT])
            else:
                new = replace(new, cosigned_checkpoint=response.cosigned_checkpoint, cosigned_size=size)
                try:
                    self.access_log.keep_cosigned(response.cosigned_checkpoint)
                except AuditLogError as e:
                    logger.warning("cannot keep the cosigned checkpoint in the access log: %s", e)
        reported = (report.installed_version, report.agent_state)
        changed = reported != (self._state.last_reported_version, self._state.last_reported_state)
        if changed:
            # Logged before the state is saved: after a crash here the entry may repeat, never go missing.
            self.access_log.record(
                "agent.checkin", installed_version=reported[0], agent_state=reported[1], counter=report.counter
            )
            new = replace(new, last_reported_version=reported[0], last_reported_state=reported[1])
        self._set_state(new)

    def _verify_cosigned(self, note: str, sent_checkpoint: str | None) -> None:
        """Raise unless ``note`` is cosigned by the witness key from enrollment (and is what we sent)."""
        if self._state.witness_key is None:
            raise ProtocolError("no witness key is known (enrollment did not provide one)")
        if sent_checkpoint is not None and parse_note(note)[0] != parse_note(sent_checkpoint)[0]:
            raise ProtocolError("the cosigned checkpoint is not the checkpoint this device sent")
        verify_cosignature(note, parse_verifier_key(self._state.witness_key))

    # -- local files ---------------------------------------------------------------------------------

    def _set_state(self, state: AgentState) -> None:
        self._store.save(state)
        self._state = state

    def _installed_version(self) -> str:
        running = self.updates.running_version() if self.updates is not None else None
        if running is not None:
            return running
        path = self.config.version_file
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_SMALL_FILE + 1)
        except OSError as e:
            logger.warning("cannot read version file %s (%s); reporting %r", path, e.strerror, UNKNOWN_VERSION)
            return UNKNOWN_VERSION
        version = raw.decode("utf-8", errors="replace").strip()
        if not version or len(version) > MAX_FIELD or _CONTROL_RE.search(version):
            logger.warning("version file %s does not hold one short line; reporting %r", path, UNKNOWN_VERSION)
            return UNKNOWN_VERSION
        return version


def _acquire_lock(path: os.PathLike[str]) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        os.close(fd)
        raise AgentError(f"another agent is already running on this device root ({path} is locked)") from e
    return fd


def _load_or_create_key(config: AgentConfig) -> tuple[SigningKey, bool]:
    path = config.layout.key_file
    created = False
    if not path.exists():
        SigningKey.generate().save(path)
        created = True
        logger.info("created device key %s", path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise AgentError(f"device key {path} has mode {mode:o}; it must be readable by its owner only (chmod 600)")
    return SigningKey.load(path), created


def run_agent(
    config: AgentConfig, stop_event: threading.Event | None = None, *, http: httpx.Client | None = None
) -> None:
    """Run the agent until ``stop_event`` is set, or, without one, until SIGTERM or SIGINT."""
    stop = stop_event if stop_event is not None else threading.Event()
    with contextlib.ExitStack() as signals:
        if stop_event is None:
            if threading.current_thread() is not threading.main_thread():
                raise AgentError("run_agent needs a stop_event when it does not run on the main thread")
            signals.enter_context(
                stop_on_signals(stop, on_signal=lambda signum: logger.info("received signal %d; stopping", signum))
            )
        with Agent.start(config, http=http) as agent:
            from medsec.agent.remote_link import start_remote_link  # RA-1: off unless remote.json enables it

            link = start_remote_link(config, agent.access_log, stop)
            try:
                agent.run(stop)
            finally:
                if link is not None:
                    stop.set()
                    link.join(timeout=30)
