"""The periodic update work: re-sign online roles, mirror releases, advance campaigns, assemble the
milestone packages whose EOL/EOS date has come (SM-4), send notices.

Each part runs in its own transaction, so one failing part does not hold back the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from medsec.errors import Error
from medsec.server.context import ServerContext
from medsec.server.notify import Channel, default_channels, deliver_due
from medsec.server.services.milestones import assemble_due
from medsec.server.services.update_campaigns import advance_all
from medsec.server.services.updates import UpdateTrust, load_update_trust, maintain_repositories, sync_releases

logger = logging.getLogger(__name__)


class UpdateRuntime:
    """The server's update keys (loaded lazily, re-read while incomplete) and notification senders."""

    def __init__(self, ctx: ServerContext, channels: Mapping[str, Channel] | None = None) -> None:
        self.ctx = ctx
        self.channels = channels if channels is not None else default_channels(ctx.settings)
        self._trust: UpdateTrust | None = None
        self._loaded_at = 0.0
        self._failed = False
        self._lock = threading.Lock()

    def trust(self) -> UpdateTrust:
        with self._lock:
            if self._trust is None or (not self._complete(self._trust) and self._keys_appeared()):
                self._failed = False
                try:
                    self._trust = load_update_trust(self.ctx.settings)
                except Error as e:
                    logger.error("cannot load the update keys: %s", e.diagnostics())
                    self._trust = UpdateTrust(None, None, None)
                    self._failed = True
                self._loaded_at = time.monotonic()
            return self._trust

    @staticmethod
    def _complete(trust: UpdateTrust) -> bool:
        return trust.director is not None and trust.image_online is not None

    def _keys_appeared(self) -> bool:
        """Keys copied in after start are picked up (a cheap stat, rate-limited when they stay broken)."""
        s = self.ctx.settings
        present = (s.tuf_online_keys_dir / "image-snapshot.key").is_file() or (
            s.tuf_online_keys_dir / "director-targets.key"
        ).is_file()
        return present and (not self._failed or time.monotonic() - self._loaded_at > 30.0)

    def reload(self) -> None:
        with self._lock:
            self._trust = None

    def step(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        ctx = self.ctx
        trust = self.trust()
        repo_dir = ctx.settings.repo_dir
        for name, work in (
            ("repository upkeep", lambda s: maintain_repositories(s, ctx.audit, repo_dir, trust.image_online, now)),
            ("release sync", lambda s: sync_releases(s, ctx.audit, repo_dir, now)),
            ("campaigns", lambda s: advance_all(s, ctx.audit, now)),
            ("milestone packages", lambda s: assemble_due(s, ctx.audit, now=now)),
        ):
            try:
                with ctx.tx() as session:
                    work(session)
            except Exception:
                logger.exception("update background step: %s failed", name)
        try:
            deliver_due(ctx.sessions, ctx.settings, self.channels, now)
        except Exception:
            logger.exception("update background step: notifications failed")
