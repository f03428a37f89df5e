"""Server-rendered portal for the manufacturer and the hospitals (Japanese and English, no JavaScript).

Routes only speak HTTP: they check the web session and the CSRF token, call a service, and render a
template. Tenant scope comes from the services (``Principal``); templates never filter data.

Sign-in (PA-1): password, then for privileged roles a TOTP code (or first the TOTP enrolment). Until the
second factor is verified the session reaches only the second-factor pages and logout.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote, urlsplit

from babel.support import Translations
from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session

from medsec.errors import AuditLogError, InvalidRequest, PermissionDenied, ServiceError
from medsec.server import credentials, i18n
from medsec.server.context import ServerContext
from medsec.server.i18n import N_
from medsec.server.models import OrgKind, Role, User, WebSession
from medsec.server.principal import Principal
from medsec.server.services import accounts, audit_view, devices
from medsec.server.services.accounts import AuditedRefusal

logger = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

SESSION_COOKIE = "medsec_session"
LOGIN_CSRF_COOKIE = "medsec_login_csrf"
TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_LANDING = "/devices"
LANG_COOKIE_SECONDS = 365 * 24 * 3600
CHECKINS_SHOWN = 20
CHECKPOINTS_SHOWN = 10
AUDIT_ENTRIES_SHOWN = 50
TOKEN_EXPIRY_CHOICES = (30, 90, 180, 365)
MAX_NEXT = 2000

# The portal has no scripts, so the policy can forbid them outright.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

ROLE_LABELS = {
    Role.MANUFACTURER_ADMIN: N_("Manufacturer administrator"),
    Role.RELEASE_ENGINEER: N_("Release engineer"),
    Role.PSIRT: N_("Product security (PSIRT)"),
    Role.SERVICE_ENGINEER: N_("Field service engineer"),
    Role.HOSPITAL_ADMIN: N_("Hospital administrator"),
    Role.HOSPITAL_RESPONSIBLE: N_("Hospital responsible person"),
    Role.AUDITOR: N_("Auditor"),
}

DEVICE_STATUS_LABELS = {
    "pending": N_("Waiting for enrollment"),
    "active": N_("Active"),
    "retired": N_("Retired"),
}

# Service refusals people see in the portal; anything else shows the service's own English text.
SERVICE_MESSAGES = {
    "invalid_credentials": N_("Wrong username or password."),
    "account_locked": N_("Too many failed sign-in attempts. Try again later."),
    "account_disabled": N_("This account is disabled."),
    "invalid_totp": N_("Wrong or already used one-time code. Wait for the next code and try again."),
    "totp_not_enrolled": N_("This account has no second factor yet."),
    "totp_already_enrolled": N_("A second factor is already set up."),
    "totp_not_started": N_("Start the second-factor setup first."),
    "unknown_device": N_("There is no such device, or you may not see it."),
    "unknown_organization": N_("There is no such hospital, or you may not see it."),
    "unknown_token": N_("There is no such token."),
    "invalid_name": N_("A token name has 1 to 100 characters."),
    "invalid_expiry": N_("Choose how long the token stays valid."),
    "role_required": N_("Your role does not allow this."),
    "mfa_required": N_("Sign in with your second factor first."),
    "csrf_failed": N_("The form has expired or did not come from this site. Reload the page and try again."),
}


# -- app wiring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortalUi:
    """One Jinja environment per language, so concurrent requests never share an installed catalog."""

    environments: dict[str, Environment]
    translations: dict[str, Translations]

    def gettext(self, language: str, message: str) -> str:
        return str(self.translations[language].gettext(message))


def build_ui(templates_dir: Path = TEMPLATES_DIR, locale_dir: Path = i18n.LOCALE_DIR) -> PortalUi:
    translations = i18n.load_catalogs(locale_dir)
    environments: dict[str, Environment] = {}
    for language, catalog in translations.items():
        env = Environment(
            loader=FileSystemLoader(templates_dir),
            autoescape=select_autoescape(default=True, default_for_string=True),
            extensions=["jinja2.ext.i18n"],
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.install_gettext_translations(catalog, newstyle=True)  # type: ignore[attr-defined]
        environments[language] = env
    return PortalUi(environments=environments, translations=translations)


def mount_static(app: FastAPI) -> None:
    """Serve the portal's CSS, load its templates and catalogs, and route its early exits."""
    app.state.portal_ui = build_ui()
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(PortalExit, _portal_exit)


class PortalExit(Exception):
    """Leave a route early with a finished response (a redirect to login, a 403 page).

    Raised inside ``ctx.tx()`` so the transaction rolls back; a refusal it carries is audited afterwards.
    """

    def __init__(self, response: Response, refusal: AuditedRefusal | None = None) -> None:
        super().__init__(response.status_code)
        self.response = response
        self.refusal = refusal


def _portal_exit(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PortalExit)
    if exc.refusal is not None:
        _record_refusal(_ctx(request), exc.refusal)
    return exc.response


def _record_refusal(ctx: ServerContext, refusal: AuditedRefusal) -> None:
    from medsec.server.app import record_refusal  # app imports this module

    record_refusal(ctx, refusal)


def _ctx(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


def _ui(request: Request) -> PortalUi:
    ui: PortalUi = request.app.state.portal_ui
    return ui


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


# -- who is asking -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Viewer:
    """What the page header needs about the signed-in user (plain values, usable after the transaction)."""

    username: str
    display_name: str
    organization: str
    organization_slug: str
    is_manufacturer: bool
    roles: tuple[str, ...]
    privileged: bool
    mfa_complete: bool
    csrf_token: str
    locale: str


@dataclass
class Auth:
    row: WebSession
    user: User
    principal: Principal
    viewer: Viewer
    language: str


@dataclass
class Notice:
    kind: str  # "error" or "success"; also the CSS class
    text: str


@dataclass
class PageState:
    """What every page render needs besides its own data."""

    language: str
    viewer: Viewer | None
    here: str  # where the language switch returns to
    notices: list[Notice] = field(default_factory=list)


def _anonymous_language(request: Request) -> str:
    return i18n.choose_language(request.cookies.get(i18n.LANG_COOKIE), None, request.headers.get("accept-language"))


def _here(request: Request) -> str:
    query = request.url.query
    return safe_next(request.url.path + (f"?{query}" if query else ""), "/")


def _return_to(request: Request) -> str:
    """Where to come back to after signing in: this page, unless it was a form post."""
    return _here(request) if request.method == "GET" else DEFAULT_LANDING


def _session_is_complete(row: WebSession, user: User) -> bool:
    # Checked on every request, so a role granted mid-session still asks for the second factor.
    return row.mfa_verified or not user.is_privileged


def _current_session(request: Request, db: Session) -> tuple[WebSession, User] | None:
    row = accounts.resolve_web_session(db, request.cookies.get(SESSION_COOKIE))
    if row is None:
        return None
    return row, row.user


def _signed_in(request: Request, db: Session, *, second_factor_pending_ok: bool = False) -> Auth:
    """The caller's session, or a PortalExit to the login (or second-factor) page."""
    found = _current_session(request, db)
    if found is None:
        expired = SESSION_COOKIE in request.cookies
        raise PortalExit(_redirect_to_login(request, expired=expired))
    row, user = found
    complete = _session_is_complete(row, user)
    if not complete:
        if user.locked_until is not None and user.locked_until > datetime.now(UTC):
            # Guessing codes on a half-open session counts toward the same lockout as passwords.
            raise PortalExit(_redirect_to_login(request, expired=False, reason="locked"))
        if not second_factor_pending_ok:
            target = "/login/totp" if user.totp_confirmed else "/account/totp"
            raise PortalExit(_redirect(f"{target}?next={quote(_return_to(request), safe='')}"))
    language = i18n.choose_language(
        request.cookies.get(i18n.LANG_COOKIE), user.locale, request.headers.get("accept-language")
    )
    viewer = Viewer(
        username=user.username,
        display_name=user.display_name,
        organization=user.organization.name,
        organization_slug=user.organization.slug,
        is_manufacturer=user.organization.kind == OrgKind.MANUFACTURER.value,
        roles=tuple(sorted(r.value for r in user.roles)),
        privileged=user.is_privileged,
        mfa_complete=complete,
        csrf_token=row.csrf_token,
        locale=user.locale,
    )
    principal = Principal.of(user, mfa_verified=row.mfa_verified)
    return Auth(row=row, user=user, principal=principal, viewer=viewer, language=language)


def _check_csrf(request: Request, auth: Auth, given: str) -> None:
    if given and hmac.compare_digest(auth.row.csrf_token.encode(), given.encode()):
        return
    refusal = AuditedRefusal(
        PermissionDenied("csrf_failed", "CSRF token missing or wrong"),
        "auth.csrf_refused",
        actor=auth.user.username,
        organization_id=auth.user.organization_id,
        details={"path": request.url.path, "remote": _remote(request)},
    )
    state = PageState(language=auth.language, viewer=auth.viewer, here="/")
    raise PortalExit(_csrf_refused_page(request, state), refusal)


def _csrf_refused_page(request: Request, state: PageState) -> HTMLResponse:
    ui = _ui(request)
    return _render(
        request,
        "error.html",
        state,
        status_code=403,
        title=ui.gettext(state.language, N_("Request refused")),
        message=ui.gettext(state.language, SERVICE_MESSAGES["csrf_failed"]),
    )


# -- responses -----------------------------------------------------------------------------------------


def safe_next(value: str | None, default: str = DEFAULT_LANDING) -> str:
    """A local path to go to after login or a language switch; anything else gives ``default``.

    Refuses absolute and scheme-relative URLs (``//host``, ``/\\host``) so the portal cannot be used
    as an open redirect.
    """
    if not value or len(value) > MAX_NEXT or not value.startswith("/") or value.startswith("//"):
        return default
    if "\\" in value or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def _with_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    response.headers["Cache-Control"] = "no-store"
    return response


def _redirect(url: str) -> Response:
    return _with_headers(RedirectResponse(url, status_code=303))


def _redirect_to_login(request: Request, *, expired: bool, reason: str | None = None) -> Response:
    target = f"/login?next={quote(_return_to(request), safe='')}"
    if expired:
        target += "&expired=1"
    if reason:
        target += f"&reason={reason}"
    response = _redirect(target)
    if SESSION_COOKIE in request.cookies:
        response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _render(
    request: Request,
    template: str,
    state: PageState,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    ui = _ui(request)
    env = ui.environments[state.language]

    def role_label(role: str) -> str:
        return ui.gettext(state.language, ROLE_LABELS.get(Role(role), role))

    def status_label(status: str) -> str:
        return ui.gettext(state.language, DEVICE_STATUS_LABELS.get(status, status))

    html = env.get_template(template).render(
        lang=state.language,
        viewer=state.viewer,
        here=state.here,
        notices=state.notices,
        dates=i18n.DateFormatter(state.language, _ctx(request).settings.display_zone),
        now=datetime.now(UTC),
        role_label=role_label,
        status_label=status_label,
        **context,
    )
    response = HTMLResponse(html, status_code=status_code)
    _with_headers(response)
    return response


def _service_notice(ui: PortalUi, language: str, exc: ServiceError) -> Notice:
    known = SERVICE_MESSAGES.get(exc.code)
    return Notice("error", ui.gettext(language, known) if known else str(exc))


def _error_page(request: Request, state: PageState, exc: ServiceError) -> HTMLResponse:
    ui = _ui(request)
    notice = _service_notice(ui, state.language, exc)
    title = ui.gettext(state.language, N_("Not found") if exc.status == 404 else N_("Request refused"))
    return _render(request, "error.html", state, status_code=exc.status, title=title, message=notice.text)


def _set_session_cookie(request: Request, response: Response, secret: str) -> None:
    settings = _ctx(request).settings
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        max_age=settings.session_hours * 3600,
        path="/",
        httponly=True,
        samesite="lax",
        secure=settings.secure_cookies,
    )


def _set_language_cookie(request: Request, response: Response, language: str) -> None:
    response.set_cookie(
        i18n.LANG_COOKIE,
        language,
        max_age=LANG_COOKIE_SECONDS,
        path="/",
        httponly=True,
        samesite="lax",
        secure=_ctx(request).settings.secure_cookies,
    )


@contextmanager
def _unit_of_work(request: Request) -> Iterator[Session]:
    with _ctx(request).tx() as db:
        yield db


FormStr = Annotated[str, Form()]

Result = TypeVar("Result")
Refused = Callable[[Auth, ServiceError], Response]


def form_action(
    request: Request,
    csrf_token: str,
    action: Callable[[Session, Auth], Result],
    *,
    done: Callable[[Result], Response],
    refused: Refused,
) -> Response:
    """The shape of a portal form post: sign in, check the CSRF token, run ``action`` in one transaction,
    then answer with ``done(result)`` (usually a redirect, so a reload does not post again).

    A ServiceError from ``action`` rolls the transaction back, reaches the audit log if it is an
    AuditedRefusal (in its own transaction), and is answered by ``refused(auth, error)``. Only the plain
    values of that ``auth`` (``viewer``, ``language``) are safe to use: its rows left with the transaction.
    """
    ctx = _ctx(request)
    auth: Auth | None = None
    try:
        with ctx.tx() as db:
            auth = _signed_in(request, db)
            _check_csrf(request, auth, csrf_token)
            result = action(db, auth)
    except ServiceError as e:
        if isinstance(e, AuditedRefusal):
            _record_refusal(ctx, e)
        assert auth is not None  # signing in and the CSRF check leave with PortalExit, never ServiceError
        return refused(auth, e)
    return done(result)


def form_on_page(
    request: Request,
    csrf_token: str,
    here: str,
    action: Callable[[Session, Auth], Result],
    *,
    done: Callable[[Result], Response],
    page: Callable[[Session, Auth, PageState, ServiceError], Response],
) -> Response:
    """A form post whose refusal shows the form's page again, with the error and what was typed.

    Sign in, check the CSRF token, run ``action`` in a savepoint, then answer with ``done(result)``.
    A ServiceError rolls back only the savepoint: 403 and 404 get the error page, anything else gets
    ``page(db, auth, state, error)``, rendered in the same transaction with the error as a notice. (A
    refusal that must reach the audit log needs :func:`form_action`, which records it.)
    """
    with _ctx(request).tx() as db:
        auth = _signed_in(request, db)
        _check_csrf(request, auth, csrf_token)
        state = PageState(language=auth.language, viewer=auth.viewer, here=here)
        try:
            with db.begin_nested():
                result = action(db, auth)
        except ServiceError as e:
            if e.status in (403, 404):
                return _error_page(request, state, e)
            state.notices.append(Notice("error", str(e)))
            return page(db, auth, state, e)
    return done(result)


def refused_with_error_page(request: Request, here: str) -> Refused:
    """A ``refused`` for forms whose refusal is a page of its own (status and text from the error)."""

    def page(auth: Auth, error: ServiceError) -> Response:
        state = PageState(language=auth.language, viewer=auth.viewer, here=here)
        return _error_page(request, state, error)

    return page


# -- language and landing ------------------------------------------------------------------------------


@router.get("/lang/{code}")
def switch_language(request: Request, code: str, next_: Annotated[str, Query(alias="next")] = "/") -> Response:
    response = _redirect(safe_next(next_, "/"))
    language = i18n.supported(code)
    if language is not None:
        _set_language_cookie(request, response, language)
    return response


@router.get("/")
def home(request: Request) -> Response:
    with _unit_of_work(request) as db:
        found = _current_session(request, db)
    if found is None:
        return _redirect("/login")
    return _redirect(DEFAULT_LANDING)


# -- login, second factor, logout ------------------------------------------------------------------------


def _login_csrf(request: Request) -> str:
    existing = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if 32 <= len(existing) <= 64 and existing.replace("-", "").replace("_", "").isalnum():
        return existing
    return secrets.token_urlsafe(32)


def _login_page(
    request: Request,
    language: str,
    *,
    next_path: str,
    username: str = "",
    notices: list[Notice],
    status_code: int = 200,
) -> Response:
    token = _login_csrf(request)
    state = PageState(language=language, viewer=None, here=_here(request), notices=notices)
    response = _render(
        request, "login.html", state, status_code=status_code, csrf_token=token, next=next_path, username=username
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        path="/login",
        httponly=True,
        samesite="strict",
        secure=_ctx(request).settings.secure_cookies,
    )
    return response


@router.get("/login")
def login_form(
    request: Request, next_: Annotated[str, Query(alias="next")] = DEFAULT_LANDING, expired: int = 0, reason: str = ""
) -> Response:
    next_path = safe_next(next_)
    with _unit_of_work(request) as db:
        found = _current_session(request, db)
        if found is not None and _session_is_complete(*found):
            return _redirect(next_path)
    ui = _ui(request)
    language = _anonymous_language(request)
    notices = []
    if expired:
        notices.append(Notice("error", ui.gettext(language, N_("Your session has ended. Please sign in again."))))
    if reason == "locked":
        notices.append(Notice("error", ui.gettext(language, SERVICE_MESSAGES["account_locked"])))
    return _login_page(request, language, next_path=next_path, notices=notices)


@router.post("/login")
def login_submit(
    request: Request,
    username: FormStr = "",
    password: FormStr = "",
    csrf_token: FormStr = "",
    next_: Annotated[str, Form(alias="next")] = DEFAULT_LANDING,
) -> Response:
    ui = _ui(request)
    ctx = _ctx(request)
    language = _anonymous_language(request)
    next_path = safe_next(next_)
    cookie_token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not (cookie_token and csrf_token and hmac.compare_digest(cookie_token.encode(), csrf_token.encode())):
        return _csrf_refused_page(request, PageState(language=language, viewer=None, here="/login"))
    username = username.strip()[:64]
    try:
        with ctx.tx() as db:
            result = accounts.password_login(db, ctx.audit, ctx.settings, username, password, _remote(request))
            previous = _current_session(request, db)
            if previous is not None:
                previous[0].revoked_at = datetime.now(UTC)  # a login never continues an older session
            secret, _row = accounts.create_web_session(db, ctx.settings, result.user, mfa_verified=False)
    except AuditedRefusal as e:
        _record_refusal(ctx, e)
        notices = [_service_notice(ui, language, e)]
        return _login_page(request, language, next_path=next_path, username=username, notices=notices, status_code=401)
    except ServiceError as e:
        notices = [_service_notice(ui, language, e)]
        return _login_page(request, language, next_path=next_path, username=username, notices=notices, status_code=401)
    if result.needs_totp:
        target = f"/login/totp?next={quote(next_path, safe='')}"
    elif result.needs_totp_setup:
        target = f"/account/totp?next={quote(next_path, safe='')}"
    else:
        target = next_path
    response = _redirect(target)
    _set_session_cookie(request, response, secret)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


def _upgrade_session(request: Request, db: Session, auth: Auth) -> str:
    """Replace a half-open session with a fully verified one (a new cookie, so a fixed one is useless)."""
    auth.row.revoked_at = datetime.now(UTC)
    secret, _row = accounts.create_web_session(db, _ctx(request).settings, auth.user, mfa_verified=True)
    return secret


@router.get("/login/totp")
def totp_form(request: Request, next_: Annotated[str, Query(alias="next")] = DEFAULT_LANDING) -> Response:
    next_path = safe_next(next_)
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db, second_factor_pending_ok=True)
        if auth.viewer.mfa_complete:
            return _redirect(next_path)
        if not auth.user.totp_confirmed:
            return _redirect(f"/account/totp?next={quote(next_path, safe='')}")
    state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
    return _render(request, "login_totp.html", state, next=next_path)


@router.post("/login/totp")
def totp_submit(
    request: Request,
    code: FormStr = "",
    csrf_token: FormStr = "",
    next_: Annotated[str, Form(alias="next")] = DEFAULT_LANDING,
) -> Response:
    ctx = _ctx(request)
    next_path = safe_next(next_)
    auth: Auth | None = None
    try:
        with ctx.tx() as db:
            auth = _signed_in(request, db, second_factor_pending_ok=True)
            _check_csrf(request, auth, csrf_token)
            if auth.viewer.mfa_complete:
                return _redirect(next_path)
            accounts.verify_totp_login(db, ctx.audit, auth.user, code[:32], _remote(request))
            secret = _upgrade_session(request, db, auth)
    except ServiceError as e:
        if isinstance(e, AuditedRefusal):
            _record_refusal(ctx, e)
        assert auth is not None  # _signed_in exits with PortalExit, not ServiceError
        state = PageState(language=auth.language, viewer=auth.viewer, here="/login/totp")
        state.notices.append(_service_notice(_ui(request), auth.language, e))
        return _render(request, "login_totp.html", state, status_code=401, next=next_path)
    response = _redirect(next_path)
    _set_session_cookie(request, response, secret)
    return response


@router.get("/account/totp")
def totp_enrollment_form(request: Request, next_: Annotated[str, Query(alias="next")] = DEFAULT_LANDING) -> Response:
    next_path = safe_next(next_)
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db, second_factor_pending_ok=True)
        if auth.user.totp_confirmed or not auth.user.is_privileged:
            return _redirect(next_path if auth.viewer.mfa_complete else f"/login/totp?next={quote(next_path, safe='')}")
        secret = accounts.begin_totp_enrollment(auth.user)
    state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
    return _enrollment_page(request, state, auth, secret, next_path)


def _enrollment_page(
    request: Request, state: PageState, auth: Auth, secret: str, next_path: str, status_code: int = 200
) -> Response:
    return _render(
        request,
        "totp_enroll.html",
        state,
        status_code=status_code,
        secret=secret,
        grouped_secret=" ".join(secret[i : i + 4] for i in range(0, len(secret), 4)),
        uri=credentials.totp_uri(secret, auth.viewer.username),
        next=next_path,
    )


@router.post("/account/totp")
def totp_enrollment_submit(
    request: Request,
    code: FormStr = "",
    csrf_token: FormStr = "",
    next_: Annotated[str, Form(alias="next")] = DEFAULT_LANDING,
) -> Response:
    ctx = _ctx(request)
    next_path = safe_next(next_)
    auth: Auth | None = None
    try:
        with ctx.tx() as db:
            auth = _signed_in(request, db, second_factor_pending_ok=True)
            _check_csrf(request, auth, csrf_token)
            if not auth.user.is_privileged:
                return _redirect(next_path)
            accounts.confirm_totp_enrollment(db, ctx.audit, auth.user, code[:32])
            secret = _upgrade_session(request, db, auth)
    except ServiceError as e:
        if isinstance(e, AuditedRefusal):
            _record_refusal(ctx, e)
        assert auth is not None
        with ctx.tx() as db:
            user = db.get_one(User, auth.principal.user_id)
            pending = None if user.totp_confirmed else user.totp_secret
        state = PageState(language=auth.language, viewer=auth.viewer, here="/account/totp")
        if pending is None:
            return _error_page(request, state, e)
        state.notices.append(_service_notice(_ui(request), auth.language, e))
        return _enrollment_page(request, state, auth, pending, next_path, status_code=422)
    response = _redirect(next_path)
    _set_session_cookie(request, response, secret)
    return response


@router.post("/logout")
def logout(request: Request, csrf_token: FormStr = "") -> Response:
    ctx = _ctx(request)
    with ctx.tx() as db:
        auth = _signed_in(request, db, second_factor_pending_ok=True)
        _check_csrf(request, auth, csrf_token)
        accounts.end_web_session(db, ctx.audit, auth.row)
    response = _redirect("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- devices ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceRow:
    serial: str
    model: str
    product: str
    hardware_id: str
    hospital: str
    hospital_slug: str
    site: str | None
    status: str
    installed_version: str | None
    agent_state: str | None
    last_seen: datetime | None
    enrolled_at: datetime | None


@dataclass(frozen=True)
class HospitalGroup:
    name: str
    slug: str
    devices: list[DeviceRow]


def _device_row(device: Any) -> DeviceRow:
    return DeviceRow(
        serial=device.serial,
        model=device.model.name,
        product=device.model.product,
        hardware_id=device.model.hardware_id,
        hospital=device.hospital.name,
        hospital_slug=device.hospital.slug,
        site=device.site.name if device.site else None,
        status=device.status,
        installed_version=device.installed_version,
        agent_state=device.agent_state,
        last_seen=device.last_seen_at,
        enrolled_at=device.enrolled_at,
    )


@router.get("/devices")
def devices_page(request: Request, hospital: str = "") -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        try:
            selected = accounts.get_organization(db, auth.principal, hospital) if hospital else None
        except ServiceError as e:
            return _error_page(request, state, e)
        rows = [_device_row(d) for d in devices.list_devices(db, auth.principal, hospital=selected)]
        hospitals = [
            (o.slug, o.name)
            for o in accounts.list_organizations(db, auth.principal)
            if o.kind == OrgKind.HOSPITAL.value
        ]
    groups: dict[str, HospitalGroup] = {}
    for row in sorted(rows, key=lambda r: (r.hospital, r.serial)):
        groups.setdefault(row.hospital_slug, HospitalGroup(row.hospital, row.hospital_slug, [])).devices.append(row)
    return _render(
        request,
        "devices.html",
        state,
        groups=list(groups.values()),
        device_count=len(rows),
        hospitals=hospitals,
        selected=selected.slug if selected else "",
    )


@dataclass(frozen=True)
class CheckinRow:
    counter: int
    received_at: datetime
    installed_version: str
    agent_state: str
    signature: str


@dataclass(frozen=True)
class LogCheckpointRow:
    size: int
    root_hash: str
    received_at: datetime
    note: str


@router.get("/devices/{serial}")
def device_page(request: Request, serial: str) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        state = PageState(language=auth.language, viewer=auth.viewer, here=_here(request))
        try:
            device = devices.get_device(db, auth.principal, serial[:100])
            checkins = devices.list_checkins(db, auth.principal, device.serial, CHECKINS_SHOWN)
        except ServiceError as e:
            return _error_page(request, state, e)
        row = _device_row(device)
        checkin_rows = [
            CheckinRow(c.counter, c.received_at, c.installed_version, c.agent_state, c.signature) for c in checkins
        ]
        checkpoints = [
            LogCheckpointRow(cp.size, cp.root_hash, cp.received_at, cp.note)
            for cp in devices.list_log_checkpoints(db, auth.principal, device.serial, CHECKPOINTS_SHOWN)
        ]
    return _render(request, "device.html", state, device=row, checkins=checkin_rows, checkpoints=checkpoints)


# -- audit log (RA-2) ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRow:
    index: int
    time: datetime
    event_type: str
    actor: str | None
    organization: str | None
    details: str


@dataclass(frozen=True)
class VerifyOutcome:
    ok: bool
    size: int = 0
    root_hash: str = ""
    checkpoints_checked: int = 0
    problem: str = ""


def _audit_scope(principal: Principal) -> int | None:
    return None if principal.is_manufacturer else principal.organization_id


def _details_text(body: bytes) -> str:
    try:
        details = json.loads(body).get("details") or {}
    except (ValueError, AttributeError):
        return ""
    return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(details.items()))


def _audit_page(request: Request, auth: Auth, outcome: VerifyOutcome | None) -> Response:
    ctx = _ctx(request)
    with ctx.tx() as db:
        org_names = {o.id: o.name for o in accounts.list_organizations(db, auth.principal)}
        entries = [
            AuditRow(
                index=e.idx,
                time=e.created_at,
                event_type=e.event_type,
                actor=e.actor,
                organization=org_names.get(e.organization_id) if e.organization_id is not None else None,
                details=_details_text(e.body),
            )
            for e in reversed(audit_view.latest_entries(db, _audit_scope(auth.principal), AUDIT_ENTRIES_SHOWN))
        ]
        checkpoint = ctx.audit.checkpoint(db)
        checkpoint_note, checkpoint_size = checkpoint.note, checkpoint.size
    state = PageState(language=auth.language, viewer=auth.viewer, here="/audit")
    return _render(
        request,
        "audit.html",
        state,
        entries=entries,
        checkpoint_note=checkpoint_note,
        checkpoint_size=checkpoint_size,
        log_key=ctx.audit.vkey,
        may_verify=audit_view.may_verify(auth.principal),
        outcome=outcome,
    )


@router.get("/audit")
def audit_page(request: Request) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
    return _audit_page(request, auth, None)


@router.get("/audit/export.json")
def audit_export(request: Request) -> Response:
    ctx = _ctx(request)
    with ctx.tx() as db:
        auth = _signed_in(request, db)
        export = audit_view.export_entries(db, ctx.audit, _audit_scope(auth.principal))
    response = JSONResponse(export, headers={"Content-Disposition": 'attachment; filename="medsec-audit-export.json"'})
    return _with_headers(response)


@router.post("/audit/verify")
def audit_verify(request: Request, csrf_token: FormStr = "") -> Response:
    ctx = _ctx(request)
    with ctx.tx() as db:
        auth = _signed_in(request, db)
        _check_csrf(request, auth, csrf_token)
    principal = auth.principal
    if not audit_view.may_verify(principal):
        state = PageState(language=auth.language, viewer=auth.viewer, here="/audit")
        return _error_page(request, state, PermissionDenied("role_required", "verification needs an auditor role"))
    try:
        report = audit_view.verify_and_record(ctx.tx, ctx.audit, principal)
    except AuditLogError as e:
        return _audit_page(request, auth, VerifyOutcome(ok=False, problem=e.diagnostics()))
    outcome = VerifyOutcome(
        ok=True, size=report.size, root_hash=report.root_hash.hex(), checkpoints_checked=report.checkpoints_checked
    )
    return _audit_page(request, auth, outcome)


# -- account -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRow:
    id: int
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked: bool


def _account_page(
    request: Request,
    auth: Auth,
    *,
    notices: list[Notice] | None = None,
    new_token: str | None = None,
    status_code: int = 200,
) -> Response:
    with _unit_of_work(request) as db:
        user = db.get_one(User, auth.principal.user_id)
        tokens = [
            TokenRow(t.id, t.name, t.prefix, t.created_at, t.expires_at, t.last_used_at, t.revoked_at is not None)
            for t in accounts.list_api_tokens(db, user)
        ]
        totp_enrolled = user.totp_confirmed
        locale = user.locale
    state = PageState(language=auth.language, viewer=auth.viewer, here="/account", notices=notices or [])
    return _render(
        request,
        "account.html",
        state,
        status_code=status_code,
        tokens=tokens,
        new_token=new_token,
        totp_enrolled=totp_enrolled,
        saved_locale=locale,
        expiry_choices=TOKEN_EXPIRY_CHOICES,
        languages=[("en", "English"), ("ja", "日本語")],
    )


@router.get("/account")
def account_page(request: Request, saved: int = 0, revoked: int = 0) -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
    ui = _ui(request)
    notices = []
    if saved:
        notices.append(Notice("success", ui.gettext(auth.language, N_("Your language preference was saved."))))
    if revoked:
        notices.append(Notice("success", ui.gettext(auth.language, N_("The token was revoked."))))
    return _account_page(request, auth, notices=notices)


@router.post("/account")
def account_save(request: Request, locale: FormStr = "", csrf_token: FormStr = "") -> Response:
    with _unit_of_work(request) as db:
        auth = _signed_in(request, db)
        _check_csrf(request, auth, csrf_token)
        language = i18n.supported(locale)
        if language is not None:
            accounts.set_locale(db, auth.user, language)
    if language is None:
        notice = Notice("error", _ui(request).gettext(auth.language, N_("Choose English or Japanese.")))
        return _account_page(request, auth, notices=[notice], status_code=422)
    response = _redirect("/account?saved=1")
    _set_language_cookie(request, response, language)
    return response


@router.post("/account/tokens")
def account_create_token(
    request: Request, name: FormStr = "", expires_days: FormStr = "90", csrf_token: FormStr = ""
) -> Response:
    ctx = _ctx(request)
    ui = _ui(request)
    auth: Auth | None = None
    try:
        with ctx.tx() as db:
            auth = _signed_in(request, db)
            _check_csrf(request, auth, csrf_token)
            if auth.user.is_privileged and not auth.row.mfa_verified:
                raise PermissionDenied("mfa_required", "creating a token needs a session verified with TOTP")
            days = int(expires_days) if expires_days.isdigit() else 0
            if days not in TOKEN_EXPIRY_CHOICES:
                raise InvalidRequest("invalid_expiry", "choose one of the offered expiry periods")
            secret, _row = accounts.create_api_token(db, ctx.audit, auth.user, name=name, expires_days=days)
    except ServiceError as e:
        assert auth is not None
        return _account_page(request, auth, notices=[_service_notice(ui, auth.language, e)], status_code=e.status)
    notice = Notice("success", ui.gettext(auth.language, N_("Token created. Copy it now: it is not shown again.")))
    return _account_page(request, auth, notices=[notice], new_token=secret, status_code=201)


@router.post("/account/tokens/{token_id}/revoke")
def account_revoke_token(request: Request, token_id: int, csrf_token: FormStr = "") -> Response:
    ctx = _ctx(request)
    auth: Auth | None = None
    try:
        with ctx.tx() as db:
            auth = _signed_in(request, db)
            _check_csrf(request, auth, csrf_token)
            accounts.revoke_api_token(db, ctx.audit, auth.user, token_id)
    except ServiceError as e:
        assert auth is not None
        notices = [_service_notice(_ui(request), auth.language, e)]
        return _account_page(request, auth, notices=notices, status_code=e.status)
    return _redirect("/account?revoked=1")
