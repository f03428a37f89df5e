"""End-of-support planning per release (SM-4; handbook 表2; IMDRF N70).

Component support comes from the imported endoflife.date products with overrides (each carrying evidence);
the release's EOL/EOS are the manufacturer's declared dates on ``releases`` or derived from its components.
Alerts are due at T-24, T-12 and T-6 months; a notice that reaches hospitals less than two years ahead warns.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medsec.advisories.model import Lang
from medsec.errors import InvalidRequest, NotFound
from medsec.lifecycle.endoflife import ProductLifecycle, parse_product
from medsec.lifecycle.errors import LifecycleError
from medsec.lifecycle.overrides import Evidence, LifecycleOverride, OverrideSet
from medsec.lifecycle.plan import (
    CompensatingControl,
    LegacyPlan,
    LifecyclePlan,
    LocalizedText,
    ReleaseLifecycle,
    TimelineStep,
    alerts_due,
    build_legacy_plan,
    check_notice_lead_time,
    component_support,
    plan_release,
)
from medsec.sbom.model import Component, ComponentKind
from medsec.server.audit import ServerAuditLog
from medsec.server.models import Device, DeviceModel, Release, Role
from medsec.server.models_vulns import (
    LifecycleOverrideRow,
    LifecycleProduct,
    PublishedAdvisory,
    ReleaseLifecycleRow,
)
from medsec.server.principal import Principal
from medsec.server.services import advisory_publishing, sboms
from medsec.server.settings import Settings


def products(session: Session) -> list[ProductLifecycle]:
    return [parse_product(p.text, source=f"db:{p.product}") for p in session.scalars(select(LifecycleProduct))]


def _support_end(text: str | None) -> dt.date | bool | None:
    if text is None:
        return None
    if text in ("true", "false"):
        return text == "true"
    return dt.date.fromisoformat(text)


def overrides(session: Session) -> OverrideSet:
    items = []
    for row in session.scalars(select(LifecycleOverrideRow)):
        items.append(
            LifecycleOverride(
                product=row.product,
                cycle=row.cycle,
                evidence=Evidence(row.evidence_author, row.recorded_at, row.evidence_source, row.evidence_note),
                eol=_support_end(row.eol),
                eoas=_support_end(row.eoas),
                eoes=_support_end(row.eoes),
            )
        )
    return OverrideSet(tuple(items))


def add_override(
    session: Session,
    audit: ServerAuditLog,
    actor: str,
    *,
    product: str,
    cycle: str,
    evidence_source: str,
    evidence_note: str = "",
    eol: str | None = None,
    eoas: str | None = None,
    eoes: str | None = None,
) -> LifecycleOverrideRow:
    now = dt.datetime.now(dt.UTC)
    # Validate through the library's own rules before storing.
    try:
        LifecycleOverride(
            product,
            cycle,
            Evidence(actor, now, evidence_source, evidence_note),
            _support_end(eol),
            _support_end(eoas),
            _support_end(eoes),
        )
    except (LifecycleError, ValueError) as e:
        raise InvalidRequest("invalid_override", f"override for {product} {cycle}: {e}") from e
    row = session.scalar(
        select(LifecycleOverrideRow).where(LifecycleOverrideRow.product == product, LifecycleOverrideRow.cycle == cycle)
    )
    if row is None:
        row = LifecycleOverrideRow(product=product, cycle=cycle, evidence_author=actor, evidence_source=evidence_source)
        session.add(row)
    row.eol, row.eoas, row.eoes = eol, eoas, eoes
    row.evidence_author, row.evidence_source, row.evidence_note, row.recorded_at = (
        actor,
        evidence_source,
        evidence_note,
        now,
    )
    session.flush()
    audit.append(
        session,
        "lifecycle.override",
        actor=actor,
        organization_id=None,
        details={"product": product, "cycle": cycle, "eol": eol, "eoas": eoas, "eoes": eoes, "source": evidence_source},
    )
    return row


def remove_override(session: Session, audit: ServerAuditLog, actor: str, *, product: str, cycle: str) -> None:
    """Drop an override, so the imported endoflife.date dates apply again; the audit log keeps what it said."""
    row = session.scalar(
        select(LifecycleOverrideRow).where(LifecycleOverrideRow.product == product, LifecycleOverrideRow.cycle == cycle)
    )
    if row is None:
        raise NotFound("unknown_override", f"no lifecycle override for {product} {cycle}")
    removed = override_summary(row)
    session.delete(row)
    session.flush()
    audit.append(session, "lifecycle.override_removed", actor=actor, organization_id=None, details=removed)


def list_overrides(session: Session) -> list[LifecycleOverrideRow]:
    return list(
        session.scalars(select(LifecycleOverrideRow).order_by(LifecycleOverrideRow.product, LifecycleOverrideRow.cycle))
    )


def override_summary(row: LifecycleOverrideRow) -> dict[str, Any]:
    return {
        "product": row.product,
        "cycle": row.cycle,
        "eol": row.eol,
        "eoas": row.eoas,
        "eoes": row.eoes,
        "evidence": {
            "author": row.evidence_author,
            "source": row.evidence_source,
            "note": row.evidence_note,
            "recorded_at": row.recorded_at.isoformat(),
        },
    }


def set_release_lifecycle(
    session: Session,
    audit: ServerAuditLog,
    actor: str,
    release: Release,
    *,
    released_on: dt.date,
    eol: dt.date | None = None,
    eos: dt.date | None = None,
    notice_date: dt.date | None = None,
    extended_support: list[str] | None = None,
) -> ReleaseLifecycleRow:
    row = session.get(ReleaseLifecycleRow, release.id)
    if row is None:
        row = ReleaseLifecycleRow(release_id=release.id, released_on=released_on)
        session.add(row)
    row.released_on = released_on
    row.notice_date = notice_date
    row.extended_support = extended_support or []
    row.updated_by, row.updated_at = actor, dt.datetime.now(dt.UTC)
    release.eol_date, release.eos_date = eol, eos
    session.flush()
    audit.append(
        session,
        "lifecycle.release_dates",
        actor=actor,
        organization_id=None,
        details={
            "release": f"{release.product} {release.version}",
            "released_on": released_on.isoformat(),
            "eol": eol.isoformat() if eol else None,
            "eos": eos.isoformat() if eos else None,
            "notice_date": notice_date.isoformat() if notice_date else None,
        },
    )
    return row


def _with_os_identifier(component: Component, known: list[ProductLifecycle]) -> Component:
    """An operating-system component named only by its os-release ID gets the product's CPE.

    syft and similar tools describe the OS as ``debian`` / ``9`` without a CPE or purl; endoflife.date uses the
    same IDs as product names, so the product's CPE (with the version) identifies it for the lifecycle lookup.
    """
    if component.kind is not ComponentKind.OPERATING_SYSTEM or component.cpe or component.purl:
        return component
    for product in known:
        if product.product == component.name.lower() and product.category == "os" and product.cpes:
            base = next((c for c in product.cpes if c.startswith("cpe:2.3:")), None)
            if base is not None and component.version:
                return replace(component, cpe=f"{base}:{component.version}:*:*:*:*:*:*:*")
    return component


def plan_for(session: Session, release: Release) -> LifecyclePlan:
    row = session.get(ReleaseLifecycleRow, release.id)
    if row is None:
        raise InvalidRequest("no_lifecycle", f"{release.product} {release.version} has no lifecycle data yet")
    known = products(session)
    ovr = overrides(session)
    extended = set(row.extended_support)
    supports = []
    for listed in sboms.release_components(session, release.id):
        c = _with_os_identifier(listed, known)
        try:
            supports.append(component_support(c, known, ovr, extended_support=c.ref in extended or c.name in extended))
        except LifecycleError:
            continue  # a component outside the lifecycle data: listed as without dates by the plan
    model = session.scalar(select(DeviceModel).where(DeviceModel.product == release.product).limit(1))
    return plan_release(
        ReleaseLifecycle(
            model=model.name if model else release.product,
            release=release.version,
            released_on=row.released_on,
            components=tuple(supports),
            declared_eol=release.eol_date,
            declared_eos=release.eos_date,
        )
    )


def save_legacy_plan(
    session: Session,
    audit: ServerAuditLog,
    actor: Principal,
    release: Release,
    *,
    controls: list[dict[str, str]],
    replacement_path: dict[str, str],
    timeline: list[dict[str, str]],
    today: dt.date,
) -> LegacyPlan:
    actor.require_role(Role.PSIRT, Role.MANUFACTURER_ADMIN)
    if not actor.is_manufacturer:
        raise NotFound("unknown_release", "no such release is visible to you")
    try:
        plan = plan_for(session, release)
        legacy = build_legacy_plan(
            plan,
            controls=tuple(
                CompensatingControl(
                    c["id"],
                    LocalizedText(c["title_ja"], c["title_en"]),
                    LocalizedText(c["ja"], c["en"]),
                    c.get("requirement"),
                )
                for c in controls
            ),
            replacement_path=LocalizedText(replacement_path["ja"], replacement_path["en"]),
            timeline=tuple(
                TimelineStep(dt.date.fromisoformat(s["on"]), LocalizedText(s["ja"], s["en"])) for s in timeline
            ),
            created_on=today,
        )
    except (LifecycleError, ValueError) as e:
        raise InvalidRequest("invalid_legacy_plan", str(e)) from e
    except KeyError as e:
        raise InvalidRequest("invalid_legacy_plan", f"missing field {e}") from e
    row = session.get(ReleaseLifecycleRow, release.id)
    assert row is not None  # plan_for raised otherwise
    row.legacy_plan = {
        "controls": controls,
        "replacement_path": replacement_path,
        "timeline": timeline,
        "created_on": today.isoformat(),
    }
    audit.append(
        session,
        "lifecycle.legacy_plan",
        actor=actor.username,
        organization_id=actor.organization_id,
        details={"release": f"{release.product} {release.version}", "controls": [c["id"] for c in controls]},
    )
    return legacy


def stored_legacy_plan(session: Session, release: Release) -> dict[str, Any] | None:
    """The legacy plan as saved (controls, replacement path, timeline): what an editing form starts from."""
    row = session.get(ReleaseLifecycleRow, release.id)
    return dict(row.legacy_plan) if row is not None and row.legacy_plan else None


def legacy_plan(session: Session, release: Release) -> LegacyPlan | None:
    row = session.get(ReleaseLifecycleRow, release.id)
    if row is None or not row.legacy_plan:
        return None
    data = row.legacy_plan
    return build_legacy_plan(
        plan_for(session, release),
        controls=tuple(
            CompensatingControl(
                c["id"],
                LocalizedText(c["title_ja"], c["title_en"]),
                LocalizedText(c["ja"], c["en"]),
                c.get("requirement"),
            )
            for c in data["controls"]
        ),
        replacement_path=LocalizedText(data["replacement_path"]["ja"], data["replacement_path"]["en"]),
        timeline=tuple(
            TimelineStep(dt.date.fromisoformat(s["on"]), LocalizedText(s["ja"], s["en"])) for s in data["timeline"]
        ),
        created_on=dt.date.fromisoformat(data["created_on"]),
    )


def release_status(session: Session, release: Release, today: dt.date, lang: str = "en") -> dict[str, Any]:
    """EOL/EOS, alerts due, notice-timing warnings and the legacy plan of one release."""
    lang_t: Lang = "ja" if lang == "ja" else "en"
    row = session.get(ReleaseLifecycleRow, release.id)
    out: dict[str, Any] = {
        "product": release.product,
        "version": release.version,
        "eol": release.eol_date.isoformat() if release.eol_date else None,
        "eos": release.eos_date.isoformat() if release.eos_date else None,
        "alerts": [],
        "notice_warnings": [],
        "legacy_plan": None,
        "unsupported_components": [],
    }
    if row is None:
        return out
    try:
        plan = plan_for(session, release)
    except (LifecycleError, InvalidRequest):
        return out
    out["eol"], out["eos"] = plan.eol.isoformat(), plan.eos.isoformat()
    out["alerts"] = [a.message(lang_t) for a in alerts_due(plan, lambda: today)]
    notice = row.notice_date or today
    out["notice_warnings"] = [w.message(lang_t) for w in check_notice_lead_time(plan, notice)]
    out["unsupported_components"] = [
        {"name": c.name, "end_of_support": c.end_of_support.isoformat() if c.end_of_support else None}
        for c in plan.components_ending_before_eos()
    ]
    legacy = legacy_plan(session, release)
    if legacy is not None:
        out["legacy_plan"] = legacy.hospital_guidance(lang_t)
    return out


def visible_lifecycle(session: Session, actor: Principal, today: dt.date, lang: str) -> list[dict[str, Any]]:
    """Lifecycle status of every release the caller may see, with the caller's devices on it."""
    ids = sboms.visible_release_ids(session, actor)
    out = []
    for release in session.scalars(
        select(Release).where(Release.id.in_(sorted(ids) or [-1])).order_by(Release.product, Release.version)
    ):
        status = release_status(session, release, today, lang)
        devices = session.scalars(
            actor.scope_devices(select(Device))
            .join(DeviceModel, Device.model_id == DeviceModel.id)
            .where(DeviceModel.product == release.product, Device.installed_version == release.version)
            .order_by(Device.serial)
        )
        status["devices"] = [d.serial for d in devices]
        out.append(status)
    return out


def publish_eos_notice(
    session: Session,
    audit: ServerAuditLog,
    settings: Settings,
    actor: Principal,
    release: Release,
    *,
    today: dt.date,
    guidance_en: str | None = None,
    guidance_ja: str | None = None,
) -> list[PublishedAdvisory]:
    """Publish the CSAF end-of-support notice (en + ja) and record the day hospitals were told (IMDRF N70).

    Without explicit guidance the release's legacy plan is the text; a release with neither is refused, since a
    notice that tells hospitals nothing about what to do is not one.
    """
    actor.require_role(Role.PSIRT)
    legacy = legacy_plan(session, release) if guidance_en is None or guidance_ja is None else None
    en = guidance_en or (legacy.hospital_guidance("en") if legacy else None)
    ja = guidance_ja or (legacy.hospital_guidance("ja") if legacy else None)
    if not en or not ja:
        raise InvalidRequest(
            "guidance_required", f"{release.product} {release.version}: give guidance or save a legacy plan first"
        )
    rows = advisory_publishing.publish_eos_notice(
        session, audit, settings, actor, release, guidance={"en": en, "ja": ja}, today=today
    )
    row = session.get(ReleaseLifecycleRow, release.id)
    if row is not None and row.notice_date is None:
        row.notice_date = today
    return rows
