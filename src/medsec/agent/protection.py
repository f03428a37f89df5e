"""Device protection inside the agent (RL-1, RL-2, RL-3, PA-1, PA-2): allowlist, integrity, ports.

:class:`DeviceProtection` runs the protection parts of :mod:`medsec.protect` for one device and
carries what they find to the device's access log and to the server::

    Engine (fanotify, the configured mount only) ─┐
    IntegrityMonitor (baseline, restore)         ─┼─ sink: bounded queue, drops counted, never blocks
    PortGuard (nftables, interfaces, USB)        ─┘        │
                                                  recorder thread: access log entry (RA-2) + spool
                                                           │
                                                  upload thread: signed batches, persisted seq, backoff

Everything runs on threads of its own, so a slow server or a slow disk never delays a check-in,
and nothing here can stop the agent: a part that cannot run (not root, no fanotify, a refused
policy) becomes an ``agent``/``error`` event saying which protection is off and why.

Signed inputs are verified before use and a refused one never replaces the one in force: the
last accepted protection policy and trust database are kept under ``var/lib/medsec/protection``
with the rollback floors (policy ``version``, trust database ``release_counter``), and are used
again at the next start when the configured file has been replaced by something unsigned.

Events wait for upload in a spool file (JSON lines) so a crash or a long outage loses nothing;
the batch being sent is written down with its ``seq`` before it is signed, so a retry after a
lost answer sends exactly the same bytes (:mod:`medsec.protect.wire`).

The section in ``agent.json``::

    "protection": {
      "enabled": true,
      "product": "infusion-pump",                 # default: update.product
      "mount": ".",                               # the dedicated mount to enforce on (default: the root)
      "policy_file": "etc/medsec/protect-policy.dsse",
      "trust_keys": ["usr/share/medsec/trust/release.pub"],
      "trustdb_file": null,                       # null: the active A/B slot's trust database
      "baseline_file": "etc/medsec/integrity-baseline.dsse",
      "known_good": ["slots/current", "var/lib/medsec/known-good"],
      "port_policy_file": null,                   # the signed port policy (PA-2), or null for none
      "netns": "device",                          # the device's network namespace the guard firewalls,
      "this_namespace": false,                    #   or true to firewall the agent's own namespace
      "sysfs_root": null,
      "integrity_interval_seconds": 300, "port_check_seconds": 30,
      "reload_seconds": 5, "upload_seconds": 5, "report_seconds": 60, "queue_limit": 10000
    }
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsec.agent.access_log import AccessLog
from medsec.agent.client import ServerClient, ServerUnavailable, make_http_client
from medsec.agent.config import AgentConfig
from medsec.agent.schedule import Backoff
from medsec.atomic_file import atomic_write
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import AgentError, CheckinRejected, ConfigError, Error, ProtocolError
from medsec.protect import integrity, trustdb
from medsec.protect.engine import Engine
from medsec.protect.errors import FanotifyError, PolicyError, ProtectError, TrustDatabaseError
from medsec.protect.events import ProtectionEvent
from medsec.protect.policy import Policy, load_policy
from medsec.protect.wire import MAX_EVENTS, MAX_OFF_REASON, OFF, BatchFormatError, EngineState, build_batch

logger = logging.getLogger(__name__)

STATE_DIR = "protection"
STATE_FILE = "state.json"
SPOOL_FILE = "spool.jsonl"
INFLIGHT_FILE = "inflight.json"
KEPT_POLICY = "policy.dsse"
KEPT_TRUSTDB = "trustdb.dsse"
MAX_SIGNED_FILE = 64 * 1024 * 1024
STOP_JOIN_SECONDS = 10.0
_NETNS_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # as ip-netns(8) names under /run/netns
NETNS_DIR = Path("/run/netns")
# Refusals after which the batch can never be accepted as it is: record it and move on.
_FINAL_REFUSALS = frozenset({"bad_signature", "malformed_batch", "bad_event", "device_retired"})
# Refusals that go away by themselves (enrollment pending, the server not knowing us yet).
_WAIT_REFUSALS = frozenset({"device_not_enrolled", "unknown_device"})
_VERBS = {
    "allow": "allowed",
    "deny": "denied",
    "would_deny": "would_deny",
    "learned": "learned",
    "detected": "detected",
    "restored": "restored",
    "quarantined": "quarantined",
    "applied": "applied",
    "drift": "drift",
    "gap": "gap",
    "error": "error",
}
_FIELDS = frozenset(
    {
        "enabled",
        "product",
        "mount",
        "policy_file",
        "trust_keys",
        "trustdb_file",
        "baseline_file",
        "known_good",
        "port_policy_file",
        "netns",
        "this_namespace",
        "sysfs_root",
        "integrity_interval_seconds",
        "port_check_seconds",
        "reload_seconds",
        "upload_seconds",
        "report_seconds",
        "queue_limit",
    }
)


# -- settings ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProtectionConfig:
    """The ``protection`` section of ``agent.json``, paths resolved against the device root."""

    product: str
    mount: Path
    policy_file: Path
    trust_keys: tuple[Path, ...]
    trustdb_file: Path | None = None  # None: the active slot's trust database
    baseline_file: Path | None = None
    known_good: tuple[Path, ...] = ()
    port_policy_file: Path | None = None
    netns: str | None = None  # None with a port policy only when this_namespace is set
    this_namespace: bool = False
    sysfs_root: Path | None = None
    integrity_interval_seconds: int = 300
    port_check_seconds: int = 30
    reload_seconds: int = 5
    upload_seconds: int = 5
    report_seconds: int = 60
    queue_limit: int = 10000


def parse_protection_section(root: Path, value: Any, update_product: str | None = None) -> ProtectionConfig | None:
    """Validate the ``protection`` section; ConfigError names the bad field. None when disabled."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError("field 'protection' must be a JSON object")
    unknown = sorted(set(value) - _FIELDS)
    if unknown:
        raise ConfigError(f"unknown field 'protection.{unknown[0]}' (known: {', '.join(sorted(_FIELDS))})")
    enabled = value.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("field 'protection.enabled' must be true or false")
    if not enabled:
        return None
    product = value.get("product", update_product)
    if not isinstance(product, str) or not product or len(product) > 64:
        raise ConfigError("field 'protection.product' is required (or an 'update.product') and must be a short name")
    keys = value.get("trust_keys")
    if not isinstance(keys, list) or not keys:
        raise ConfigError("field 'protection.trust_keys' must be a non-empty list of key files")
    policy_file = _path(root, value, "policy_file", required=True)
    assert policy_file is not None
    port_policy_file = _path(root, value, "port_policy_file")
    netns, this_namespace = _port_namespace(value, port_policy_file is not None)
    known_good = value.get("known_good", ["slots/current", "var/lib/medsec/known-good"])
    if not isinstance(known_good, list):
        raise ConfigError("field 'protection.known_good' must be a list of folders")
    return ProtectionConfig(
        product=product,
        mount=_path(root, value, "mount") or root,
        policy_file=policy_file,
        trust_keys=tuple(_resolve(root, k, f"protection.trust_keys[{i}]") for i, k in enumerate(keys)),
        trustdb_file=_path(root, value, "trustdb_file"),
        baseline_file=_path(root, value, "baseline_file"),
        known_good=tuple(_resolve(root, k, f"protection.known_good[{i}]") for i, k in enumerate(known_good)),
        port_policy_file=port_policy_file,
        netns=netns,
        this_namespace=this_namespace,
        sysfs_root=_path(root, value, "sysfs_root"),
        integrity_interval_seconds=_seconds(value, "integrity_interval_seconds", 300),
        port_check_seconds=_seconds(value, "port_check_seconds", 30),
        reload_seconds=_seconds(value, "reload_seconds", 5),
        upload_seconds=_seconds(value, "upload_seconds", 5),
        report_seconds=_seconds(value, "report_seconds", 60),
        queue_limit=_seconds(value, "queue_limit", 10000, high=1_000_000),
    )


def _port_namespace(value: dict[str, Any], guarded: bool) -> tuple[str | None, bool]:
    """Where the port guard applies its firewall: a named network namespace, or explicitly this one.

    Without either, a port policy would default-deny the namespace the agent itself runs in (its
    uplink to the server included), so a port policy needs one of them, and never both (PA-2).
    """
    netns = value.get("netns")
    if netns is not None and (not isinstance(netns, str) or not _NETNS_NAME.match(netns)):
        raise ConfigError("field 'protection.netns' must be a network namespace name (letters, digits, '.', '_', '-')")
    this_namespace = value.get("this_namespace", False)
    if not isinstance(this_namespace, bool):
        raise ConfigError("field 'protection.this_namespace' must be true or false")
    if netns is not None and this_namespace:
        raise ConfigError("fields 'protection.netns' and 'protection.this_namespace' exclude each other")
    if guarded and netns is None and not this_namespace:
        raise ConfigError(
            "field 'protection.netns' is required with a port policy (the device's network namespace); "
            "set 'protection.this_namespace': true to firewall the namespace the agent runs in"
        )
    return netns, this_namespace


def _resolve(root: Path, value: Any, name: str) -> Path:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError(f"field {name!r} must be a non-empty path string")
    path = Path(value)
    return path if path.is_absolute() else (root / path)


def _path(root: Path, data: dict[str, Any], name: str, *, required: bool = False) -> Path | None:
    value = data.get(name)
    if value is None:
        if required:
            raise ConfigError(f"field 'protection.{name}' is required")
        return None
    return _resolve(root, value, f"protection.{name}")


def _seconds(data: dict[str, Any], name: str, default: int, high: int = 24 * 3600) -> int:
    value = data.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
        raise ConfigError(f"field 'protection.{name}' must be an integer from 1 to {high}")
    return value


# -- local state: rollback floors, kept documents, the spool -----------------------------------------------


@dataclass
class _State:
    next_seq: int = 1
    next_id: int = 1
    acked_id: int = 0
    policy_version: int = 0
    trustdb_counter: int = 0


class ProtectionStore:
    """``var/lib/medsec/protection``: what must survive a restart, each file replaced atomically."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def load_state(self) -> _State:
        try:
            raw = json.loads((self.dir / STATE_FILE).read_bytes())
        except FileNotFoundError:
            return _State()
        except (OSError, ValueError) as e:
            raise AgentError(f"protection state {self.dir / STATE_FILE} is unreadable: {e}") from e
        if not isinstance(raw, dict):
            raise AgentError(f"protection state {self.dir / STATE_FILE} is not a JSON object")
        state = _State()
        for name in ("next_seq", "next_id", "acked_id", "policy_version", "trustdb_counter"):
            value = raw.get(name, getattr(state, name))
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise AgentError(f"protection state field {name!r} is damaged")
            setattr(state, name, value)
        return state

    def save_state(self, state: _State) -> None:
        data = json.dumps(state.__dict__, sort_keys=True).encode("utf-8")
        atomic_write(self.dir / STATE_FILE, data, mode=0o600)

    def kept(self, name: str) -> bytes | None:
        try:
            return (self.dir / name).read_bytes()
        except FileNotFoundError:
            return None

    def keep(self, name: str, data: bytes) -> None:
        atomic_write(self.dir / name, data, mode=0o600)

    def read_inflight(self) -> dict[str, Any] | None:
        try:
            raw = json.loads((self.dir / INFLIGHT_FILE).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            logger.warning("in-flight protection batch is unreadable (%s); its events are sent again", e)
            return None
        return raw if isinstance(raw, dict) else None

    def write_inflight(self, value: dict[str, Any]) -> None:
        atomic_write(self.dir / INFLIGHT_FILE, json.dumps(value, sort_keys=True).encode("utf-8"), mode=0o600)

    def clear_inflight(self) -> None:
        (self.dir / INFLIGHT_FILE).unlink(missing_ok=True)


class EventSpool:
    """Events waiting for upload: in memory and in an append-only JSON-lines file, each with an id.

    At most ``limit`` events wait; beyond that the oldest are dropped and counted, because a
    device must keep running (and keep logging locally) through a long outage.
    """

    def __init__(self, path: Path, limit: int, first_id: int, acked_id: int) -> None:
        self.path = path
        self.limit = limit
        self.dropped = 0
        self._lock = threading.Lock()
        self._next_id = first_id
        self._pending: deque[tuple[int, ProtectionEvent]] = deque()
        self._load(acked_id)

    def _load(self, acked_id: int) -> None:
        try:
            lines = self.path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                raw = json.loads(line)
                item = (int(raw["id"]), ProtectionEvent.from_json(raw["event"]))
            except (ValueError, KeyError, TypeError, ProtocolError):
                continue  # a torn last line from a crash mid-append
            if item[0] > acked_id:
                self._pending.append(item)
                self._next_id = max(self._next_id, item[0] + 1)
        self._trim()

    @property
    def next_id(self) -> int:
        return self._next_id

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def add(self, events: Sequence[ProtectionEvent]) -> None:
        if not events:
            return
        with self._lock:
            lines = []
            for event in events:
                item = (self._next_id, event)
                self._next_id += 1
                self._pending.append(item)
                lines.append(json.dumps({"id": item[0], "event": event.to_json()}, sort_keys=True))
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, ("\n".join(lines) + "\n").encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            self._trim()

    def _trim(self) -> None:
        while len(self._pending) > self.limit:
            self._pending.popleft()
            self.dropped += 1

    def peek(self, count: int, after: int) -> list[tuple[int, ProtectionEvent]]:
        with self._lock:
            return [item for item in self._pending if item[0] > after][:count]

    def ack(self, last_id: int) -> None:
        """Forget events up to ``last_id`` and rewrite the file with what still waits."""
        with self._lock:
            while self._pending and self._pending[0][0] <= last_id:
                self._pending.popleft()
            text = "".join(json.dumps({"id": i, "event": e.to_json()}, sort_keys=True) + "\n" for i, e in self._pending)
            atomic_write(self.path, text.encode("utf-8"), mode=0o600)


# -- the service ----------------------------------------------------------------------------------------


def _agent_error(rule: str, detail: str) -> ProtectionEvent:
    return ProtectionEvent(category="agent", action="error", rule=rule, detail=detail[:500])


def _agent_applied(rule: str, detail: str) -> ProtectionEvent:
    return ProtectionEvent(category="agent", action="applied", rule=rule, detail=detail[:500])


def log_entry_name(event: ProtectionEvent) -> str:
    """The access-log entry type of an event, e.g. ``protect.exec_denied`` (RA-2)."""
    return f"protect.{event.category}_{_VERBS[event.action]}"


def _read_signed(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SIGNED_FILE + 1)
    except OSError as e:
        raise ProtectError(f"cannot read the {what} {path}: {e.strerror}") from e
    if len(data) > MAX_SIGNED_FILE:
        raise ProtectError(f"the {what} {path} is larger than {MAX_SIGNED_FILE} bytes")
    return data


def _fingerprint(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class DeviceProtection:
    """The protection parts of one device, started and stopped with the agent.

    ``status`` says, per part, ``on`` or why it is off; the same text is in the access log
    (``protect.started``) and, as ``agent``/``error`` events, on the server.
    """

    def __init__(
        self,
        root: Path,
        serial: str,
        hardware_id: str,
        config: ProtectionConfig,
        key: SigningKey,
        access_log: AccessLog,
        client: ServerClient,
        *,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        is_root: Callable[[], bool] = lambda: os.geteuid() == 0,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.root = root
        self.serial = serial
        self.hardware_id = hardware_id
        self.config = config
        self._key = key
        self._log = access_log
        self._client = client
        self._clock = clock
        self._is_root = is_root
        self._rng = rng if rng is not None else random.SystemRandom()
        self.store = ProtectionStore(state_dir / STATE_DIR)
        self._state = self.store.load_state()
        self._inflight = self.store.read_inflight()
        acked = max(self._state.acked_id, int(self._inflight["last_id"]) if self._inflight else 0)
        self.spool = EventSpool(self.store.dir / SPOOL_FILE, config.queue_limit, self._state.next_id, acked)
        self._queue: queue.Queue[ProtectionEvent] = queue.Queue(maxsize=config.queue_limit)
        self._sink_dropped = 0
        self._reported_drops = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._recorded = threading.Condition()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._keys: tuple[VerifyKey, ...] = ()
        self.policy: Policy | None = None
        self.trust: trustdb.TrustDB | None = None
        self.engine: Engine | None = None
        self.monitor: integrity.IntegrityMonitor | None = None
        self._changes: integrity.FanotifyChanges | None = None
        self.status: dict[str, str] = {}
        self.batches_sent = 0
        self._last_report = 0.0
        self._fingerprints: dict[str, tuple[int, int, int, int] | None] = {}
        self._started = False
        self._on_close = on_close

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every part that can run here; never raises for a part that cannot (it is reported)."""
        if self._started:
            return
        self._started = True
        self._spawn(self._record_loop, "medsec-protect-record")
        self._spawn(self._upload_loop, "medsec-protect-upload")
        root_ok = self._is_root()
        if not root_ok:
            self.sink(
                _agent_error(
                    "not_root",
                    "the agent does not run as root: execution allowlisting (fanotify) and the port guard are off",
                )
            )
        try:
            self._keys = tuple(trustdb.read_verify_key(p) for p in self.config.trust_keys)
        except TrustDatabaseError as e:
            self.sink(_agent_error("trust_keys_unusable", e.diagnostics()))
        self._load_documents()
        self.status["allowlist"] = self._start_engine() if root_ok else "off: not root"
        self.status["integrity"] = self._start_integrity(root_ok)
        self.status["ports"] = self._start_ports(root_ok)
        self._spawn(self._reload_loop, "medsec-protect-reload")
        for part, state in self.status.items():
            if state == "on":
                logger.info("protection %s: on", part)
            else:
                logger.warning("protection %s: %s", part, state)
        self._log.record("protect.started", **self.status)

    def stop(self) -> None:
        """Stop every part: the engine answers every outstanding permission event before it closes."""
        if not self._started or self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()
        for thread in self._threads:
            thread.join(timeout=STOP_JOIN_SECONDS)
        if self._changes is not None:
            self._changes.close()
            self._changes = None
        self._record_pending()
        self._log.record("protect.stopped", pending_upload=len(self.spool))
        if self._on_close is not None:
            self._on_close()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=self._guarded, args=(target, name), name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _guarded(self, target: Callable[[], None], name: str) -> None:
        try:
            target()
        except Exception as e:  # a protection thread must never take the agent down
            logger.exception("%s failed", name)
            self.sink(_agent_error("thread_failed", f"{name} stopped: {type(e).__name__}: {e}"))

    # -- events ---------------------------------------------------------------------------------------

    def sink(self, event: ProtectionEvent) -> None:
        """Take an event from any part; never blocks (a full queue drops and counts)."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            with self._lock:
                self._sink_dropped += 1

    def wait_recorded(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate`` holds after an event was recorded (for tools and tests)."""
        with self._recorded:
            return self._recorded.wait_for(predicate, timeout)

    def _record_loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._note_drops()
                continue
            self._record([first, *self._drain_queue()])

    def _drain_queue(self) -> list[ProtectionEvent]:
        events = []
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                return events

    def _record_pending(self) -> None:
        self._note_drops()
        self._record(self._drain_queue())

    def _note_drops(self) -> None:
        with self._lock:
            dropped = self._sink_dropped + self.spool.dropped
            new = dropped - self._reported_drops
            self._reported_drops = dropped
        if new > 0:
            self._record([_agent_error("events_dropped", f"{new} protection events were dropped: queue full")])

    def _record(self, events: list[ProtectionEvent]) -> None:
        if not events:
            return
        try:
            self.spool.add(events)
        except OSError as e:
            logger.error("cannot spool %d protection events: %s", len(events), e)
        for event in events:
            if event.action != "allow":
                self._log.record(log_entry_name(event), **event.to_json())
        with self._recorded:
            self._recorded.notify_all()
        self._wake.set()

    # -- signed documents ------------------------------------------------------------------------------

    def _load_documents(self) -> None:
        """The policy and trust database at start: the configured ones, else the kept ones."""
        self.policy = self._accept_policy(initial=True)
        self.trust = self._accept_trustdb(initial=True)
        self._fingerprints = self._current_fingerprints()

    def _accept_policy(self, *, initial: bool) -> Policy | None:
        try:
            data = _read_signed(self.config.policy_file, "protection policy")
            policy = load_policy(
                data,
                self._keys,
                product=self.config.product,
                model=self.hardware_id,
                min_version=self._state.policy_version,
            )
        except ProtectError as e:
            self.sink(_agent_error("policy_refused", f"{e.diagnostics()}; the policy in force is kept"))
            return self._kept_policy() if initial else None
        if policy != self.policy:
            self.store.keep(KEPT_POLICY, data)
            self._state.policy_version = policy.version
            self.store.save_state(self._state)
            self.sink(_agent_applied("policy_loaded", f"protection policy v{policy.version}, {policy.mode}"))
        return policy

    def _kept_policy(self) -> Policy | None:
        data = self.store.kept(KEPT_POLICY)
        if data is None:
            return None
        try:
            return load_policy(data, self._keys, product=self.config.product, model=self.hardware_id, min_version=0)
        except PolicyError as e:
            self.sink(_agent_error("policy_refused", f"the kept policy is unusable too: {e.diagnostics()}"))
            return None

    def _accept_trustdb(self, *, initial: bool) -> trustdb.TrustDB | None:
        try:
            data, db = self._read_trustdb()
        except ProtectError as e:
            self.sink(_agent_error("trustdb_refused", f"{e.diagnostics()}; the trust database in force is kept"))
            return self._kept_trustdb() if initial else None
        if self.trust is None or db != self.trust:
            self.store.keep(KEPT_TRUSTDB, data)
            self._state.trustdb_counter = max(self._state.trustdb_counter, db.release_counter)
            self.store.save_state(self._state)
            self.sink(_agent_applied("trustdb_loaded", f"{db.product} {db.version} counter {db.release_counter}"))
        return db

    def _read_trustdb(self) -> tuple[bytes, trustdb.TrustDB]:
        path = self.config.trustdb_file
        if path is None:
            # The floor is the committed slot's release, not the highest ever seen: after a failed
            # health check the device legitimately rolls back to the committed release.
            db = trustdb.ActiveTrustDB(self.root / "slots", self._keys, self.config.product).reload()
            return _read_signed(self._trust_source(), "trust database"), db
        data = _read_signed(path, "trust database")
        db = trustdb.load_trustdb(
            data, self._keys, product=self.config.product, min_counter=self._state.trustdb_counter
        )
        return data, db

    def _kept_trustdb(self) -> trustdb.TrustDB | None:
        data = self.store.kept(KEPT_TRUSTDB)
        if data is None:
            return None
        try:
            return trustdb.load_trustdb(data, self._keys, product=self.config.product, min_counter=0)
        except TrustDatabaseError as e:
            self.sink(_agent_error("trustdb_refused", f"the kept trust database is unusable too: {e.diagnostics()}"))
            return None

    def _trust_source(self) -> Path:
        if self.config.trustdb_file is not None:
            return self.config.trustdb_file
        return self.root / "slots" / "current" / ".medsec-slot" / "trustdb.json"

    def _current_fingerprints(self) -> dict[str, tuple[int, int, int, int] | None]:
        return {"policy": _fingerprint(self.config.policy_file), "trustdb": _fingerprint(self._trust_source())}

    def _reload_loop(self) -> None:
        while not self._stop.wait(self.config.reload_seconds):
            self.reload()

    def reload(self) -> None:
        """Look at the policy and trust database files again; a refused one leaves the old in force."""
        now = self._current_fingerprints()
        changed = {name for name, fp in now.items() if fp != self._fingerprints.get(name)}
        self._fingerprints = now
        if "trustdb" in changed:
            db = self._accept_trustdb(initial=False)
            if db is not None and db is not self.trust:
                self.trust = db
                if self.engine is not None:
                    self.engine.set_trust(db)
        if "policy" in changed:
            policy = self._accept_policy(initial=False)
            if policy is not None and policy != self.policy:
                self.policy = policy
                if self.engine is not None:
                    self.engine.close()
                    self.engine = None
                    self.status["allowlist"] = self._start_engine()

    # -- the parts -------------------------------------------------------------------------------------

    def _start_engine(self) -> str:
        if self.policy is None or self.trust is None:
            missing = "protection policy" if self.policy is None else "trust database"
            why = f"off: no verified {missing}"
            self.sink(_agent_error("allowlist_off", f"execution allowlisting is {why}"))
            return why
        mount = self.config.mount
        try:
            engine = Engine(mount, self.policy, self.trust, on_event=self.sink)
            engine.start()
        except FanotifyError as e:
            self.sink(_agent_error("fanotify_unavailable", f"execution allowlisting is off: {e.diagnostics()}"))
            return "off: fanotify unavailable"
        except ProtectError as e:
            self.sink(_agent_error("mount_not_dedicated", f"execution allowlisting is off: {e.diagnostics()}"))
            return "off: the mount is not a dedicated one"
        self.engine = engine
        return "on"

    def _start_integrity(self, root_ok: bool) -> str:
        path = self.config.baseline_file
        if path is None:
            return "off: no baseline configured"
        try:
            baseline = integrity.load_baseline(_read_signed(path, "integrity baseline"), self._keys)
        except ProtectError as e:
            self.sink(_agent_error("baseline_refused", f"integrity monitoring is off: {e.diagnostics()}"))
            return "off: baseline refused"
        if baseline.ignored:
            self.sink(
                _agent_error(
                    "baseline_slot_paths_ignored",
                    f"the baseline lists {len(baseline.ignored)} path(s) in the A/B slots, which updates replace; "
                    f"they are not monitored (rebuild the baseline without them): {', '.join(baseline.ignored)}",
                )
            )
        self.monitor = integrity.IntegrityMonitor(
            self.root,
            baseline,
            integrity.KnownGood(list(self.config.known_good)),
            quarantine_dir=self.store.dir.parent / "quarantine",
            on_event=self.sink,
            interval=float(self.config.integrity_interval_seconds),
        )
        how = "on"
        if root_ok:
            try:
                self._changes = integrity.FanotifyChanges(self.config.mount)
            except FanotifyError as e:
                self.sink(_agent_error("integrity_polling", f"change notifications are off: {e.diagnostics()}"))
                how = "on (schedule only)"
        else:
            how = "on (schedule only: not root)"
        monitor, changes = self.monitor, self._changes
        self._spawn(lambda: monitor.run(self._stop, changes, poll=0.2), "medsec-protect-integrity")
        return how

    def _start_ports(self, root_ok: bool) -> str:
        path = self.config.port_policy_file
        if path is None:
            return "off: no port policy configured"
        if not root_ok:
            return "off: not root"
        netns = self.config.netns
        if netns is not None and not (NETNS_DIR / netns).exists():
            why = f"network namespace {netns!r} does not exist"
            self.sink(_agent_error("port_netns_missing", f"the port guard is off: {why} (ip netns list)"))
            return f"off: {why}"
        from medsec.protect.drift import PortGuard
        from medsec.protect.ports import PolicyStore

        store = PolicyStore(self.store.dir, self._keys, self.hardware_id)
        try:
            policy = store.install(_read_signed(path, "port policy"))
        except (ProtectError, OSError) as e:
            detail = e.diagnostics() if isinstance(e, Error) else str(e)
            self.sink(_agent_error("port_policy_refused", f"{detail}; the installed port policy is kept"))
            try:
                kept = store.current()
            except ProtectError:
                kept = None
            if kept is None:
                return "off: port policy refused"
            policy = kept
        guard = PortGuard(
            policy,
            netns=netns,  # None only with an explicit this_namespace
            sysfs_root=self.config.sysfs_root,
            state_path=self.store.dir / "port-drift.json",
        )
        self._spawn(lambda: self._port_loop(guard), "medsec-protect-ports")
        return "on"

    def _port_loop(self, guard: Any) -> None:
        try:
            for event in guard.apply():
                self.sink(event)
        except ProtectError as e:
            self.sink(_agent_error("port_policy_not_applied", e.diagnostics()))
        while not self._stop.wait(self.config.port_check_seconds):
            for event in guard.check():
                self.sink(event)

    # -- upload ----------------------------------------------------------------------------------------

    def engine_state(self) -> EngineState:
        """What produced the batch: the engine's mode, or ``off`` with the reason it is not running."""
        policy = self.policy
        version = str(policy.version) if policy is not None else "none"
        trust = self.trust.version[:64] if self.trust is not None else None
        if self.engine is not None and policy is not None:
            return EngineState(policy.mode, version, trust)
        return EngineState(OFF, version, trust, off_reason=self._off_reason())

    def _off_reason(self) -> str:
        """The allowlist status without its ``off:`` prefix ("not root", "fanotify unavailable"…)."""
        status = self.status.get("allowlist")
        if status is None:
            return "starting" if not self._stop.is_set() else "stopped"
        if status == "on":
            return "stopped" if self._stop.is_set() else "restarting with a new policy"
        reason = status.removeprefix("off:").strip()
        return (reason or status)[:MAX_OFF_REASON]

    def _upload_loop(self) -> None:
        backoff = Backoff(1.0, 60.0, self._rng)
        delay = 0.0
        while not self._stop.is_set():
            if delay > 0:
                self._stop.wait(delay)
            else:
                self._wake.wait(self.config.upload_seconds)
                self._stop.wait(0.2)  # let a burst of events gather into one batch
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.upload_once()
                backoff.reset()
                delay = 0.0
            except (ServerUnavailable, _RetryLater) as e:
                delay = backoff.next_delay()
                logger.info("protection events not sent (%s); retrying in %.0f s", e, delay)

    def upload_once(self) -> bool:
        """Send the in-flight batch or the next one; True when a batch was accepted."""
        if self._inflight is None:
            due = time.monotonic() - self._last_report >= self.config.report_seconds
            items = self.spool.peek(MAX_EVENTS, self._state.acked_id)
            if not items and not due:
                return False
            self._inflight = self._new_inflight(items, self._state.next_seq)
        return self._send_inflight()

    def _new_inflight(self, items: list[tuple[int, ProtectionEvent]], seq: int) -> dict[str, Any]:
        while True:
            batch = build_batch(
                self.serial,
                seq,
                int(self._clock()),
                [e for _, e in items],
                self.engine_state(),
                self.engine.metrics.snapshot() if self.engine is not None else None,
            )
            try:
                body, signature = batch.sign(self._key)
                break
            except BatchFormatError as e:
                if e.code != "batch_too_large" or len(items) <= 1:
                    raise
                items = items[: len(items) // 2]
        last_id = items[-1][0] if items else self._state.acked_id
        inflight = {
            "seq": seq,
            "last_id": last_id,
            "events": [e.to_json() for _, e in items],
            "body": base64.b64encode(body).decode("ascii"),
            "signature": signature,
        }
        # Written before sending: a retry after a crash or a lost answer sends these very bytes.
        self._state.next_seq = seq + 1
        self._state.next_id = self.spool.next_id
        self.store.save_state(self._state)
        self.store.write_inflight(inflight)
        return inflight

    def _rebuild(self, seq: int) -> None:
        inflight = self._inflight
        assert inflight is not None
        events = [ProtectionEvent.from_json(e) for e in inflight["events"]]
        ids = list(range(int(inflight["last_id"]) - len(events) + 1, int(inflight["last_id"]) + 1))
        self._inflight = self._new_inflight(list(zip(ids, events, strict=True)), seq)
        self._inflight["last_id"] = inflight["last_id"]
        self.store.write_inflight(self._inflight)

    def _send_inflight(self) -> bool:
        inflight = self._inflight
        assert inflight is not None
        body = base64.b64decode(inflight["body"])
        try:
            self._client.send_protection_events(self.serial, body, inflight["signature"])
        except CheckinRejected as e:
            return self._refused(e)
        self._done(int(inflight["last_id"]))
        self.batches_sent += 1
        self._last_report = time.monotonic()
        return True

    def _refused(self, e: CheckinRejected) -> bool:
        inflight = self._inflight
        assert inflight is not None
        if e.code == "stale_batch":
            self._rebuild(int(inflight["seq"]))  # never accepted: the same seq, signed again with the time now
            raise _RetryLater(f"clock: {e}")
        if e.code == "replayed_batch":
            self._rebuild(self._state.next_seq)
            raise _RetryLater(f"sequence: {e}")
        if e.code in _WAIT_REFUSALS:
            raise _RetryLater(e.code)
        if e.code in _FINAL_REFUSALS or e.code == "batch_too_large":
            logger.error("the server refused a protection batch for good: %s", e.diagnostics())
            self._log.record("protect.upload_refused", code=e.code, seq=inflight["seq"], events=len(inflight["events"]))
            self._done(int(inflight["last_id"]))
            return False
        raise _RetryLater(e.code)

    def _done(self, last_id: int) -> None:
        self._state.acked_id = max(self._state.acked_id, last_id)
        self.store.save_state(self._state)
        self.store.clear_inflight()
        self._inflight = None
        self.spool.ack(self._state.acked_id)


class _RetryLater(Error):
    """The batch stays in flight; try again after the backoff delay."""


# -- wiring into the agent --------------------------------------------------------------------------------


def start_protection(agent_config: AgentConfig, key: SigningKey, access_log: AccessLog) -> DeviceProtection:
    """Build and start the service with its own HTTP client (uploads never wait behind a check-in)."""
    config = agent_config.protection
    if config is None:
        raise ConfigError("agent.json has no enabled 'protection' section")
    http = make_http_client(agent_config.ca_file)
    service = DeviceProtection(
        agent_config.root,
        agent_config.serial,
        agent_config.hardware_id,
        config,
        key,
        access_log,
        ServerClient(agent_config.server_url, http),
        state_dir=agent_config.layout.state_dir,
        on_close=http.close,
    )
    try:
        service.start()
    except BaseException:
        service.stop()
        http.close()
        raise
    return service
