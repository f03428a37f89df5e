"""Everything a request needs, built once by ``create_app``: settings, database, keys, audit log."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from medsec.auditlog.note import NoteSigner
from medsec.auditlog.witness import MemoryWitnessState, Witness
from medsec.crypto.keys import SigningKey
from medsec.errors import ConfigError
from medsec.reports.signing import ensure_report_key
from medsec.server.audit import ServerAuditLog
from medsec.server.checkin_batch import CheckinBatcher
from medsec.server.db import make_engine, make_session_factory, transaction
from medsec.server.settings import Settings
from medsec.server.witness_state import DeviceLogWitnessState

logger = logging.getLogger(__name__)

AUDIT_KEY_FILE = "audit-log.key"
WITNESS_KEY_FILE = "witness.key"
WITNESS_NAME = "medsec-server-witness"


@dataclass
class ServerContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    audit: ServerAuditLog
    witness_signing_key: SigningKey

    @contextmanager
    def tx(self) -> Iterator[Session]:
        with transaction(self.sessions) as session:
            yield session

    def witness(self, state: DeviceLogWitnessState) -> Witness:
        return Witness(WITNESS_NAME, self.witness_signing_key, state)

    @property
    def witness_vkey(self) -> str:
        return Witness(WITNESS_NAME, self.witness_signing_key, MemoryWitnessState()).vkey

    _checkins: CheckinBatcher | None = field(default=None, init=False, repr=False)
    _checkins_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def checkins(self) -> CheckinBatcher:
        """The process's check-in group committer, started on first use."""
        with self._checkins_lock:
            if self._checkins is None:
                self._checkins = CheckinBatcher(self, self.settings.checkin_batch_max)
            return self._checkins

    def close(self) -> None:
        with self._checkins_lock:
            if self._checkins is not None:
                self._checkins.close()
                self._checkins = None
        self.engine.dispose()


def init_keys(settings: Settings) -> None:
    """Create the server's log, witness and report-signing keys if they do not exist (mode 0600)."""
    for name in (AUDIT_KEY_FILE, WITNESS_KEY_FILE):
        path = settings.keys_dir / name
        if not path.exists():
            SigningKey.generate().save(path)
            logger.info("created %s", path)
    ensure_report_key(settings.keys_dir)


def load_key(settings: Settings, name: str) -> SigningKey:
    path = settings.keys_dir / name
    if not path.exists():
        raise ConfigError(f"{path} does not exist; run 'medsec server init --data-dir {settings.data_dir}' first")
    return SigningKey.load(path)


def build_context(settings: Settings) -> ServerContext:
    engine = make_engine(settings.effective_database_url())
    audit_key = load_key(settings, AUDIT_KEY_FILE)
    return ServerContext(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        audit=ServerAuditLog(settings.log_origin, NoteSigner(settings.log_origin, audit_key)),
        witness_signing_key=load_key(settings, WITNESS_KEY_FILE),
    )
