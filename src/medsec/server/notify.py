"""Notifications through a transactional outbox: e-mail (SMTP) and HMAC-signed webhooks (SM-2).

A notice is written as :class:`OutboxMessage` rows in the same transaction as the change it
reports, one per channel, under a unique idempotency key, so it exists exactly when the change
does and never twice. The background step claims due rows with a lease, sends them, and marks
them sent; a crash between sending and marking makes it send again with the same idempotency key
(``Idempotency-Key`` header, e-mail ``Message-ID``), which is how receivers drop the repeat.

Webhook signature: ``X-Medsec-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any, Protocol

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from medsec.errors import Error
from medsec.server.models_updates import NotificationChannel, OutboxMessage
from medsec.server.settings import Settings

logger = logging.getLogger(__name__)

LEASE = timedelta(minutes=2)
BATCH = 50
WEBHOOK_TIMEOUT = 10.0
SIGNATURE_HEADER = "X-Medsec-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "X-Medsec-Event"


class DeliveryError(Error):
    """A notification could not be delivered this time (it is retried)."""


@dataclass(frozen=True)
class Notice:
    """One message to one channel, as the sender sees it."""

    idempotency_key: str
    event: str
    subject: str
    payload: Mapping[str, Any]
    channel_kind: str
    target: str
    secret: str | None = field(default=None, repr=False)

    def body(self) -> bytes:
        doc = {"event": self.event, "idempotency_key": self.idempotency_key, "subject": self.subject, **self.payload}
        return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


class Channel(Protocol):
    """A way to deliver a notice; raises DeliveryError when it should be retried."""

    def send(self, notice: Notice) -> None: ...


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_webhook_signature(secret: str, header: str, body: bytes, *, now: int, tolerance: int = 300) -> None:
    """What a receiver does: raise DeliveryError unless ``header`` signs ``body`` recently with ``secret``."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError) as e:
        raise DeliveryError("malformed webhook signature header") from e
    if abs(now - ts) > tolerance:
        raise DeliveryError("webhook signature is too old")
    expected = webhook_signature(secret, ts, body).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, given):
        raise DeliveryError("webhook signature does not match")


class WebhookChannel:
    def __init__(self, client: httpx.Client | None = None, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._clock = clock

    def send(self, notice: Notice) -> None:
        if not notice.secret:
            raise DeliveryError("webhook channel has no secret")
        body = notice.body()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: webhook_signature(notice.secret, int(self._clock()), body),
            IDEMPOTENCY_HEADER: notice.idempotency_key,
            EVENT_HEADER: notice.event,
        }
        try:
            if self._client is not None:
                r = self._client.post(notice.target, content=body, headers=headers)
            else:
                with httpx.Client(timeout=WEBHOOK_TIMEOUT, follow_redirects=False) as client:
                    r = client.post(notice.target, content=body, headers=headers)
        except httpx.HTTPError as e:
            raise DeliveryError(f"webhook {notice.target}: {e}") from e
        if not 200 <= r.status_code < 300:
            raise DeliveryError(f"webhook {notice.target}: HTTP {r.status_code}")


class EmailChannel:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def send(self, notice: Notice) -> None:
        s = self._settings
        if not s.smtp_host:
            raise DeliveryError("no SMTP host is configured (MEDSEC_SMTP_HOST)")
        msg = EmailMessage()
        msg["From"] = s.smtp_from
        msg["To"] = notice.target
        msg["Subject"] = notice.subject
        # Derived from the idempotency key, so a repeated delivery has the same Message-ID.
        digest = hashlib.sha256(notice.idempotency_key.encode()).hexdigest()[:32]
        msg["Message-ID"] = make_msgid(idstring=digest, domain="medsec.notify")
        msg["X-Medsec-Idempotency-Key"] = notice.idempotency_key
        msg.set_content(email_text(notice))
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=30) as smtp:
                if s.smtp_starttls:
                    smtp.starttls()
                if s.smtp_username and s.smtp_password:
                    smtp.login(s.smtp_username, s.smtp_password)
                smtp.send_message(msg)
        except (OSError, smtplib.SMTPException) as e:
            raise DeliveryError(f"e-mail to {notice.target}: {e}") from e


def email_text(notice: Notice) -> str:
    p = notice.payload
    lines = [notice.subject, ""]
    for key in ("text_ja", "text_en"):
        if p.get(key):
            lines += [str(p[key]), ""]
    lines.append(json.dumps(dict(p), ensure_ascii=False, indent=2, sort_keys=True))
    return "\n".join(lines) + "\n"


def enqueue(
    session: Session, organization_id: int, *, event: str, key: str, subject: str, payload: Mapping[str, Any]
) -> int:
    """Write one outbox row per channel of the organisation; a key already used is skipped. Returns rows added."""
    added = 0
    for channel in session.scalars(
        select(NotificationChannel).where(NotificationChannel.organization_id == organization_id)
    ):
        idem = f"{key}/ch{channel.id}"
        if session.scalar(select(OutboxMessage.id).where(OutboxMessage.idempotency_key == idem)) is not None:
            continue
        session.add(
            OutboxMessage(
                idempotency_key=idem,
                channel_id=channel.id,
                organization_id=organization_id,
                event=event,
                subject=subject[:300],
                payload=dict(payload),
                status="pending",
                attempts=0,
                next_attempt_at=datetime.now(UTC),
            )
        )
        added += 1
    session.flush()
    return added


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 5 * 2 ** max(0, attempts - 1)))


def deliver_due(
    sessions: sessionmaker[Session],
    settings: Settings,
    channels: Mapping[str, Channel],
    now: datetime | None = None,
) -> int:
    """Send what is due; return how many were sent. Safe to run on several servers at once (leases)."""
    now = now or datetime.now(UTC)
    with sessions.begin() as session:
        due = session.scalars(
            select(OutboxMessage)
            .where(
                OutboxMessage.status == "pending",
                OutboxMessage.next_attempt_at <= now,
                or_(OutboxMessage.locked_until.is_(None), OutboxMessage.locked_until < now),
            )
            .order_by(OutboxMessage.id)
            .limit(BATCH)
        ).all()
        claimed: list[tuple[int, Notice]] = []
        for m in due:
            # The lease: only the server whose UPDATE matched the unlocked row sends it.
            won = session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id == m.id,
                    or_(OutboxMessage.locked_until.is_(None), OutboxMessage.locked_until < now),
                )
                .values(locked_until=now + LEASE)
            )
            if getattr(won, "rowcount", 0):
                claimed.append(
                    (
                        m.id,
                        Notice(
                            m.idempotency_key,
                            m.event,
                            m.subject,
                            m.payload,
                            m.channel.kind,
                            m.channel.target,
                            m.channel.secret,
                        ),
                    )
                )
    sent = 0
    for message_id, notice in claimed:
        channel = channels.get(notice.channel_kind)
        error: str | None = None
        try:
            if channel is None:
                raise DeliveryError(f"no sender for {notice.channel_kind!r} channels")
            channel.send(notice)
        except DeliveryError as e:
            error = e.diagnostics()
        with sessions.begin() as session:
            m = session.get_one(OutboxMessage, message_id)
            m.attempts += 1
            m.locked_until = None
            if error is None:
                m.status = "sent"
                m.sent_at = datetime.now(UTC)
                m.last_error = None
                sent += 1
            else:
                logger.warning("notification %s not delivered (attempt %d): %s", m.idempotency_key, m.attempts, error)
                m.last_error = error[:1000]
                if m.attempts >= settings.notify_max_attempts:
                    m.status = "failed"
                else:
                    m.next_attempt_at = datetime.now(UTC) + _backoff(m.attempts)
    return sent


def default_channels(settings: Settings) -> dict[str, Channel]:
    return {"email": EmailChannel(settings), "webhook": WebhookChannel()}
