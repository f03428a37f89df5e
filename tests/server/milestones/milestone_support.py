"""Setup for the milestone tests: published releases with an SBOM and EOL/EOS dates, a second product."""

from __future__ import annotations

import datetime as dt
from importlib.resources import files
from pathlib import Path

from sqlalchemy import select

from medsec.server.context import ServerContext
from medsec.server.models import Organization, Release, ReleaseStatus, User
from medsec.server.principal import Principal
from medsec.server.seed import MODEL
from medsec.server.services import devices, lifecycle_plans, sboms

DATA = Path(__file__).resolve().parents[2] / "data"
# The one stored copy of the Debian 9 SBOM is the demo's (medsec/server/demo_data/README.md has its source).
SBOM = Path(str(files("medsec.server").joinpath("demo_data/sbom/postgres-11.15-stretch.syft.cdx.xml")))
PRODUCT = MODEL["product"]
OTHER_PRODUCT = "ventilator"
EOL = dt.date(2030, 1, 31)
EOS = dt.date(2031, 1, 31)


def principal(ctx: ServerContext, username: str) -> Principal:
    with ctx.tx() as s:
        user = s.scalar(select(User).where(User.username == username))
        assert user is not None
        return Principal.of(user, mfa_verified=True)


def published_release(
    ctx: ServerContext, version: str, *, product: str = PRODUCT, sbom: bool = True, dates: bool = True
) -> int:
    """A release as the update pipeline leaves it after publishing, with its SBOM and declared EOL/EOS."""
    with ctx.tx() as s:
        if sbom:
            doc = sboms.import_sbom_file(s, ctx.audit, "maker-psirt", product=product, version=version, path=SBOM)
            release = s.get(Release, doc.release_id)
        else:
            release = sboms.ensure_release(s, product, version)
        assert release is not None
        release.status = ReleaseStatus.PUBLISHED.value
        release.published_at = dt.datetime.now(dt.UTC)
        if dates:
            lifecycle_plans.set_release_lifecycle(
                s, ctx.audit, "maker-psirt", release, released_on=dt.date(2026, 1, 1), eol=EOL, eos=EOS
            )
        return release.id


def other_product_at_hospital_a(ctx: ServerContext) -> None:
    """A second product whose only device is at hospital A: hospital B has nothing to do with it."""
    with ctx.tx() as s:
        model = devices.create_model(
            s, ctx.audit, None, product=OTHER_PRODUCT, name="VentiCare 10", hardware_id="vc10-rev-a"
        )
        hospital = s.scalar(select(Organization).where(Organization.slug == "hospital-a"))
        assert hospital is not None
        devices.register_device(
            s, ctx.audit, None, serial="VC10-0001", model=model, hospital=hospital, site=None, token_hours=1
        )
