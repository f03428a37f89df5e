"""Packages the server assembles on its own: the release package when a release is published, in the same
transaction and once only, and the EOL/EOS packages when their dates come (SM-2, SM-4; handbook 表2)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import httpx
import pytest
from milestone_support import EOL, EOS, PRODUCT, SBOM, published_release
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "updates"))
from update_support import UpdateKeys, bearer, create_repository, make_test_keys, release, setup_updates

from medsec.errors import ConfigError
from medsec.server.models import AuditEntry, Organization, Release, ReleaseStatus
from medsec.server.models_milestones import Milestone
from medsec.server.models_updates import NotificationChannel, OutboxMessage
from medsec.server.services import milestones, sboms, updates
from medsec.server.services.update_background import UpdateRuntime

pytestmark = [pytest.mark.req("SM-2"), pytest.mark.req("SM-4")]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> UpdateKeys:
    return make_test_keys(tmp_path_factory.mktemp("tuf-keys"))


def _publish(ctx, keys: UpdateKeys, work: Path, version: str = "3.0") -> None:
    repo = create_repository(keys, ctx.settings)
    release(keys, repo, work, version, 3)


def _sync(ctx, now: dt.datetime | None = None) -> list[Release]:
    with ctx.tx() as s:
        added = updates.sync_releases(s, ctx.audit, ctx.settings.repo_dir, now or dt.datetime.now(dt.UTC))
        return [r.id for r in added]


def _events(ctx, prefix: str) -> list[dict]:
    with ctx.tx() as s:
        rows = s.scalars(select(AuditEntry).where(AuditEntry.event_type.startswith(prefix)).order_by(AuditEntry.idx))
        return [json.loads(e.body) for e in rows]


def _milestones(ctx) -> list[tuple[str, str, str, list[str]]]:
    with ctx.tx() as s:
        return [
            (m.release.version, m.kind, m.created_by, sorted(d.hospital.slug for d in m.deliveries))
            for m in s.scalars(select(Milestone).order_by(Milestone.id))
        ]


def test_publishing_a_release_assembles_its_package_once(ctx, seeded, keys, tmp_path) -> None:
    with ctx.tx() as s:  # the SBOM arrives first: the release is a draft until the signed update is published
        sboms.import_sbom_file(s, ctx.audit, "maker-psirt", product=PRODUCT, version="3.0", path=SBOM)
    _publish(ctx, keys, tmp_path)
    assert _milestones(ctx) == []

    _sync(ctx)
    assert _milestones(ctx) == [("3.0", "release", "system", ["hospital-a", "hospital-b"])]
    with ctx.tx() as s:
        m = s.scalar(select(Milestone))
        assert m.release.status == ReleaseStatus.PUBLISHED.value
        docs = {d.kind: d for d in m.documents}
        assert json.loads(docs["sbom"].content)["bomFormat"] == "CycloneDX"
        assert docs["security_policy"].content is None  # manual document, not written yet
        assert m.package_sha256 == milestones.package_digest(m.documents)
    created = _events(ctx, "milestone.created")
    assert [(e["actor"], e["details"]["kind"]) for e in created] == [("system", "release")]
    assert len(_events(ctx, "milestone.delivered")) == 2

    _sync(ctx)  # the next sync finds nothing new: no second package, no second notice
    _sync(ctx)
    assert len(_milestones(ctx)) == 1
    assert len(_events(ctx, "milestone.")) == 3


def test_package_and_publication_share_one_transaction(ctx, seeded, keys, tmp_path) -> None:
    _publish(ctx, keys, tmp_path)

    class Crash(Exception):
        pass

    with pytest.raises(Crash), ctx.tx() as s:
        updates.sync_releases(s, ctx.audit, ctx.settings.repo_dir, dt.datetime.now(dt.UTC))
        assert s.scalar(select(func.count()).select_from(Milestone)) == 1
        raise Crash  # the process dies before the commit
    with ctx.tx() as s:
        assert s.scalar(select(func.count()).select_from(Release)) == 0
        assert s.scalar(select(func.count()).select_from(Milestone)) == 0
    _sync(ctx)
    assert _milestones(ctx) == [("3.0", "release", "system", ["hospital-a", "hospital-b"])]


def test_a_package_that_cannot_be_built_does_not_hold_back_the_release(ctx, seeded, keys, tmp_path, monkeypatch):
    _publish(ctx, keys, tmp_path)
    real = milestones.build_document

    def broken(*args, **kwargs):
        raise ConfigError("the document store is unreadable")

    monkeypatch.setattr(milestones, "build_document", broken)
    _sync(ctx)
    with ctx.tx() as s:
        assert s.scalar(select(Release.status)) == ReleaseStatus.PUBLISHED.value
    assert _milestones(ctx) == []
    failed = _events(ctx, "milestone.assembly_failed")
    assert [e["details"]["kind"] for e in failed] == ["release"]
    assert "document store is unreadable" in failed[0]["details"]["problem"]
    assert _events(ctx, "milestone.delivered") == []  # the savepoint took the partial package with it

    monkeypatch.setattr(milestones, "build_document", real)
    UpdateRuntime(ctx).step()  # the periodic pass makes up for it
    assert _milestones(ctx) == [("3.0", "release", "system", ["hospital-a", "hospital-b"])]


def test_eol_and_eos_packages_come_with_their_dates(ctx, seeded) -> None:
    rid = published_release(ctx, "2.0")
    with ctx.tx() as s:
        hospital_a = s.scalar(select(Organization.id).where(Organization.slug == "hospital-a"))
        s.add(NotificationChannel(organization_id=hospital_a, kind="email", target="it@sakura.example"))
    runtime = UpdateRuntime(ctx)
    at = lambda day: dt.datetime.combine(day, dt.time(9), tzinfo=dt.UTC)  # noqa: E731

    runtime.step(at(EOL - dt.timedelta(days=1)))
    assert [(v, k) for v, k, _, _ in _milestones(ctx)] == [("2.0", "release")]
    runtime.step(at(EOL))
    runtime.step(at(EOL))
    assert [(v, k) for v, k, _, _ in _milestones(ctx)] == [("2.0", "release"), ("2.0", "eol")]
    runtime.step(at(EOS + dt.timedelta(days=3)))
    assert _milestones(ctx)[2] == ("2.0", "eos", "system", ["hospital-a", "hospital-b"])
    with ctx.tx() as s:
        events = sorted(m.event for m in s.scalars(select(OutboxMessage)))
        eos = s.scalar(select(Milestone).where(Milestone.release_id == rid, Milestone.kind == "eos"))
        notice = json.loads(next(d.content for d in eos.documents if d.kind == "eos_notice"))
    assert events == ["milestone.eol", "milestone.eos", "milestone.release"]  # pushed once each (IMDRF N70)
    assert notice["date"] == EOS.isoformat()


def test_the_api_sync_delivers_the_package_to_hospitals(live_server, keys, tmp_path) -> None:
    setup_updates(live_server, keys, tmp_path, versions=("3.0",))
    r = httpx.get(f"{live_server.url}/api/v1/milestones", headers=bearer(live_server, "b-responsible"))
    assert r.status_code == 200
    assert [(m["product"], m["version"], m["kind"], m["delivery"]["status"]) for m in r.json()] == [
        (PRODUCT, "3.0", "release", "notified")
    ]
    again = httpx.post(f"{live_server.url}/api/v1/releases/sync", headers=bearer(live_server, "maker-admin"))
    assert again.status_code == 200 and again.json() == []
    assert (
        len(httpx.get(f"{live_server.url}/api/v1/milestones", headers=bearer(live_server, "maker-admin")).json()) == 1
    )
