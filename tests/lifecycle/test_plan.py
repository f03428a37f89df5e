from __future__ import annotations

import datetime as dt

import pytest

from medsec.lifecycle.errors import PlanError
from medsec.lifecycle.plan import (
    CompensatingControl,
    Deliverable,
    LocalizedText,
    Phase,
    ReleaseLifecycle,
    SupportBasis,
    SupportPhase,
    TimelineStep,
    add_months,
    alerts_due,
    build_legacy_plan,
    check_notice_lead_time,
    component_support,
    milestones,
    plan_release,
    support_phase,
)
from medsec.sbom.model import Component, ComponentKind, ComponentRef

pytestmark = pytest.mark.req("SM-4")

DEBIAN_9 = Component(
    ComponentRef("os"),
    "debian",
    "9",
    kind=ComponentKind.OPERATING_SYSTEM,
    cpe="cpe:2.3:o:debian:debian_linux:9:*:*:*:*:*:*:*",
)
OPENSSL = Component(ComponentRef("openssl"), "openssl", "1.1.1w", cpe="cpe:2.3:a:openssl:openssl:1.1.1w:*:*:*:*:*:*:*")
APP = Component(ComponentRef("app"), "viewer", "2.0", end_of_support="2030-03-31")


def _fixed(day: dt.date):
    return lambda: day


@pytest.fixture
def old_os_plan(products, debian_official_dates):
    """An imaging workstation released 2019 on Debian 9 with LTS, declared EOS end of 2027."""
    components = (
        component_support(DEBIAN_9, products.values(), debian_official_dates, extended_support=True),
        component_support(APP, products.values()),
    )
    release = ReleaseLifecycle(
        model="IMG-100",
        release="3.2",
        released_on=dt.date(2019, 4, 1),
        components=components,
        declared_eol=dt.date(2025, 12, 31),
        declared_eos=dt.date(2027, 12, 31),
    )
    return plan_release(release)


def test_component_support_uses_lts_and_cites_the_override(products, debian_official_dates) -> None:
    s = component_support(DEBIAN_9, products.values(), debian_official_dates, extended_support=True)
    assert (s.product, s.cycle) == ("debian", "9")
    assert s.end_of_support == dt.date(2022, 6, 30)
    assert s.basis is SupportBasis.OVERRIDE
    assert s.evidence is not None and s.evidence.source == "https://www.debian.org/releases/stretch/"
    plain = component_support(DEBIAN_9, products.values())
    assert plain.end_of_support == dt.date(2020, 7, 18)
    assert plain.basis is SupportBasis.FEED


def test_sbom_end_of_support_is_used_when_no_feed_knows_the_component(products) -> None:
    s = component_support(APP, products.values())
    assert (s.basis, s.end_of_support) == (SupportBasis.SBOM, dt.date(2030, 3, 31))


def test_old_os_yields_eos_plan_legacy_case_and_late_notice_warning(old_os_plan) -> None:
    assert (old_os_plan.eol, old_os_plan.eos) == (dt.date(2025, 12, 31), dt.date(2027, 12, 31))
    assert [c.component.name for c in old_os_plan.components_ending_before_eos()] == ["debian"]
    assert [c.name for c in old_os_plan.unsupported_components(dt.date(2025, 1, 15))] == ["debian 9"]
    warnings = check_notice_lead_time(old_os_plan, notice_date=dt.date(2025, 1, 15))
    # Debian 9 LTS ended 2022-06-30: telling hospitals in 2025 is far short of two years ahead (IMDRF N70).
    # The release's own EOL (2025-12-31) is also less than two years away; its EOS (2027-12-31) is not.
    assert {(w.subject, w.phase) for w in warnings} == {("os", Phase.EOS), ("release", Phase.EOL)}
    os_warning = next(w for w in warnings if w.subject == "os")
    assert os_warning.due_by == dt.date(2020, 6, 30)
    assert os_warning.lead_days < 0
    assert "IMDRF N70" in os_warning.message("en")
    assert "2年前" in os_warning.message("ja")


def test_plan_derived_from_components_for_debian_9_alone(products) -> None:
    plan = plan_release(
        ReleaseLifecycle(
            "IMG-100",
            "3.2",
            dt.date(2019, 4, 1),
            (component_support(DEBIAN_9, products.values(), extended_support=True),),
        )
    )
    assert (plan.eol, plan.eos) == (dt.date(2020, 7, 18), dt.date(2022, 7, 1))
    assert not plan.eol_declared and not plan.eos_declared
    assert {w.phase for w in check_notice_lead_time(plan, dt.date(2019, 4, 1))} == {Phase.EOL}
    assert {w.phase for w in check_notice_lead_time(plan, dt.date(2021, 1, 1))} == {Phase.EOL, Phase.EOS}


def test_notice_two_years_ahead_gives_no_warning(old_os_plan) -> None:
    release_only = old_os_plan.__class__(**{**old_os_plan.__dict__, "components": ()})
    assert check_notice_lead_time(release_only, notice_date=dt.date(2023, 12, 31)) == ()
    assert len(check_notice_lead_time(release_only, notice_date=dt.date(2024, 1, 1))) == 1


def test_release_without_any_date_is_refused() -> None:
    with pytest.raises(PlanError):
        plan_release(ReleaseLifecycle("M", "1", dt.date(2024, 1, 1), ()))
    with pytest.raises(PlanError):
        plan_release(
            ReleaseLifecycle(
                "M", "1", dt.date(2024, 1, 1), (), declared_eol=dt.date(2030, 1, 1), declared_eos=dt.date(2029, 1, 1)
            )
        )


def test_handbook_table_2_milestones(old_os_plan) -> None:
    release, eol, eos = milestones(old_os_plan)
    assert release.deliverables == (
        Deliverable.SECURITY_POLICY,
        Deliverable.EOL_EOS_PLAN,
        Deliverable.SBOM,
        Deliverable.MDS2,
    )
    assert eol.deliverables == (Deliverable.EOL_NOTICE, Deliverable.EOS_PLAN)
    assert eos.deliverables == (Deliverable.EOS_NOTICE,)
    assert eos.notice_due_by == dt.date(2025, 12, 31)
    assert support_phase(old_os_plan, dt.date(2019, 3, 31)) is SupportPhase.NOT_RELEASED
    assert support_phase(old_os_plan, dt.date(2025, 12, 30)) is SupportPhase.FULL
    assert support_phase(old_os_plan, dt.date(2025, 12, 31)) is SupportPhase.LIMITED
    assert support_phase(old_os_plan, dt.date(2027, 12, 31)) is SupportPhase.ENDED


@pytest.fixture
def release_plan():
    """A release ending 2027-06-30 with one component ending the same day."""
    s = component_support(Component(ComponentRef("lib"), "lib", "1", end_of_support="2027-06-30"), [])
    return plan_release(ReleaseLifecycle("PUMP-2", "5.0", dt.date(2024, 1, 1), (s,), declared_eos=dt.date(2027, 6, 30)))


@pytest.mark.parametrize(
    ("today", "months"),
    [
        (dt.date(2025, 6, 29), None),
        (dt.date(2025, 6, 30), 24),
        (dt.date(2026, 6, 29), 24),
        (dt.date(2026, 6, 30), 12),
        (dt.date(2026, 12, 29), 12),
        (dt.date(2026, 12, 30), 6),
        (dt.date(2027, 6, 29), 6),
        (dt.date(2027, 6, 30), 0),
    ],
)
def test_alerts_fire_exactly_at_t24_t12_t6(release_plan, today: dt.date, months: int | None) -> None:
    alerts = alerts_due(release_plan, _fixed(today))
    if months is None:
        assert alerts == ()
        return
    assert {(a.kind, a.months_before) for a in alerts} == {("release-eos", months), ("component-eos", months)}
    assert all(a.due_on <= today for a in alerts)


def test_sent_alerts_are_not_repeated_and_stale_thresholds_are_skipped(release_plan) -> None:
    first = alerts_due(release_plan, _fixed(dt.date(2025, 6, 30)))
    sent = {a.key for a in first}
    assert alerts_due(release_plan, _fixed(dt.date(2025, 7, 1)), sent) == ()
    # A plan first looked at eight months before EOS alerts at T-12, never with a stale T-24.
    late = alerts_due(release_plan, _fixed(dt.date(2026, 10, 30)))
    assert {a.months_before for a in late} == {12}
    alert = next(a for a in late if a.kind == "release-eos")
    assert "12 months" in alert.message("en")
    assert "12か月" in alert.message("ja")


def test_month_arithmetic_clamps_to_month_end() -> None:
    assert add_months(dt.date(2027, 8, 31), -6) == dt.date(2027, 2, 28)
    assert add_months(dt.date(2028, 8, 31), -6) == dt.date(2028, 2, 29)
    assert add_months(dt.date(2027, 1, 15), -24) == dt.date(2025, 1, 15)


CONTROLS = (
    CompensatingControl(
        "net-isolation",
        LocalizedText("ネットワーク分離", "Network isolation"),
        LocalizedText(
            "専用VLANに接続し、外部への通信を遮断してください。", "Connect to a dedicated VLAN; block outbound traffic."
        ),
        requirement="PA-2",
    ),
    CompensatingControl(
        "allowlist",
        LocalizedText("許可リスト", "Application allowlist"),
        LocalizedText("登録済みソフトウェア以外の実行を禁止します。", "Only registered software may run."),
        requirement="RL-3",
    ),
)
TIMELINE = (
    TimelineStep(dt.date(2025, 3, 1), LocalizedText("後継機種 IMG-200 の提供開始", "Successor IMG-200 available")),
    TimelineStep(dt.date(2027, 12, 31), LocalizedText("IMG-100 3.2 のサポート終了", "End of support of IMG-100 3.2")),
)
REPLACEMENT = LocalizedText(
    "IMG-200 へ更新してください。データ移行は当社が実施します。", "Upgrade to IMG-200; we migrate the data."
)


def test_legacy_plan_guidance_in_japanese_and_english(old_os_plan) -> None:
    plan = build_legacy_plan(
        old_os_plan, controls=CONTROLS, replacement_path=REPLACEMENT, timeline=TIMELINE, created_on=dt.date(2025, 1, 15)
    )
    assert [c.component.name for c in plan.unsupported] == ["debian"]
    ja = plan.hospital_guidance("ja")
    en = plan.hospital_guidance("en")
    assert "レガシー対応計画" in ja and "補完的対策" in ja and "ネットワーク分離 [PA-2]" in ja
    assert "debian 9: 2022-06-30(根拠: https://www.debian.org/releases/stretch/)" in ja
    assert "legacy plan" in en and "Network isolation [PA-2]" in en and "Upgrade to IMG-200" in en
    assert "- 2027-12-31: End of support of IMG-100 3.2" in en


@pytest.mark.parametrize(
    "kwargs",
    [
        {"controls": ()},
        {"timeline": ()},
        {"timeline": (TIMELINE[1], TIMELINE[0])},
        {"controls": (CONTROLS[0], CONTROLS[0])},
    ],
)
def test_incomplete_legacy_plan_is_refused(old_os_plan, kwargs) -> None:
    args = {"controls": CONTROLS, "replacement_path": REPLACEMENT, "timeline": TIMELINE, **kwargs}
    with pytest.raises(PlanError):
        build_legacy_plan(old_os_plan, created_on=dt.date(2025, 1, 15), **args)
