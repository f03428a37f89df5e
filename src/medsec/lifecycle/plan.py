"""End-of-life / end-of-support plans per model and release, legacy plans, alerts and notice checks (SM-4).

Terms follow the MHLW handbook (手引書 §5.4-§6.6, 表2): *EOL* ends the product's full support; between EOL and
*EOS* only limited support is given (security updates and advisories); after EOS the device is a legacy device
and the hospital needs the manufacturer's legacy plan (compensating controls, replacement path, timeline).
IMDRF N70 asks for EOL/EOS notices at least two years ahead. Everything here is pure: the clock is passed in.
"""

from __future__ import annotations

import calendar
import datetime as dt
import enum
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Literal

from medsec.lifecycle.endoflife import ProductLifecycle, SupportEnd, cycle_for, product_for_component
from medsec.lifecycle.errors import PlanError
from medsec.lifecycle.overrides import Evidence, OverrideSet
from medsec.sbom.model import Component

Lang = Literal["ja", "en"]
Clock = Callable[[], dt.date]

NOTICE_LEAD_MONTHS = 24  # IMDRF N70: announce EOL/EOS at least two years ahead
ALERT_MONTHS = (24, 12, 6)


@dataclass(frozen=True)
class LocalizedText:
    """The same text in Japanese and English; hospitals in Japan read ja, others en."""

    ja: str
    en: str

    def get(self, lang: Lang) -> str:
        return self.ja if lang == "ja" else self.en


def add_months(day: dt.date, months: int) -> dt.date:
    """Calendar month arithmetic; the day is clamped to the month's end (Aug 31 - 6 months = Feb 28/29)."""
    index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return dt.date(year, month + 1, min(day.day, last))


class SupportBasis(enum.StrEnum):
    """Where a component's end-of-support date comes from."""

    FEED = "feed"  # endoflife.date data
    OVERRIDE = "override"  # a manufacturer override with evidence
    SBOM = "sbom"  # the SBOM's end-of-support field (FDA premarket guidance)
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ComponentSupport:
    """A component with the support dates that apply to it in this release."""

    component: Component
    product: str | None
    cycle: str | None
    end_of_support: dt.date | None  # security fixes stop on this day
    end_of_active_support: dt.date | None = None
    ended_without_date: bool = False  # the feed says support has ended but gives no date
    basis: SupportBasis = SupportBasis.UNKNOWN
    evidence: Evidence | None = None
    extended_support: bool = False  # the manufacturer relies on the supplier's extended support (LTS, ESU)

    @property
    def name(self) -> str:
        return f"{self.component.name} {self.component.version or ''}".strip()

    def ended_on(self, day: dt.date) -> bool:
        return self.ended_without_date or (self.end_of_support is not None and day >= self.end_of_support)


def _as_date(value: SupportEnd | None) -> dt.date | None:
    return value if isinstance(value, dt.date) else None


def component_support(
    component: Component,
    products: Iterable[ProductLifecycle],
    overrides: OverrideSet | None = None,
    *,
    extended_support: bool = False,
    cycle: str | None = None,
) -> ComponentSupport:
    """Resolve a component's support dates: its product and cycle in the feed, overrides on top.

    ``extended_support`` says the manufacturer uses the supplier's extended support (Debian LTS, Windows ESU), so
    ``eoes`` rather than ``eol`` ends security fixes. ``cycle`` names the cycle where the version alone is
    ambiguous (Windows editions share build numbers).
    """
    product = product_for_component(component, products)
    if product is None:
        sbom_end = dt.date.fromisoformat(component.end_of_support) if component.end_of_support else None
        return ComponentSupport(
            component=component,
            product=None,
            cycle=None,
            end_of_support=sbom_end,
            basis=SupportBasis.SBOM if sbom_end else SupportBasis.UNKNOWN,
        )
    if cycle is not None:
        feed = product.cycle(cycle)
    elif component.version:
        feed = cycle_for(product, component.version)
    else:
        raise PlanError(f"{component.name} has no version; name its {product.product} cycle explicitly")
    effective = (overrides or OverrideSet()).apply(feed)
    field = "eoes" if extended_support and effective.eoes not in (None, False) else "eol"
    end: SupportEnd | None = effective.eoes if field == "eoes" else effective.eol
    active = effective.eoas if effective.eoas is not None else effective.eol
    from_override = effective.source_of(field) == "override"
    return ComponentSupport(
        component=component,
        product=product.product,
        cycle=feed.cycle,
        end_of_support=_as_date(end),
        end_of_active_support=_as_date(active),
        ended_without_date=end is True,
        basis=SupportBasis.OVERRIDE if from_override else SupportBasis.FEED,
        evidence=effective.override.evidence if from_override and effective.override else None,
        extended_support=field == "eoes",
    )


@dataclass(frozen=True)
class ReleaseLifecycle:
    """What the plan is made from: a model's release, the manufacturer's declared dates and its components."""

    model: str
    release: str
    released_on: dt.date
    components: tuple[ComponentSupport, ...]
    declared_eol: dt.date | None = None
    declared_eos: dt.date | None = None


@dataclass(frozen=True)
class LifecyclePlan:
    model: str
    release: str
    released_on: dt.date
    eol: dt.date
    eos: dt.date
    eol_declared: bool  # True: the manufacturer's date; False: derived from the components
    eos_declared: bool
    components: tuple[ComponentSupport, ...]

    def components_ending_before_eos(self) -> tuple[ComponentSupport, ...]:
        """Components whose support ends before the release's: they make the release a legacy case early."""
        return tuple(
            c for c in self.components if c.ended_without_date or (c.end_of_support and c.end_of_support < self.eos)
        )

    def unsupported_components(self, on: dt.date) -> tuple[ComponentSupport, ...]:
        return tuple(c for c in self.components if c.ended_on(on))

    def components_without_dates(self) -> tuple[ComponentSupport, ...]:
        return tuple(c for c in self.components if c.end_of_support is None and not c.ended_without_date)


def plan_release(release: ReleaseLifecycle) -> LifecyclePlan:
    """EOL and EOS of a release: the manufacturer's declared dates, else the earliest component dates."""
    ends = [c.end_of_support for c in release.components if c.end_of_support is not None]
    actives = [c.end_of_active_support for c in release.components if c.end_of_active_support is not None]
    eos = release.declared_eos or (min(ends) if ends else None)
    if eos is None:
        raise PlanError(f"{release.model} {release.release}: declare an EOS date or give components with known support")
    eol = release.declared_eol or min([*actives, eos])
    if eol > eos:
        raise PlanError(f"{release.model} {release.release}: EOL {eol} is after EOS {eos}")
    return LifecyclePlan(
        model=release.model,
        release=release.release,
        released_on=release.released_on,
        eol=eol,
        eos=eos,
        eol_declared=release.declared_eol is not None,
        eos_declared=release.declared_eos is not None,
        components=release.components,
    )


# -- handbook 表2 milestones ------------------------------------------------------------------------------------


class Phase(enum.StrEnum):
    RELEASE = "release"
    EOL = "eol"
    EOS = "eos"


class Deliverable(enum.StrEnum):
    """What the manufacturer gives hospitals at each milestone (手引書 表2)."""

    SECURITY_POLICY = "security-policy"
    EOL_EOS_PLAN = "eol-eos-plan"
    SBOM = "sbom"
    MDS2 = "mds2"
    EOL_NOTICE = "eol-notice"
    EOS_PLAN = "eos-plan"
    EOS_NOTICE = "eos-notice"


DELIVERABLE_LABELS: dict[Deliverable, LocalizedText] = {
    Deliverable.SECURITY_POLICY: LocalizedText("セキュリティポリシー", "Security policy"),
    Deliverable.EOL_EOS_PLAN: LocalizedText("EOL/EOS計画", "EOL/EOS plan"),
    Deliverable.SBOM: LocalizedText("SBOM", "SBOM"),
    Deliverable.MDS2: LocalizedText("MDS2", "MDS2"),
    Deliverable.EOL_NOTICE: LocalizedText("EOL通知", "EOL notice"),
    Deliverable.EOS_PLAN: LocalizedText("EOS計画", "EOS plan"),
    Deliverable.EOS_NOTICE: LocalizedText("EOS通知", "EOS notice"),
}

_DELIVERABLES: dict[Phase, tuple[Deliverable, ...]] = {
    Phase.RELEASE: (Deliverable.SECURITY_POLICY, Deliverable.EOL_EOS_PLAN, Deliverable.SBOM, Deliverable.MDS2),
    Phase.EOL: (Deliverable.EOL_NOTICE, Deliverable.EOS_PLAN),
    Phase.EOS: (Deliverable.EOS_NOTICE,),
}


@dataclass(frozen=True)
class Milestone:
    phase: Phase
    on: dt.date
    deliverables: tuple[Deliverable, ...]
    notice_due_by: dt.date | None  # latest day to tell hospitals (IMDRF N70); None for the release itself


def milestones(plan: LifecyclePlan) -> tuple[Milestone, Milestone, Milestone]:
    return (
        Milestone(Phase.RELEASE, plan.released_on, _DELIVERABLES[Phase.RELEASE], None),
        Milestone(Phase.EOL, plan.eol, _DELIVERABLES[Phase.EOL], add_months(plan.eol, -NOTICE_LEAD_MONTHS)),
        Milestone(Phase.EOS, plan.eos, _DELIVERABLES[Phase.EOS], add_months(plan.eos, -NOTICE_LEAD_MONTHS)),
    )


class SupportPhase(enum.StrEnum):
    NOT_RELEASED = "not-released"
    FULL = "full"
    LIMITED = "limited"  # between EOL and EOS: security updates and advisories only (表2)
    ENDED = "ended"


def support_phase(plan: LifecyclePlan, on: dt.date) -> SupportPhase:
    if on < plan.released_on:
        return SupportPhase.NOT_RELEASED
    if on >= plan.eos:
        return SupportPhase.ENDED
    if on >= plan.eol:
        return SupportPhase.LIMITED
    return SupportPhase.FULL


# -- IMDRF N70 notice lead time ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoticeWarning:
    """A notice that reaches hospitals less than two years before the date it announces."""

    subject: str  # "release" or the component's ref
    subject_name: str
    phase: Phase  # EOL or EOS
    announced_date: dt.date
    notice_date: dt.date
    due_by: dt.date

    @property
    def lead_days(self) -> int:
        return (self.announced_date - self.notice_date).days

    def message(self, lang: Lang) -> str:
        what = self.phase.value.upper()
        if lang == "ja":
            return (
                f"{self.subject_name}の{what}({self.announced_date.isoformat()})の通知が"
                f"{self.notice_date.isoformat()}となり、2年前({self.due_by.isoformat()})までの通知に間に合いません"
                "(IMDRF N70)。"
            )
        return (
            f"The {what} notice for {self.subject_name} ({self.announced_date.isoformat()}) goes out on "
            f"{self.notice_date.isoformat()}, less than two years ahead (due by {self.due_by.isoformat()}; IMDRF N70)."
        )


def check_notice_lead_time(plan: LifecyclePlan, notice_date: dt.date) -> tuple[NoticeWarning, ...]:
    """Warnings for each EOL/EOS (the release's, and those of components ending before it) announced too late."""
    subject_name = f"{plan.model} {plan.release}"
    checks: list[tuple[str, str, Phase, dt.date]] = [
        ("release", subject_name, Phase.EOL, plan.eol),
        ("release", subject_name, Phase.EOS, plan.eos),
    ]
    for c in plan.components_ending_before_eos():
        # A component without a published date has already ended: the notice is late whenever it goes out.
        end = c.end_of_support if c.end_of_support is not None else notice_date
        checks.append((str(c.component.ref), c.name, Phase.EOS, end))
    warnings: list[NoticeWarning] = []
    for subject, name, phase, announced in checks:
        due_by = add_months(announced, -NOTICE_LEAD_MONTHS)
        if notice_date > due_by:
            warnings.append(NoticeWarning(subject, name, phase, announced, notice_date, due_by))
    return tuple(warnings)


# -- alerts before EOS -------------------------------------------------------------------------------------------


AlertKey = tuple[str, str, int]  # (kind, subject, months before EOS)


@dataclass(frozen=True)
class Alert:
    kind: Literal["release-eos", "component-eos"]
    subject: str  # "release" or the component's ref
    subject_name: str
    months_before: int  # 24, 12, 6, or 0 when EOS has been reached
    due_on: dt.date
    eos: dt.date

    @property
    def key(self) -> AlertKey:
        return (self.kind, self.subject, self.months_before)

    def message(self, lang: Lang) -> str:
        if lang == "ja":
            if self.months_before == 0:
                return f"{self.subject_name}のサポートは{self.eos.isoformat()}に終了しました。"
            return f"{self.subject_name}のサポートは{self.months_before}か月以内({self.eos.isoformat()})に終了します。"
        if self.months_before == 0:
            return f"Support for {self.subject_name} ended on {self.eos.isoformat()}."
        return f"Support for {self.subject_name} ends within {self.months_before} months, on {self.eos.isoformat()}."


def alerts_due(plan: LifecyclePlan, clock: Clock, sent: Collection[AlertKey] = ()) -> tuple[Alert, ...]:
    """Alerts due today at T-24, T-12 and T-6 months before the release's and each earlier component's EOS.

    Only the most urgent threshold reached is raised per subject, so a plan created eight months before EOS
    alerts once at T-12 and later at T-6, never with a stale T-24. ``sent`` holds the keys already delivered.
    """
    today = clock()
    subjects: list[tuple[Literal["release-eos", "component-eos"], str, str, dt.date]] = [
        ("release-eos", "release", f"{plan.model} {plan.release}", plan.eos)
    ]
    for c in plan.components:
        if c.end_of_support is not None and c.end_of_support <= plan.eos:
            subjects.append(("component-eos", str(c.component.ref), c.name, c.end_of_support))
    alerts: list[Alert] = []
    for kind, subject, name, eos in subjects:
        reached = [m for m in (*ALERT_MONTHS, 0) if today >= add_months(eos, -m)]
        if not reached:
            continue
        months = min(reached)
        alert = Alert(kind, subject, name, months, add_months(eos, -months), eos)
        if alert.key not in sent:
            alerts.append(alert)
    return tuple(alerts)


# -- legacy plans ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompensatingControl:
    id: str
    title: LocalizedText
    description: LocalizedText
    requirement: str | None = None  # e.g. "PA-2" when the control is one of medsec's own features


@dataclass(frozen=True)
class TimelineStep:
    on: dt.date
    what: LocalizedText


@dataclass(frozen=True)
class LegacyPlan:
    """How hospitals keep a device whose OS or other components are (or will be) out of support (SM-4)."""

    model: str
    release: str
    eol: dt.date
    eos: dt.date
    created_on: dt.date
    unsupported: tuple[ComponentSupport, ...]
    controls: tuple[CompensatingControl, ...]
    replacement_path: LocalizedText
    timeline: tuple[TimelineStep, ...]

    def hospital_guidance(self, lang: Lang) -> str:
        """The text shared with hospitals, in Japanese or English."""
        ja = lang == "ja"
        lines = [
            f"{self.model} {self.release}: レガシー対応計画" if ja else f"{self.model} {self.release}: legacy plan",
            "",
            (
                f"EOL: {self.eol.isoformat()} / EOS: {self.eos.isoformat()}"
                + (
                    "(EOLからEOSまではセキュリティ更新とアドバイザリのみの限定サポート)"
                    if ja
                    else " (between EOL and EOS: limited support, security updates and advisories only)"
                )
            ),
            "",
            "サポートが終了した、または終了予定の構成品:" if ja else "Components whose support has ended or will end:",
        ]
        for c in self.unsupported:
            if c.end_of_support is not None:
                when = c.end_of_support.isoformat()
            else:
                when = "終了済み(日付非公開)" if ja else "ended (date not published)"
            line = f"- {c.name}: {when}"
            if c.evidence is not None:
                line += f"(根拠: {c.evidence.source})" if ja else f" (source: {c.evidence.source})"
            lines.append(line)
        lines += ["", "補完的対策:" if ja else "Compensating controls:"]
        for control in self.controls:
            ref = f" [{control.requirement}]" if control.requirement else ""
            lines.append(f"- {control.title.get(lang)}{ref}: {control.description.get(lang)}")
        lines += ["", "移行・更新の方法:" if ja else "Replacement path:", self.replacement_path.get(lang)]
        lines += ["", "スケジュール:" if ja else "Timeline:"]
        lines += [f"- {step.on.isoformat()}: {step.what.get(lang)}" for step in self.timeline]
        return "\n".join(lines) + "\n"


def build_legacy_plan(
    plan: LifecyclePlan,
    *,
    controls: tuple[CompensatingControl, ...],
    replacement_path: LocalizedText,
    timeline: tuple[TimelineStep, ...],
    created_on: dt.date,
) -> LegacyPlan:
    """A legacy plan for the components that end before the release does, and for the release after its EOS."""
    if not controls:
        raise PlanError("a legacy plan needs at least one compensating control")
    if not timeline:
        raise PlanError("a legacy plan needs a timeline")
    if list(timeline) != sorted(timeline, key=lambda s: s.on):
        raise PlanError("the legacy plan's timeline must be in date order")
    ids = [c.id for c in controls]
    if len(set(ids)) != len(ids):
        raise PlanError("compensating control ids must be unique")
    return LegacyPlan(
        model=plan.model,
        release=plan.release,
        eol=plan.eol,
        eos=plan.eos,
        created_on=created_on,
        unsupported=plan.components_ending_before_eos(),
        controls=controls,
        replacement_path=replacement_path,
        timeline=timeline,
    )
