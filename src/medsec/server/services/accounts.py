"""Organisations, sites, users, roles, logins, second factors, web sessions and API tokens.

Every login, failed login, role change and token creation goes into the audit log
(failures through :class:`AuditedRefusal`, which is logged after the request's
transaction rolled back).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medsec.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound, PermissionDenied, ServiceError
from medsec.server import credentials
from medsec.server.audit import ServerAuditLog
from medsec.server.models import (
    HOSPITAL_ROLES,
    MANUFACTURER_ROLES,
    ApiToken,
    Organization,
    OrgKind,
    Role,
    Site,
    User,
    UserRole,
    WebSession,
)
from medsec.server.principal import Principal
from medsec.server.settings import Settings

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
USERNAME_RE = re.compile(r"^[a-zA-Z0-9._-]{2,64}$")
SESSION_COOKIE_PREFIX = "mss_"
API_TOKEN_PREFIX = "msk_"  # noqa: S105 (a public prefix, not a secret)


class AuditedRefusal(ServiceError):
    """A refusal that must reach the audit log even though the request's transaction rolls back."""

    def __init__(
        self,
        error: ServiceError,
        event_type: str,
        *,
        actor: str | None,
        organization_id: int | None,
        details: dict[str, Any],
    ) -> None:
        super().__init__(error.code, str(error))
        self.status = error.status
        self.event_type = event_type
        self.actor = actor
        self.organization_id = organization_id
        self.details = details


def _now() -> datetime:
    return datetime.now(UTC)


# -- organisations and sites --------------------------------------------------------------------


def create_organization(
    session: Session, audit: ServerAuditLog, actor: Principal | None, *, kind: OrgKind, slug: str, name: str
) -> Organization:
    if actor is not None:
        actor.require_role(Role.MANUFACTURER_ADMIN)
    if not SLUG_RE.match(slug):
        raise InvalidRequest("invalid_slug", "slug must be 2-63 lowercase letters, digits or '-'")
    if session.scalar(select(Organization).where(Organization.slug == slug)):
        raise Conflict("organization_exists", f"an organisation with slug {slug!r} exists")
    if kind is OrgKind.MANUFACTURER and session.scalar(
        select(Organization).where(Organization.kind == OrgKind.MANUFACTURER.value)
    ):
        raise Conflict("manufacturer_exists", "this server already has its manufacturer organisation")
    org = Organization(kind=kind.value, slug=slug, name=name.strip())
    session.add(org)
    session.flush()
    audit.append(
        session,
        "organization.created",
        actor=actor.username if actor else "system",
        organization_id=org.id,
        details={"slug": slug, "kind": kind.value, "name": org.name},
    )
    return org


def get_organization(session: Session, actor: Principal, slug: str) -> Organization:
    org = session.scalar(select(Organization).where(Organization.slug == slug))
    if org is None or not actor.can_see_org(org.id):
        raise NotFound("unknown_organization", "no such organisation is visible to you")
    return org


def list_organizations(session: Session, actor: Principal) -> list[Organization]:
    stmt = select(Organization).order_by(Organization.kind.desc(), Organization.name)
    if not actor.is_manufacturer:
        stmt = stmt.where(Organization.id == actor.organization_id)
    return list(session.scalars(stmt))


def create_site(session: Session, audit: ServerAuditLog, actor: Principal | None, org: Organization, name: str) -> Site:
    if actor is not None and not (
        actor.has_role(Role.MANUFACTURER_ADMIN)
        or (actor.has_role(Role.HOSPITAL_ADMIN) and actor.organization_id == org.id)
    ):
        raise PermissionDenied("role_required", "a manufacturer admin or this hospital's admin adds sites")
    if org.kind != OrgKind.HOSPITAL.value:
        raise InvalidRequest("not_a_hospital", "sites belong to hospitals")
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidRequest("invalid_name", "a site name has 1-200 characters")
    if session.scalar(select(Site).where(Site.organization_id == org.id, Site.name == name)):
        raise Conflict("site_exists", f"site {name!r} exists")
    site = Site(organization_id=org.id, name=name)
    session.add(site)
    session.flush()
    audit.append(
        session,
        "site.created",
        actor=actor.username if actor else "system",
        organization_id=org.id,
        details={"site": name},
    )
    return site


# -- users and roles -----------------------------------------------------------------------------


def _check_roles(org: Organization, roles: set[Role]) -> None:
    allowed = MANUFACTURER_ROLES if org.kind == OrgKind.MANUFACTURER.value else HOSPITAL_ROLES
    wrong = sorted(r.value for r in roles - allowed)
    if wrong:
        raise InvalidRequest("role_not_allowed", f"roles {', '.join(wrong)} do not exist in a {org.kind} organisation")


def _may_manage_users(actor: Principal, org: Organization) -> bool:
    if actor.has_role(Role.MANUFACTURER_ADMIN):
        return True
    return actor.has_role(Role.HOSPITAL_ADMIN) and actor.organization_id == org.id


def create_user(
    session: Session,
    audit: ServerAuditLog,
    actor: Principal | None,
    *,
    org: Organization,
    username: str,
    display_name: str,
    password: str,
    roles: set[Role],
    email: str | None = None,
    locale: str = "en",
    password_hash: str | None = None,
) -> User:
    """Add a user. ``password_hash``, when given, is ``credentials.hash_password(password)`` made
    earlier (the seed reuses its hashes); the password's rules are checked all the same."""
    if actor is not None and not _may_manage_users(actor, org):
        raise PermissionDenied("role_required", "only an admin of this organisation can add users")
    if not USERNAME_RE.match(username):
        raise InvalidRequest("invalid_username", "a username has 2-64 letters, digits, '.', '_' or '-'")
    if len(password) < credentials.MIN_PASSWORD_LENGTH:
        raise InvalidRequest("weak_password", f"a password has at least {credentials.MIN_PASSWORD_LENGTH} characters")
    if locale not in ("en", "ja"):
        raise InvalidRequest("invalid_locale", "locale is 'en' or 'ja'")
    _check_roles(org, roles)
    if session.scalar(select(User).where(User.username == username)):
        raise Conflict("user_exists", f"user {username!r} exists")
    user = User(
        organization_id=org.id,
        username=username,
        display_name=display_name.strip() or username,
        email=email,
        password_hash=password_hash or credentials.hash_password(password),
        locale=locale,
        totp_confirmed=False,
        totp_last_step=0,
        failed_logins=0,
        is_active=True,
    )
    user.role_rows = [UserRole(role=r.value) for r in sorted(roles)]
    session.add(user)
    session.flush()
    audit.append(
        session,
        "user.created",
        actor=actor.username if actor else "system",
        organization_id=org.id,
        details={"user": username, "roles": sorted(r.value for r in roles)},
    )
    return user


def get_user(session: Session, actor: Principal, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not actor.can_see_org(user.organization_id):
        raise NotFound("unknown_user", "no such user is visible to you")
    return user


def list_users(session: Session, actor: Principal) -> list[User]:
    stmt = select(User).order_by(User.username)
    if not actor.is_manufacturer:
        stmt = stmt.where(User.organization_id == actor.organization_id)
    return list(session.scalars(stmt))


def set_roles(session: Session, audit: ServerAuditLog, actor: Principal | None, user: User, roles: set[Role]) -> None:
    if actor is not None:
        if not _may_manage_users(actor, user.organization):
            raise PermissionDenied("role_required", "only an admin of this organisation can change roles")
        if actor.user_id == user.id:
            raise PermissionDenied("self_role_change", "nobody changes their own roles")
    _check_roles(user.organization, roles)
    before = sorted(r.value for r in user.roles)
    user.role_rows = [UserRole(role=r.value) for r in sorted(roles)]
    session.flush()
    audit.append(
        session,
        "user.role_changed",
        actor=actor.username if actor else "system",
        organization_id=user.organization_id,
        details={"user": user.username, "before": before, "after": sorted(r.value for r in roles)},
    )


# -- login and second factor ---------------------------------------------------------------------


@dataclass(frozen=True)
class PasswordLoginResult:
    user: User
    needs_totp: bool  # privileged user with a confirmed second factor
    needs_totp_setup: bool  # privileged user who must enrol a second factor first


def _refuse_login(
    error: ServiceError, username: str, user: User | None, remote: str | None, reason: str
) -> AuditedRefusal:
    return AuditedRefusal(
        error,
        "auth.login_failed",
        actor=username[:64],
        organization_id=user.organization_id if user else None,
        details={"user": username[:64], "reason": reason, "remote": remote},
    )


def record_failed_login(session: Session, settings: Settings, username: str) -> None:
    """Count a failure against the account (own transaction, so it survives the refusal)."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        return
    user.failed_logins += 1
    if user.failed_logins >= settings.login_max_failures:
        user.locked_until = _now() + timedelta(minutes=settings.login_lockout_minutes)
        user.failed_logins = 0


def password_login(
    session: Session, audit: ServerAuditLog, settings: Settings, username: str, password: str, remote: str | None
) -> PasswordLoginResult:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        credentials.burn_password_check(password)
        raise _refuse_login(
            AuthenticationFailed("invalid_credentials", "wrong username or password"),
            username,
            None,
            remote,
            "unknown_user",
        )
    if user.locked_until is not None and user.locked_until > _now():
        raise _refuse_login(
            AuthenticationFailed("account_locked", "too many failed logins; try again later"),
            username,
            user,
            remote,
            "locked",
        )
    if not credentials.password_matches(user.password_hash, password):
        raise _refuse_login(
            AuthenticationFailed("invalid_credentials", "wrong username or password"),
            username,
            user,
            remote,
            "bad_password",
        )
    if not user.is_active:
        raise _refuse_login(
            AuthenticationFailed("account_disabled", "this account is disabled"), username, user, remote, "disabled"
        )
    user.failed_logins = 0
    needs_totp = user.is_privileged and user.totp_confirmed
    needs_setup = user.is_privileged and not user.totp_confirmed
    if not user.is_privileged:
        audit.append(
            session,
            "auth.login",
            actor=user.username,
            organization_id=user.organization_id,
            details={"remote": remote, "mfa": False},
        )
    return PasswordLoginResult(user=user, needs_totp=needs_totp, needs_totp_setup=needs_setup)


def verify_totp_login(
    session: Session, audit: ServerAuditLog, user: User, code: str, remote: str | None, now: datetime | None = None
) -> None:
    """Second step of a privileged login; raises AuditedRefusal on a wrong or replayed code."""
    at = now or _now()
    if user.locked_until is not None and user.locked_until > at:
        raise _refuse_login(
            AuthenticationFailed("account_locked", "too many failed logins; try again later"),
            user.username,
            user,
            remote,
            "locked",
        )
    if user.totp_secret is None or not user.totp_confirmed:
        raise AuthenticationFailed("totp_not_enrolled", "this account has no second factor yet")
    step = credentials.totp_step_for(user.totp_secret, code, at, user.totp_last_step)
    if step is None:
        raise _refuse_login(
            AuthenticationFailed("invalid_totp", "wrong or already used one-time code"),
            user.username,
            user,
            remote,
            "bad_totp",
        )
    user.totp_last_step = step
    audit.append(
        session,
        "auth.login",
        actor=user.username,
        organization_id=user.organization_id,
        details={"remote": remote, "mfa": True},
    )


def begin_totp_enrollment(user: User) -> str:
    """Give the user a new (unconfirmed) TOTP secret, unless one is already confirmed."""
    if user.totp_confirmed:
        raise Conflict("totp_already_enrolled", "a second factor is already set up")
    if user.totp_secret is None:
        user.totp_secret = credentials.new_totp_secret()
    return user.totp_secret


def confirm_totp_enrollment(
    session: Session, audit: ServerAuditLog, user: User, code: str, now: datetime | None = None
) -> None:
    at = now or _now()
    if user.totp_secret is None:
        raise Conflict("totp_not_started", "start the second-factor setup first")
    step = credentials.totp_step_for(user.totp_secret, code, at, user.totp_last_step)
    if step is None:
        # Audited and counted like a wrong login code: enrolment must not become a guessing oracle.
        raise _refuse_login(
            AuthenticationFailed("invalid_totp", "wrong one-time code; check the authenticator's clock"),
            user.username,
            user,
            None,
            "bad_totp_enrollment",
        )
    user.totp_confirmed = True
    user.totp_last_step = step
    audit.append(session, "auth.totp_enrolled", actor=user.username, organization_id=user.organization_id, details={})
    audit.append(
        session, "auth.login", actor=user.username, organization_id=user.organization_id, details={"mfa": True}
    )


def set_locale(session: Session, user: User, locale: str) -> None:
    """The user's preferred portal language (``en`` or ``ja``)."""
    if locale not in ("en", "ja"):
        raise InvalidRequest("invalid_locale", "locale is 'en' or 'ja'")
    if user.locale != locale:
        user.locale = locale
        session.flush()


# -- web sessions --------------------------------------------------------------------------------


def create_web_session(
    session: Session, settings: Settings, user: User, *, mfa_verified: bool
) -> tuple[str, WebSession]:
    secret = credentials.new_secret(SESSION_COOKIE_PREFIX)
    row = WebSession(
        id=credentials.secret_digest(secret),
        user_id=user.id,
        csrf_token=credentials.new_secret(""),
        mfa_verified=mfa_verified,
        created_at=_now(),
        expires_at=_now() + timedelta(hours=settings.session_hours),
    )
    session.add(row)
    session.flush()
    return secret, row


def resolve_web_session(session: Session, cookie: str | None) -> WebSession | None:
    if not cookie or not cookie.startswith(SESSION_COOKIE_PREFIX):
        return None
    row = session.get(WebSession, credentials.secret_digest(cookie))
    if row is None or row.revoked_at is not None or row.expires_at <= _now() or not row.user.is_active:
        return None
    return row


def end_web_session(session: Session, audit: ServerAuditLog, row: WebSession) -> None:
    row.revoked_at = _now()
    audit.append(session, "auth.logout", actor=row.user.username, organization_id=row.user.organization_id, details={})


# -- API tokens ----------------------------------------------------------------------------------


def create_api_token(
    session: Session,
    audit: ServerAuditLog,
    user: User,
    *,
    name: str,
    expires_days: int | None = 90,
    actor: str | None = None,
) -> tuple[str, ApiToken]:
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidRequest("invalid_name", "a token name has 1-100 characters")
    if expires_days is not None and not 1 <= expires_days <= 366:
        raise InvalidRequest("invalid_expiry", "a token expires after 1-366 days")
    secret = credentials.new_secret(API_TOKEN_PREFIX)
    row = ApiToken(
        user_id=user.id,
        name=name,
        token_hash=credentials.secret_digest(secret),
        prefix=secret[: len(API_TOKEN_PREFIX) + 6],
        created_at=_now(),
        expires_at=_now() + timedelta(days=expires_days) if expires_days else None,
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        "token.created",
        actor=actor or user.username,
        organization_id=user.organization_id,
        details={"user": user.username, "token": name, "prefix": row.prefix, "expires_days": expires_days},
    )
    return secret, row


def resolve_api_token(session: Session, secret: str) -> tuple[User, ApiToken]:
    if not secret.startswith(API_TOKEN_PREFIX):
        raise AuthenticationFailed("invalid_token", "not a medsec API token")
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == credentials.secret_digest(secret)))
    if row is None:
        raise AuthenticationFailed("invalid_token", "unknown API token")
    if row.revoked_at is not None:
        raise AuthenticationFailed("token_revoked", "this API token was revoked")
    if row.expires_at is not None and row.expires_at <= _now():
        raise AuthenticationFailed("token_expired", "this API token has expired")
    if not row.user.is_active:
        raise AuthenticationFailed("account_disabled", "the token's account is disabled")
    row.last_used_at = _now()
    return row.user, row


def list_api_tokens(session: Session, user: User) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.created_at)))


def revoke_api_token(session: Session, audit: ServerAuditLog, user: User, token_id: int) -> None:
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise NotFound("unknown_token", "no such token")
    if row.revoked_at is None:
        row.revoked_at = _now()
        audit.append(
            session,
            "token.revoked",
            actor=user.username,
            organization_id=user.organization_id,
            details={"token": row.name, "prefix": row.prefix},
        )
