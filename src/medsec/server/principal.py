"""Who is calling, and what they may see (tenant isolation lives here)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select

from medsec.errors import PermissionDenied
from medsec.server.models import Device, OrgKind, Role, User


@dataclass(frozen=True)
class Principal:
    user_id: int
    username: str
    organization_id: int
    org_kind: OrgKind
    roles: frozenset[Role]
    mfa_verified: bool

    @classmethod
    def of(cls, user: User, *, mfa_verified: bool) -> Principal:
        return cls(
            user_id=user.id,
            username=user.username,
            organization_id=user.organization_id,
            org_kind=OrgKind(user.organization.kind),
            roles=user.roles,
            mfa_verified=mfa_verified,
        )

    @property
    def is_manufacturer(self) -> bool:
        return self.org_kind is OrgKind.MANUFACTURER

    def has_role(self, *roles: Role) -> bool:
        return bool(self.roles & set(roles))

    def require_role(self, *roles: Role) -> None:
        if not self.has_role(*roles):
            names = ", ".join(r.value for r in roles)
            raise PermissionDenied("role_required", f"this needs one of the roles: {names}")

    def can_see_org(self, organization_id: int | None) -> bool:
        """The manufacturer sees every hospital; a hospital sees only itself."""
        return self.is_manufacturer or organization_id == self.organization_id

    def scope_devices(self, stmt: Select[Device]) -> Select[Device]:
        if self.is_manufacturer:
            return stmt
        return stmt.where(Device.hospital_id == self.organization_id)
