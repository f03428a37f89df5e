"""Milestone packages through the service: the handbook's documents, deliveries, acknowledgement (SM-2, SM-4)."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json

import pytest
from milestone_support import EOL, EOS, PRODUCT, principal, published_release
from sqlalchemy import select

from medsec.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from medsec.server.models import AuditEntry, Release
from medsec.server.models_milestones import Milestone
from medsec.server.models_updates import NotificationChannel, OutboxMessage
from medsec.server.services import milestones
from medsec.server.services.milestones import MilestoneKind

pytestmark = [pytest.mark.req("SM-2"), pytest.mark.req("SM-4")]
TODAY = dt.date(2027, 3, 1)
POLICY = {"text_en": "Report vulnerabilities to psirt@example.com.", "text_ja": "脆弱性は psirt@example.com へ。"}


def _assemble(ctx, release_id: int, kind: MilestoneKind, who: str = "maker-release") -> int:
    actor = principal(ctx, who)
    with ctx.tx() as s:
        release = s.get(Release, release_id)
        return milestones.assemble(s, ctx.audit, actor, release, kind, today=TODAY).id


def _set_document(ctx, kind: str, who: str = "maker-admin") -> None:
    actor = principal(ctx, who)
    with ctx.tx() as s:
        milestones.set_product_document(s, ctx.audit, actor, product=PRODUCT, kind=kind, **POLICY)


def _summary(ctx, milestone_id: int, who: str) -> dict:
    actor = principal(ctx, who)
    with ctx.tx() as s:
        return milestones.summary(milestones.get_milestone(s, actor, milestone_id), actor)


def test_release_package_holds_the_handbook_documents_with_digests(ctx, seeded) -> None:
    rid = published_release(ctx, "2.0")
    _set_document(ctx, "security_policy")
    mid = _assemble(ctx, rid, MilestoneKind.RELEASE)

    with ctx.tx() as s:
        m = s.get(Milestone, mid)
        docs = {d.kind: d for d in m.documents}
        assert [d.kind for d in m.documents] == [
            "security_policy",
            "lifecycle_plan",
            "sbom",
            "mds2",
            "maintenance_plan",
        ]
        for d in m.documents:
            if d.content is not None:
                assert d.sha256 == hashlib.sha256(d.content).hexdigest()
        policy = docs["security_policy"].content.decode()
        assert POLICY["text_en"] in policy and POLICY["text_ja"] in policy
        plan = json.loads(docs["lifecycle_plan"].content)
        assert (plan["eol"], plan["eos"]) == (EOL.isoformat(), EOS.isoformat())
        sbom = json.loads(docs["sbom"].content)
        assert sbom["bomFormat"] == "CycloneDX" and len(sbom["components"]) > 50
        assert docs["maintenance_plan"].content is None
        assert docs["maintenance_plan"].missing_reason.startswith("manual document needed")
        if importlib.util.find_spec("medsec.reports.mds2") is None:
            assert docs["mds2"].content is None and "MDS2 generator" in docs["mds2"].missing_reason
        else:
            assert docs["mds2"].content is not None
        assert m.package_sha256 == milestones.package_digest(m.documents)
        assert sorted(d.hospital.slug for d in m.deliveries) == ["hospital-a", "hospital-b"]
        events = [(e.event_type, e.organization_id) for e in s.scalars(select(AuditEntry))]
        delivered = [org for kind, org in events if kind == "milestone.delivered"]
        assert len(delivered) == 2 and None not in delivered
        assert ("milestone.created", None) in events


def test_completing_a_package_keeps_documents_and_outdates_an_acknowledgement(ctx, seeded) -> None:
    rid = published_release(ctx, "2.0")
    mid = _assemble(ctx, rid, MilestoneKind.RELEASE)
    before = _summary(ctx, mid, "maker-admin")
    assert not before["complete"]
    actor = principal(ctx, "a-responsible")
    with ctx.tx() as s:
        milestones.acknowledge(s, ctx.audit, actor, milestones.get_milestone(s, actor, mid))
    with ctx.tx() as s, pytest.raises(Conflict, match="already acknowledged"):
        milestones.acknowledge(s, ctx.audit, actor, milestones.get_milestone(s, actor, mid))

    _set_document(ctx, "security_policy")
    _set_document(ctx, "maintenance_plan")
    assert _assemble(ctx, rid, MilestoneKind.RELEASE) == mid  # the same milestone, completed
    after = _summary(ctx, mid, "maker-admin")
    assert after["package_sha256"] != before["package_sha256"]
    kept = {d["kind"]: d["sha256"] for d in before["documents"] if d["available"]}
    assert kept and all(d["sha256"] == kept[d["kind"]] for d in after["documents"] if d["kind"] in kept)
    status = {d["hospital"]: d["status"] for d in after["deliveries"]}
    assert status == {"hospital-a": "acknowledgement_outdated", "hospital-b": "notified"}
    assert after["not_acknowledged"] == ["hospital-a", "hospital-b"]

    with ctx.tx() as s:
        delivery = milestones.acknowledge(s, ctx.audit, actor, milestones.get_milestone(s, actor, mid))
        assert delivery.acknowledged_sha256 == after["package_sha256"]
        assert delivery.acknowledged_name == "Sakura responsible person"
    mine = _summary(ctx, mid, "a-responsible")
    assert mine["delivery"]["status"] == "acknowledged" and "deliveries" not in mine


def test_new_hospital_channels_get_a_pushed_notice_once(ctx, seeded) -> None:
    org = principal(ctx, "b-responsible").organization_id
    with ctx.tx() as s:
        s.add(NotificationChannel(organization_id=org, kind="webhook", target="https://b.example/hook", secret="k"))
    rid = published_release(ctx, "2.0")
    mid = _assemble(ctx, rid, MilestoneKind.RELEASE)
    _assemble(ctx, rid, MilestoneKind.RELEASE)  # nothing new: no second notice
    with ctx.tx() as s:
        rows = list(s.scalars(select(OutboxMessage).where(OutboxMessage.organization_id == org)))
    assert [r.event for r in rows] == ["milestone.release"]
    assert rows[0].payload["milestone"] == mid and "受領確認" in rows[0].payload["text_ja"]


def test_eol_and_eos_packages(ctx, seeded) -> None:
    rid = published_release(ctx, "2.0")
    eol = _summary(ctx, _assemble(ctx, rid, MilestoneKind.EOL, "maker-psirt"), "maker-admin")
    assert [d["kind"] for d in eol["documents"]] == ["eol_notice", "lifecycle_plan"]
    assert eol["complete"]
    eos = _summary(ctx, _assemble(ctx, rid, MilestoneKind.EOS, "maker-psirt"), "maker-admin")
    assert [d["kind"] for d in eos["documents"]] == ["eos_notice", "legacy_plan"]
    legacy = eos["documents"][1]
    assert not legacy["available"] and "no legacy plan" in legacy["missing_reason"]
    with ctx.tx() as s:
        notice = next(d for d in s.get(Milestone, eos["id"]).documents if d.kind == "eos_notice")
        body = json.loads(notice.content)
    assert body["date"] == EOS.isoformat() and "サポートは" in body["text"]["ja"]


def test_milestones_need_their_moment_and_a_manufacturer_role(ctx, seeded) -> None:
    draft = published_release(ctx, "2.1", sbom=False, dates=False)
    with ctx.tx() as s:
        s.get(Release, draft).status = "draft"
    with pytest.raises(Conflict, match="not published"):
        _assemble(ctx, draft, MilestoneKind.RELEASE)
    undated = published_release(ctx, "2.2", sbom=False, dates=False)
    with pytest.raises(Conflict, match="no declared EOL date"):
        _assemble(ctx, undated, MilestoneKind.EOL)
    with pytest.raises(Conflict, match="no declared EOS date"):
        _assemble(ctx, undated, MilestoneKind.EOS)
    with pytest.raises(PermissionDenied):
        _assemble(ctx, undated, MilestoneKind.RELEASE, who="maker-service")
    with pytest.raises(NotFound):
        _assemble(ctx, undated, MilestoneKind.RELEASE, who="a-admin")
    with pytest.raises(PermissionDenied):
        _set_document(ctx, "security_policy", who="maker-release")
    with pytest.raises(InvalidRequest, match="security_policy or maintenance_plan"):
        _set_document(ctx, "sbom")


def test_due_milestones_follow_publication_and_dates(ctx, seeded) -> None:
    rid = published_release(ctx, "2.0")
    with ctx.tx() as s:
        due = {(r.version, k.value) for r, k in milestones.due_milestones(s, EOL)}
    assert due == {("2.0", "release"), ("2.0", "eol")}
    _assemble(ctx, rid, MilestoneKind.RELEASE)
    with ctx.tx() as s:
        assert {k.value for _r, k in milestones.due_milestones(s, EOS)} == {"eol", "eos"}
