"""The security status report of one hospital (RA-6), as a format-neutral document in Japanese or English.

The hospital may ask at any time how the security of its devices is managed (セキュリティの管理状況).
:mod:`medsec.server.services.status_reports` gathers the figures from live data into a
:class:`StatusData`; this module only lays them out, so the same values give the same document, and
HTML, PDF and JSON never disagree. The audit section (the report's own log entry with its inclusion
proof) is added after the entry is written, because the entry records the hash of everything before it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from medsec.crypto.canonical import canonical_json
from medsec.reports.document import Document, KeyValues, Paragraph, Section, Table
from medsec.reports.signing import sha256_hex

PENDING_UPDATE_STATES = frozenset({"pending", "offered", "downloading", "waiting_for_window", "installing"})
FAILED_UPDATE_STATES = frozenset({"failed"})
ROLLED_BACK_UPDATE_STATES = frozenset({"rolled_back"})
UNCONFIRMED_SESSION_STATES = frozenset({"ended", "reported"})


@dataclass(frozen=True)
class DeviceLine:
    serial: str
    model: str
    site: str | None
    status: str
    version: str | None
    last_seen: datetime | None


@dataclass(frozen=True)
class UpdateLine:
    serial: str
    release: str
    campaign: int
    state: str
    reason: str | None
    updated_at: datetime | None


@dataclass(frozen=True)
class FindingLine:
    vulnerability: str
    advisory_id: str
    component: str
    release: str
    priority: str
    triage_status: str
    sla: str | None


@dataclass(frozen=True)
class AdvisoryLine:
    tracking_id: str
    title: str
    lang: str
    published: str


@dataclass(frozen=True)
class LifecycleLine:
    release: str
    eol: str | None
    eos: str | None
    devices: tuple[str, ...]
    legacy_plan: str | None
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class ProtectionLine:
    serial: str
    mode: str | None
    blocked: int
    integrity: int
    drift: int


@dataclass(frozen=True)
class SessionLine:
    id: str
    serial: str
    engineer: str
    state: str
    window_start: datetime
    window_end: datetime
    confirmed_by: str | None
    outcome: str | None


@dataclass(frozen=True)
class CheckpointLine:
    size: int
    created_at: datetime
    root_hash: str


@dataclass(frozen=True)
class StatusData:
    """Every figure of one report, read in one transaction."""

    hospital_name: str
    hospital_slug: str
    generated_at: datetime
    generated_by: str
    devices: tuple[DeviceLine, ...]
    updates: tuple[UpdateLine, ...]
    findings: tuple[FindingLine, ...]
    advisories: tuple[AdvisoryLine, ...]
    lifecycle: tuple[LifecycleLine, ...]
    protection: tuple[ProtectionLine, ...] | None  # None: this server keeps no protection events
    protection_days: int
    sessions: tuple[SessionLine, ...]
    checkpoints: tuple[CheckpointLine, ...]

    @property
    def pending_updates(self) -> int:
        return sum(1 for u in self.updates if u.state in PENDING_UPDATE_STATES)

    @property
    def failed_updates(self) -> int:
        return sum(1 for u in self.updates if u.state in FAILED_UPDATE_STATES)

    @property
    def rolled_back_updates(self) -> int:
        return sum(1 for u in self.updates if u.state in ROLLED_BACK_UPDATE_STATES)

    @property
    def blocked_executions(self) -> int:
        return sum(p.blocked for p in self.protection or ())

    @property
    def integrity_events(self) -> int:
        return sum(p.integrity for p in self.protection or ())

    @property
    def sessions_awaiting_confirmation(self) -> int:
        return sum(1 for s in self.sessions if s.state in UNCONFIRMED_SESSION_STATES and s.confirmed_by is None)

    def figures(self) -> dict[str, int]:
        """The headline figures, as the summary shows them (tests compare them with the API)."""
        return {
            "devices": len(self.devices),
            "pending_updates": self.pending_updates,
            "failed_updates": self.failed_updates,
            "rolled_back_updates": self.rolled_back_updates,
            "open_findings": len(self.findings),
            "advisories": len(self.advisories),
            "blocked_executions": self.blocked_executions,
            "integrity_events": self.integrity_events,
            "remote_sessions": len(self.sessions),
            "sessions_awaiting_confirmation": self.sessions_awaiting_confirmation,
        }


@dataclass(frozen=True)
class AuditPart:
    """The report's own audit entry, the checkpoint that covers it and the inclusion proof."""

    report_id: str
    content_sha256: str
    log_origin: str
    log_key: str
    entry_index: int
    checkpoint_size: int
    checkpoint_root: str
    proof: tuple[str, ...]


# -- words -------------------------------------------------------------------------------------------------

_EN = {
    "title": "Security status report",
    "subtitle": "Medical device security management for {hospital}",
    "hospital": "Hospital",
    "generated_at": "Generated",
    "generated_by": "Requested by",
    "report_id": "Report ID",
    "summary": "Summary",
    "devices": "Devices",
    "pending_updates": "Pending updates",
    "failed_updates": "Failed updates",
    "rolled_back_updates": "Rolled-back updates",
    "open_findings": "Open vulnerabilities (findings)",
    "advisories": "Advisories concerning the hospital",
    "blocked_executions": "Blocked executions",
    "integrity_events": "Integrity events",
    "remote_sessions": "Remote maintenance sessions",
    "sessions_awaiting_confirmation": "Sessions not yet confirmed",
    "intro": "Every figure was read from the manufacturer's medsec server when this report was generated.",
    "s_devices": "Devices, versions and last check-in",
    "serial": "Serial",
    "model": "Model",
    "site": "Site",
    "status": "Status",
    "version": "Version",
    "last_seen": "Last check-in",
    "never": "never",
    "no_devices": "No devices are registered to this hospital.",
    "s_updates": "Updates in progress, failed and rolled back",
    "release": "Release",
    "campaign": "Campaign",
    "state": "State",
    "reason": "Reason",
    "updated": "Updated",
    "no_updates": "No pending, failed or rolled-back updates.",
    "s_findings": "Open vulnerabilities and their triage",
    "vulnerability": "Vulnerability",
    "advisory": "Advisory",
    "component": "Component",
    "priority": "Priority",
    "triage": "Triage (VEX)",
    "sla": "Deadline",
    "no_findings": "No open vulnerability findings for the releases the hospital's devices run.",
    "s_advisories": "Advisories concerning the hospital",
    "tracking_id": "Tracking ID",
    "title_col": "Title",
    "language": "Language",
    "published": "Published",
    "no_advisories": "No advisories concern the releases the hospital's devices run.",
    "s_lifecycle": "End of life, end of support and legacy plans",
    "eol": "EOL",
    "eos": "EOS",
    "legacy_plan": "Legacy plan",
    "warnings": "Notices",
    "none": "none",
    "no_lifecycle": "No lifecycle data for the releases the hospital's devices run.",
    "s_protection": "Blocked executions and integrity events per device (last {days} days)",
    "mode": "Mode",
    "blocked": "Blocked executions",
    "integrity": "Integrity events",
    "drift": "Port/USB drift",
    "no_protection": "No device of this hospital has reported protection status.",
    "protection_unavailable": "This server keeps no device protection events.",
    "s_sessions": "Remote maintenance sessions and their confirmation",
    "session": "Session",
    "engineer": "Engineer",
    "window": "Approved window",
    "confirmation": "Confirmed by the hospital",
    "not_confirmed": "not confirmed",
    "no_sessions": "No remote maintenance sessions.",
    "s_audit": "Audit log checkpoints and this report's inclusion proof",
    "audit_intro": (
        "This report is logged in the server's tamper-evident audit log (RFC 9162). The entry below records "
        "the SHA-256 of the report content above; the proof shows the entry is included in the signed checkpoint."
    ),
    "log_origin": "Log",
    "log_key": "Log verifier key",
    "entry_index": "Audit entry (report.status_generated)",
    "content_sha256": "Content SHA-256",
    "checkpoint": "Checkpoint size",
    "root": "Checkpoint root hash",
    "proof": "Inclusion proof",
    "size": "Size",
    "created": "Signed",
    "root_col": "Root hash",
    "no_checkpoints": "No checkpoints yet.",
    "footer": "medsec security status report {id}",
}

_JA = {
    "title": "セキュリティ管理状況報告書",
    "subtitle": "{hospital} 医療機器のセキュリティ管理状況",
    "hospital": "医療機関",
    "generated_at": "作成日時",
    "generated_by": "依頼者",
    "report_id": "報告書ID",
    "summary": "概要",
    "devices": "機器数",
    "pending_updates": "適用待ちの更新",
    "failed_updates": "失敗した更新",
    "rolled_back_updates": "ロールバックされた更新",
    "open_findings": "未解決の脆弱性(検出)",
    "advisories": "関係するアドバイザリ",
    "blocked_executions": "実行をブロックした件数",
    "integrity_events": "完全性イベント",
    "remote_sessions": "遠隔保守セッション",
    "sessions_awaiting_confirmation": "終了確認待ちセッション",
    "intro": "すべての数値は、本報告書の作成時に製造販売業者のmedsecサーバから読み取ったものです。",
    "s_devices": "機器・バージョン・最終通信",
    "serial": "シリアル番号",
    "model": "機種",
    "site": "設置場所",
    "status": "状態",
    "version": "バージョン",
    "last_seen": "最終通信",
    "never": "なし",
    "no_devices": "この医療機関に登録された機器はありません。",
    "s_updates": "適用待ち・失敗・ロールバックされた更新",
    "release": "リリース",
    "campaign": "キャンペーン",
    "state": "状態",
    "reason": "理由",
    "updated": "更新日時",
    "no_updates": "適用待ち・失敗・ロールバックされた更新はありません。",
    "s_findings": "未解決の脆弱性とトリアージ",
    "vulnerability": "脆弱性",
    "advisory": "アドバイザリ",
    "component": "構成品",
    "priority": "優先度",
    "triage": "トリアージ(VEX)",
    "sla": "期限",
    "no_findings": "この医療機関の機器が使用するリリースに未解決の脆弱性はありません。",
    "s_advisories": "この医療機関に関係するアドバイザリ",
    "tracking_id": "追跡ID",
    "title_col": "件名",
    "language": "言語",
    "published": "公開日",
    "no_advisories": "この医療機関の機器が使用するリリースに関係するアドバイザリはありません。",
    "s_lifecycle": "EOL・EOSとレガシー対応計画",
    "eol": "EOL",
    "eos": "EOS",
    "legacy_plan": "レガシー対応計画",
    "warnings": "お知らせ",
    "none": "なし",
    "no_lifecycle": "この医療機関の機器が使用するリリースのライフサイクル情報はありません。",
    "s_protection": "機器ごとの実行ブロックと完全性イベント(過去{days}日間)",
    "mode": "モード",
    "blocked": "実行ブロック",
    "integrity": "完全性イベント",
    "drift": "ポート・USBの逸脱",
    "no_protection": "この医療機関の機器から保護状況の報告はありません。",
    "protection_unavailable": "このサーバは機器保護イベントを保持していません。",
    "s_sessions": "遠隔保守セッションと終了確認",
    "session": "セッション",
    "engineer": "作業者",
    "window": "承認された作業時間帯",
    "confirmation": "医療機関による確認",
    "not_confirmed": "未確認",
    "no_sessions": "遠隔保守セッションはありません。",
    "s_audit": "監査ログのチェックポイントと本報告書の包含証明",
    "audit_intro": (
        "本報告書はサーバの改ざん検知可能な監査ログ(RFC 9162)に記録されています。下記のエントリは上記の報告内容の"
        "SHA-256を記録し、包含証明はそのエントリが署名済みチェックポイントに含まれることを示します。"
    ),
    "log_origin": "ログ",
    "log_key": "ログ検証鍵",
    "entry_index": "監査エントリ(report.status_generated)",
    "content_sha256": "報告内容のSHA-256",
    "checkpoint": "チェックポイントのサイズ",
    "root": "チェックポイントのルートハッシュ",
    "proof": "包含証明",
    "size": "サイズ",
    "created": "署名日時",
    "root_col": "ルートハッシュ",
    "no_checkpoints": "チェックポイントはまだありません。",
    "footer": "medsec セキュリティ管理状況報告書 {id}",
}

WORDS = {"en": _EN, "ja": _JA}

_STATE_JA = {
    "pending": "待機中",
    "offered": "配信済み",
    "downloading": "ダウンロード中",
    "waiting_for_window": "保守時間帯待ち",
    "installing": "インストール中",
    "failed": "失敗",
    "rolled_back": "ロールバック",
    "active": "稼働中",
    "retired": "廃止",
    "under_investigation": "調査中",
    "affected": "影響あり",
    "not_affected": "影響なし",
    "fixed": "修正済み",
    "requested": "申請中",
    "approved": "承認済み",
    "rejected": "却下",
    "ended": "終了",
    "reported": "報告済み",
    "closed": "完了",
    "revoked": "取り消し",
    "accepted": "受領",
    "follow_up_needed": "要フォローアップ",
    "enforce": "強制",
    "monitor": "監視",
    "learn": "学習",
}


def _state(lang: str, value: str | None) -> str:
    if value is None:
        return "—"
    return _STATE_JA.get(value, value) if lang == "ja" else value.replace("_", " ")


def when(value: datetime | None) -> str:
    """Timestamps in UTC, minute precision, the same in both languages."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


# -- sections ----------------------------------------------------------------------------------------------


def _summary(d: StatusData, w: dict[str, str]) -> Section:
    items = tuple((w[name], str(value)) for name, value in d.figures().items())
    return Section(w["summary"], (Paragraph(w["intro"]), KeyValues(items)))


def _devices(d: StatusData, w: dict[str, str], lang: str) -> Section:
    rows = tuple(
        (x.serial, x.model, x.site or "—", _state(lang, x.status), x.version or "—",
         when(x.last_seen) if x.last_seen else w["never"])
        for x in d.devices
    )  # fmt: skip
    columns = (w["serial"], w["model"], w["site"], w["status"], w["version"], w["last_seen"])
    return Section(w["s_devices"], (Table(columns, rows, empty=w["no_devices"]),))


def _updates(d: StatusData, w: dict[str, str], lang: str) -> Section:
    rows = tuple(
        (u.serial, u.release, f"c-{u.campaign}", _state(lang, u.state), u.reason or "—", when(u.updated_at))
        for u in d.updates
    )
    columns = (w["serial"], w["release"], w["campaign"], w["state"], w["reason"], w["updated"])
    return Section(w["s_updates"], (Table(columns, rows, empty=w["no_updates"]),))


def _findings(d: StatusData, w: dict[str, str], lang: str) -> Section:
    rows = tuple(
        (f.vulnerability, f.advisory_id, f.component, f.release, f.priority, _state(lang, f.triage_status),
         _state(lang, f.sla))
        for f in d.findings
    )  # fmt: skip
    columns = (w["vulnerability"], w["advisory"], w["component"], w["release"], w["priority"], w["triage"], w["sla"])
    blocks: list[Paragraph | KeyValues | Table] = []
    by_status = Counter(f.triage_status for f in d.findings)
    if by_status:
        counts = tuple((f"{w['triage']}: {_state(lang, k)}", str(v)) for k, v in sorted(by_status.items()))
        blocks.append(KeyValues(counts))
    blocks.append(Table(columns, rows, empty=w["no_findings"]))
    return Section(w["s_findings"], tuple(blocks))


def _advisories(d: StatusData, w: dict[str, str]) -> Section:
    rows = tuple((a.tracking_id, a.title, a.lang, a.published) for a in d.advisories)
    columns = (w["tracking_id"], w["title_col"], w["language"], w["published"])
    return Section(w["s_advisories"], (Table(columns, rows, empty=w["no_advisories"]),))


def _lifecycle(d: StatusData, w: dict[str, str]) -> Section:
    rows = tuple(
        (x.release, x.eol or "—", x.eos or "—", ", ".join(x.devices) or "—", x.legacy_plan or w["none"],
         "\n".join(x.warnings) or w["none"])
        for x in d.lifecycle
    )  # fmt: skip
    columns = (w["release"], w["eol"], w["eos"], w["devices"], w["legacy_plan"], w["warnings"])
    return Section(w["s_lifecycle"], (Table(columns, rows, empty=w["no_lifecycle"]),))


def _protection(d: StatusData, w: dict[str, str], lang: str) -> Section:
    heading = w["s_protection"].format(days=d.protection_days)
    if d.protection is None:
        return Section(heading, (Paragraph(w["protection_unavailable"]),))
    rows = tuple((p.serial, _state(lang, p.mode), str(p.blocked), str(p.integrity), str(p.drift)) for p in d.protection)
    columns = (w["serial"], w["mode"], w["blocked"], w["integrity"], w["drift"])
    return Section(heading, (Table(columns, rows, empty=w["no_protection"]),))


def _sessions(d: StatusData, w: dict[str, str], lang: str) -> Section:
    def confirmation(s: SessionLine) -> str:
        if s.confirmed_by is None:
            return w["not_confirmed"]
        return f"{s.confirmed_by} ({_state(lang, s.outcome)})"

    rows = tuple(
        (s.id, s.serial, s.engineer, _state(lang, s.state), f"{when(s.window_start)} – {when(s.window_end)}",
         confirmation(s))
        for s in d.sessions
    )  # fmt: skip
    columns = (w["session"], w["serial"], w["engineer"], w["state"], w["window"], w["confirmation"])
    return Section(w["s_sessions"], (Table(columns, rows, empty=w["no_sessions"]),))


def _audit(d: StatusData, a: AuditPart, w: dict[str, str]) -> Section:
    proof = "\n".join(a.proof) or w["none"]
    facts = KeyValues(
        (
            (w["log_origin"], a.log_origin),
            (w["log_key"], a.log_key),
            (w["entry_index"], str(a.entry_index)),
            (w["content_sha256"], a.content_sha256),
            (w["checkpoint"], str(a.checkpoint_size)),
            (w["root"], a.checkpoint_root),
            (w["proof"], proof),
        )
    )
    rows = tuple((str(c.size), when(c.created_at), c.root_hash) for c in d.checkpoints)
    table = Table((w["size"], w["created"], w["root_col"]), rows, empty=w["no_checkpoints"])
    return Section(w["s_audit"], (Paragraph(w["audit_intro"]), facts, table))


# -- the document ------------------------------------------------------------------------------------------


def content_document(d: StatusData, lang: str, report_id: str) -> Document:
    """The report without its audit section: what the audit entry's content hash covers."""
    w = WORDS[lang]
    meta = KeyValues(
        (
            (w["hospital"], f"{d.hospital_name} ({d.hospital_slug})"),
            (w["generated_at"], when(d.generated_at)),
            (w["generated_by"], d.generated_by),
            (w["report_id"], report_id),
        )
    )
    sections = (
        _summary(d, w),
        _devices(d, w, lang),
        _updates(d, w, lang),
        _findings(d, w, lang),
        _advisories(d, w),
        _lifecycle(d, w),
        _protection(d, w, lang),
        _sessions(d, w, lang),
    )
    return Document(
        title=w["title"],
        lang=lang,
        subtitle=w["subtitle"].format(hospital=d.hospital_name),
        meta=meta,
        sections=sections,
        footer=w["footer"].format(id=report_id),
    )


def content_sha256(doc: Document) -> str:
    return sha256_hex(canonical_json(doc.to_json()))


def with_audit(content: Document, d: StatusData, audit: AuditPart) -> Document:
    """The full report: the content document plus its audit section."""
    w = WORDS[content.lang]
    return Document(
        title=content.title,
        lang=content.lang,
        subtitle=content.subtitle,
        meta=content.meta,
        sections=(*content.sections, _audit(d, audit, w)),
        footer=content.footer,
    )
