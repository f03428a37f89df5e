"""Seed data for the demo and the integration tests: a manufacturer, two hospitals, users, devices.

Passwords and TOTP secrets are random: TOTP secrets for every seed, passwords for every
:class:`SeedPasswords` (one per seed unless the caller passes one to several seeds). The caller prints
or stores them.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from medsec.server import credentials
from medsec.server.context import ServerContext
from medsec.server.models import OrgKind, Role
from medsec.server.services import accounts, devices

MANUFACTURER = ("medsec-demo-maker", "Demo Medical Devices K.K.")
HOSPITALS = (
    ("hospital-a", "Sakura General Hospital", ("Main building", "Dialysis centre")),
    ("hospital-b", "Minato University Hospital", ("ICU",)),
)
MODEL = {"product": "infusion-pump", "name": "InfuCare 300 infusion pump", "hardware_id": "ic300-rev-b"}

# username, organisation slug, roles, display name
USERS: tuple[tuple[str, str, frozenset[Role], str], ...] = (
    ("maker-admin", MANUFACTURER[0], frozenset({Role.MANUFACTURER_ADMIN}), "Manufacturer admin"),
    ("maker-release", MANUFACTURER[0], frozenset({Role.RELEASE_ENGINEER}), "Release engineer"),
    ("maker-psirt", MANUFACTURER[0], frozenset({Role.PSIRT}), "Product security (PSIRT)"),
    ("maker-service", MANUFACTURER[0], frozenset({Role.SERVICE_ENGINEER}), "Field service engineer"),
    ("maker-auditor", MANUFACTURER[0], frozenset({Role.AUDITOR}), "Auditor"),
    ("a-admin", "hospital-a", frozenset({Role.HOSPITAL_ADMIN}), "Sakura IT admin"),
    ("a-responsible", "hospital-a", frozenset({Role.HOSPITAL_RESPONSIBLE}), "Sakura responsible person"),
    ("a-auditor", "hospital-a", frozenset({Role.AUDITOR}), "Sakura auditor"),
    ("b-responsible", "hospital-b", frozenset({Role.HOSPITAL_RESPONSIBLE}), "Minato responsible person"),
)

# serial, hospital, site
DEVICES = (
    ("IC300-0001", "hospital-a", "Main building"),
    ("IC300-0002", "hospital-a", "Dialysis centre"),
    ("IC300-0003", "hospital-b", "ICU"),
)


@dataclass(frozen=True)
class SeedUser:
    username: str
    password: str
    totp_secret: str | None
    roles: frozenset[Role]
    org_slug: str

    def totp_now(self) -> str:
        if self.totp_secret is None:
            raise ValueError(f"{self.username} has no second factor")
        return credentials.totp_now(self.totp_secret)


@dataclass(frozen=True)
class SeedDevice:
    serial: str
    hospital: str
    site: str
    hardware_id: str
    enrollment_token: str


@dataclass(frozen=True)
class Seed:
    manufacturer: str
    hospitals: tuple[str, ...]
    users: dict[str, SeedUser]
    devices: tuple[SeedDevice, ...]
    admin_token: str
    tokens: dict[str, str] = field(default_factory=dict)  # username -> API token


@dataclass(frozen=True)
class SeedPasswords:
    """A random password and its argon2id hash for every seed user.

    Hashing is slow on purpose (about 0.1 s a password). Whoever seeds many databases (the test
    suite seeds hundreds) makes these once and passes them to every :func:`seed`.
    """

    passwords: Mapping[str, str]
    hashes: Mapping[str, str]

    @classmethod
    def generate(cls) -> SeedPasswords:
        passwords = {username: secrets.token_urlsafe(12) for username, *_ in USERS}
        return cls(passwords, {u: credentials.hash_password(p) for u, p in passwords.items()})


def seed(ctx: ServerContext, *, passwords: SeedPasswords | None = None) -> Seed:
    """Create the demo organisations, users (privileged ones with a confirmed TOTP), model and devices."""
    prepared = passwords or SeedPasswords.generate()
    users: dict[str, SeedUser] = {}
    tokens: dict[str, str] = {}
    seed_devices: list[SeedDevice] = []
    with ctx.tx() as session:
        maker = accounts.create_organization(
            session, ctx.audit, None, kind=OrgKind.MANUFACTURER, slug=MANUFACTURER[0], name=MANUFACTURER[1]
        )
        orgs = {maker.slug: maker}
        sites = {}
        for slug, name, site_names in HOSPITALS:
            org = accounts.create_organization(session, ctx.audit, None, kind=OrgKind.HOSPITAL, slug=slug, name=name)
            orgs[slug] = org
            for site_name in site_names:
                sites[(slug, site_name)] = accounts.create_site(session, ctx.audit, None, org, site_name)
        for username, org_slug, roles, display in USERS:
            password = prepared.passwords[username]
            user = accounts.create_user(
                session,
                ctx.audit,
                None,
                org=orgs[org_slug],
                username=username,
                display_name=display,
                password=password,
                password_hash=prepared.hashes[username],
                roles=set(roles),
                locale="ja" if org_slug.startswith("hospital") else "en",
            )
            totp_secret = None
            if user.is_privileged:
                totp_secret = credentials.new_totp_secret()
                user.totp_secret = totp_secret
                user.totp_confirmed = True
            token, _row = accounts.create_api_token(
                session, ctx.audit, user, name="seed", expires_days=366, actor="system"
            )
            tokens[username] = token
            users[username] = SeedUser(username, password, totp_secret, roles, org_slug)
        model = devices.create_model(session, ctx.audit, None, **MODEL)
        for serial, hospital, site_name in DEVICES:
            _device, token = devices.register_device(
                session,
                ctx.audit,
                None,
                serial=serial,
                model=model,
                hospital=orgs[hospital],
                site=sites[(hospital, site_name)],
                token_hours=ctx.settings.enrollment_token_hours,
            )
            seed_devices.append(SeedDevice(serial, hospital, site_name, model.hardware_id, token))
        ctx.audit.checkpoint(session)
    return Seed(
        manufacturer=MANUFACTURER[0],
        hospitals=tuple(h[0] for h in HOSPITALS),
        users=users,
        devices=tuple(seed_devices),
        admin_token=tokens["maker-admin"],
        tokens=tokens,
    )
