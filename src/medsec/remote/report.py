"""The service report of one maintenance session, in Japanese or English (RA-5, RA-3).

It explains the work to the hospital before and after: the plan as approved, who approved and
when, what happened (the audit-log timeline; the commands, file transfers, refusals and session
ends as the device's own access log recorded them, each proven against a device checkpoint the
server cosigned; the commands typed and files moved as the sealed recordings show them), the
engineer's results and how they were verified, the hospital's
confirmation of the end of work, and the hashes that tie the document to its proof bundle
(``medsec audit verify``). This module is pure: the server gathers :class:`ServiceReportFacts`
and :func:`build_service_report` turns them into a :class:`~medsec.reports.document.Document`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from medsec.reports.document import Document, KeyValues, Paragraph, Section, Table

_LABELS: dict[str, dict[str, str]] = {
    "title": {"en": "Remote maintenance service report", "ja": "リモート保守 作業報告書"},
    "session": {"en": "Session", "ja": "セッション"},
    "device": {"en": "Device", "ja": "機器"},
    "hospital": {"en": "Hospital", "ja": "医療機関"},
    "engineer": {"en": "Service engineer", "ja": "保守担当者"},
    "state": {"en": "State", "ja": "状態"},
    "generated": {"en": "Generated", "ja": "作成日時"},
    "emergency": {"en": "Emergency session (approved afterwards)", "ja": "緊急セッション(事後承認)"},
    "plan": {"en": "1. Plan (explained before the work)", "ja": "1. 作業計画(作業前の説明)"},
    "purpose": {"en": "Purpose", "ja": "目的"},
    "planned_work": {"en": "Planned work", "ja": "作業内容"},
    "impact": {"en": "Expected impact", "ja": "想定される影響"},
    "downtime": {"en": "Expected downtime", "ja": "想定停止時間"},
    "minutes": {"en": "{n} minutes", "ja": "{n} 分"},
    "rollback": {"en": "Rollback", "ja": "切り戻し手順"},
    "capabilities": {"en": "Capabilities", "ja": "許可された操作"},
    "cap_shell": {"en": "restricted maintenance shell", "ja": "制限付き保守シェル"},
    "cap_files": {"en": "file transfer", "ja": "ファイル転送"},
    "cap_port": {"en": "port forward {name} ({port})", "ja": "ポート転送 {name} ({port})"},
    "window": {"en": "Window", "ja": "作業時間帯"},
    "requested": {"en": "Requested", "ja": "申請日時"},
    "approvals": {"en": "2. Approvals", "ja": "2. 承認"},
    "approvals_count": {
        "en": "{given} of {required} required approvals",
        "ja": "必要な承認 {required} 件中 {given} 件",
    },
    "approver": {"en": "Approver", "ja": "承認者"},
    "at": {"en": "Time (UTC)", "ja": "日時(UTC)"},
    "comment": {"en": "Comment", "ja": "コメント"},
    "no_approvals": {"en": "No approvals recorded.", "ja": "承認の記録はありません。"},
    "timeline": {"en": "3. Timeline (server audit log)", "ja": "3. 経過(サーバ監査ログ)"},
    "event": {"en": "Event", "ja": "イベント"},
    "actor": {"en": "By", "ja": "実施者"},
    "index": {"en": "Log entry", "ja": "ログ番号"},
    "no_events": {"en": "No events.", "ja": "イベントはありません。"},
    "commands": {"en": "4. Commands and file transfers", "ja": "4. 実行コマンドとファイル転送"},
    "commands_note": {
        "en": "Taken from the sealed session recordings; each recording's SHA-256 is in the audit log.",
        "ja": "封印済みのセッション記録から抽出しています。各記録の SHA-256 は監査ログに記録されています。",
    },
    "device_log_note": {
        "en": (
            "From the device log ({origin}): each entry is proven against the device checkpoint named in its "
            "row, which the server cosigned; the proof bundle carries the entries, proofs and checkpoints."
        ),
        "ja": (
            "機器ログ({origin})より:各エントリは行に示した機器チェックポイント(サーバが連署)に対して"
            "包含証明で検証済みです。証跡バンドルにエントリ、証明、チェックポイントが入っています。"
        ),
    },
    "device_log_missing": {
        "en": "The device has not sent its access-log entries of this session yet.",
        "ja": "このセッションの機器アクセスログはまだ機器から届いていません。",
    },
    "device_event": {"en": "Device event", "ja": "機器イベント"},
    "detail": {"en": "Detail", "ja": "内容"},
    "proven": {"en": "Proven against", "ja": "証明"},
    "checkpoint_n": {"en": "checkpoint {n}", "ja": "チェックポイント {n}"},
    "recordings_heading": {"en": "From the sealed recordings", "ja": "封印済みセッション記録より"},
    "command": {"en": "Command", "ja": "コマンド"},
    "no_commands": {"en": "No commands were recorded.", "ja": "記録されたコマンドはありません。"},
    "transfer": {"en": "Transfer", "ja": "転送"},
    "no_transfers": {"en": "No files were transferred.", "ja": "ファイル転送はありません。"},
    "results": {"en": "5. Results (explained after the work)", "ja": "5. 作業結果(作業後の説明)"},
    "work_done": {"en": "Work done", "ja": "実施内容"},
    "result": {"en": "Results", "ja": "結果"},
    "verification": {"en": "Verification", "ja": "確認方法"},
    "reported": {"en": "Reported", "ja": "報告日時"},
    "no_report": {"en": "The engineer has not reported yet.", "ja": "保守担当者からの報告はまだありません。"},
    "confirmation": {"en": "6. Confirmation of the end of work", "ja": "6. 作業終了の確認"},
    "confirmed_by": {"en": "Confirmed by", "ja": "確認者"},
    "outcome": {"en": "Outcome", "ja": "判定"},
    "not_confirmed": {
        "en": "The hospital's responsible person has not confirmed the end of work yet.",
        "ja": "医療機関の責任者による作業終了の確認はまだです。",
    },
    "evidence": {"en": "7. Recordings and proof", "ja": "7. 記録と証跡"},
    "recording": {"en": "Recording SHA-256", "ja": "記録の SHA-256"},
    "check": {"en": "Check", "ja": "検証"},
    "no_recordings": {"en": "No recordings.", "ja": "記録はありません。"},
    "proof_note": {
        "en": (
            "The proof bundle (proof.json) holds the {n} server audit-log entries of this session with "
            "inclusion proofs against the signed checkpoint below. Verify it offline with: "
            "medsec audit verify proof.json --log-key '<the server's log key>'"
        ),
        "ja": (
            "証跡バンドル(proof.json)には、このセッションのサーバ監査ログ {n} 件と、下記の署名付き"
            "チェックポイントに対する包含証明が入っています。オフラインでの検証: "
            "medsec audit verify proof.json --log-key '<サーバのログ鍵>'"
        ),
    },
    "log_origin": {"en": "Log", "ja": "ログ"},
    "tree_size": {"en": "Checkpoint size", "ja": "チェックポイントのサイズ"},
    "root_hash": {"en": "Root hash", "ja": "ルートハッシュ"},
    "log_key": {"en": "Log key", "ja": "ログ鍵"},
    "footer": {"en": "medsec service report {id}", "ja": "medsec 作業報告書 {id}"},
}

_OUTCOMES = {
    "accepted": {"en": "accepted", "ja": "承認(作業完了)"},
    "rejected": {"en": "work rejected", "ja": "不承認"},
    "follow_up_needed": {"en": "follow-up needed", "ja": "要フォローアップ"},
}

_STATES = {
    "requested": {"en": "waiting for approval", "ja": "承認待ち"},
    "approved": {"en": "approved", "ja": "承認済み"},
    "active": {"en": "in progress", "ja": "作業中"},
    "ended": {"en": "ended, report pending", "ja": "終了(報告待ち)"},
    "reported": {"en": "reported, confirmation pending", "ja": "報告済み(確認待ち)"},
    "closed": {"en": "closed", "ja": "完了(終了確認済み)"},
    "rejected": {"en": "rejected", "ja": "却下"},
    "revoked": {"en": "revoked", "ja": "取り消し"},
}

_EVENTS = {
    "remote.session.requested": {"en": "requested", "ja": "申請"},
    "remote.session.approval_recorded": {"en": "approval recorded", "ja": "承認を記録"},
    "remote.session.approved": {"en": "approved", "ja": "承認"},
    "remote.session.rejected": {"en": "rejected", "ja": "却下"},
    "remote.session.started": {"en": "started", "ja": "開始"},
    "remote.session.ended": {"en": "ended", "ja": "終了"},
    "remote.session.revoked": {"en": "revoked", "ja": "取り消し"},
    "remote.session.reported": {"en": "work reported", "ja": "作業報告"},
    "remote.session.confirmed": {"en": "end of work confirmed", "ja": "作業終了の確認"},
    "remote.session.escalated": {"en": "escalated", "ja": "エスカレーション"},
    "remote.certificate_issued": {"en": "SSH certificate issued", "ja": "SSH 証明書の発行"},
    "remote.ticket_issued": {"en": "session ticket issued", "ja": "セッションチケットの発行"},
    "remote.recording_sealed": {"en": "recording sealed", "ja": "記録の封印"},
    "remote.recording_viewed": {"en": "recording viewed", "ja": "記録の閲覧"},
    "remote.recording_tampered": {"en": "recording found altered", "ja": "記録の改ざんを検出"},
    "remote.report_downloaded": {"en": "service report downloaded", "ja": "作業報告書のダウンロード"},
    "remote.local_code_issued": {"en": "local maintenance code issued", "ja": "現地保守コードの発行"},
    "remote.refused": {"en": "refused", "ja": "拒否"},
    "remote.device_log_received": {"en": "device log entries received", "ja": "機器ログの受信"},
    "remote.device_log_refused": {"en": "device log upload refused", "ja": "機器ログの受信拒否"},
}

_DEVICE_EVENTS = {
    "remote.login": {"en": "login", "ja": "ログイン"},
    "remote.command": {"en": "command", "ja": "コマンド"},
    "remote.file_transfer": {"en": "file transfer", "ja": "ファイル転送"},
    "remote.port_forward": {"en": "port forward", "ja": "ポート転送"},
    "remote.refused": {"en": "refused", "ja": "拒否"},
    "remote.session_end": {"en": "session end", "ja": "セッション終了"},
}


@dataclass(frozen=True)
class TimelineEntry:
    index: int
    at: datetime
    event: str
    actor: str
    detail: str = ""


@dataclass(frozen=True)
class RecordingFacts:
    sha256: str
    audit_index: int
    sealed_at: datetime
    check: str
    """``verified`` or the error code of the check (e.g. ``recording_tampered``)."""
    commands: tuple[tuple[float, str], ...] = ()
    transfers: tuple[tuple[float, str], ...] = ()


@dataclass(frozen=True)
class DeviceEntryFacts:
    """One entry of the device's access log that belongs to the session, already proven."""

    index: int
    at: datetime | None
    event: str
    fields: Mapping[str, Any]
    """The entry without ``event``, ``at`` and ``session``."""
    checkpoint_size: int


@dataclass(frozen=True)
class DeviceLogFacts:
    origin: str
    entries: tuple[DeviceEntryFacts, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ProofFacts:
    origin: str
    tree_size: int
    root_hash: str
    log_key: str
    entries: int


@dataclass(frozen=True)
class ServiceReportFacts:
    """Everything the report says, already read from the database, the recordings and the log."""

    session_id: str
    device: str
    hospital: str
    engineer: str
    state: str
    emergency: bool
    purpose: str
    planned_work: str
    expected_impact: str
    expected_downtime_minutes: int
    rollback: str
    shell: bool
    file_transfer: bool
    ports: tuple[tuple[str, int], ...]
    window_start: datetime
    window_end: datetime
    requested_at: datetime
    approvals_required: int
    approvals: tuple[tuple[str, datetime, str], ...]
    timeline: tuple[TimelineEntry, ...]
    recordings: tuple[RecordingFacts, ...]
    work_done: str | None
    results: str | None
    verification: str | None
    reported_at: datetime | None
    confirmed_by: str | None
    confirmed_at: datetime | None
    outcome: str | None
    confirmation_comment: str | None
    proof: ProofFacts
    generated_at: datetime
    device_log: DeviceLogFacts | None = None
    """The device's own entries of the session; None until the device has sent them."""


def format_time(value: datetime | None) -> str:
    """Reports state times in UTC, to the second, so two readers never disagree on the zone."""
    if value is None:
        return "—"
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _l(lang: str, key: str, **values: object) -> str:
    return _LABELS[key][lang].format(**values)


def _pick(table: dict[str, dict[str, str]], key: str | None, lang: str) -> str:
    if key is None:
        return "—"
    return table[key][lang] if key in table else key


def _plan(f: ServiceReportFacts, lang: str) -> Section:
    caps = []
    if f.shell:
        caps.append(_l(lang, "cap_shell"))
    if f.file_transfer:
        caps.append(_l(lang, "cap_files"))
    caps += [_l(lang, "cap_port", name=name, port=port) for name, port in f.ports]
    items = (
        (_l(lang, "purpose"), f.purpose),
        (_l(lang, "planned_work"), f.planned_work),
        (_l(lang, "impact"), f.expected_impact),
        (_l(lang, "downtime"), _l(lang, "minutes", n=f.expected_downtime_minutes)),
        (_l(lang, "rollback"), f.rollback),
        (_l(lang, "capabilities"), ", ".join(caps) or "—"),
        (_l(lang, "window"), f"{format_time(f.window_start)} – {format_time(f.window_end)}"),
        (_l(lang, "requested"), format_time(f.requested_at)),
    )
    blocks: tuple[Paragraph | KeyValues, ...] = (KeyValues(items),)
    if f.emergency:
        blocks = (Paragraph(_l(lang, "emergency")), *blocks)
    return Section(_l(lang, "plan"), blocks)


def _approvals(f: ServiceReportFacts, lang: str) -> Section:
    count = _l(lang, "approvals_count", given=len(f.approvals), required=f.approvals_required)
    table = Table(
        (_l(lang, "approver"), _l(lang, "at"), _l(lang, "comment")),
        tuple((who, format_time(at), comment or "—") for who, at, comment in f.approvals),
        empty=_l(lang, "no_approvals"),
    )
    return Section(_l(lang, "approvals"), (Paragraph(count), table))


def _timeline(f: ServiceReportFacts, lang: str) -> Section:
    rows = tuple(
        (str(e.index), format_time(e.at), _pick(_EVENTS, e.event, lang), e.actor, e.detail or "—") for e in f.timeline
    )
    columns = (_l(lang, "index"), _l(lang, "at"), _l(lang, "event"), _l(lang, "actor"), _l(lang, "comment"))
    return Section(_l(lang, "timeline"), (Table(columns, rows, empty=_l(lang, "no_events")),))


def device_entry_detail(event: str, fields: Mapping[str, Any]) -> str:
    """A one-line account of a device log entry, in the device's own terms (never translated)."""
    if event == "remote.command":
        argv = fields.get("argv")
        text = " ".join(str(a) for a in argv) if isinstance(argv, list) else str(argv)
        return f"{text} (status {fields.get('status')})"
    if event == "remote.file_transfer":
        return (
            f"{fields.get('direction')} {fields.get('name')} ({fields.get('size')} bytes, "
            f"SHA-256 {str(fields.get('sha256', ''))[:16]}…)"
        )
    if event == "remote.refused":
        return f"{fields.get('code')}: {fields.get('reason', '')}"
    if event == "remote.session_end":
        return f"{fields.get('reason')} ({fields.get('commands')} commands, {fields.get('seconds')} s)"
    if event == "remote.login":
        return f"{fields.get('engineer')}, approved by {', '.join(map(str, fields.get('approvers') or []))}"
    return "; ".join(f"{k}: {v}" for k, v in sorted(fields.items()))[:300]


def _device_log(f: ServiceReportFacts, lang: str) -> tuple[Paragraph | Table, ...]:
    log = f.device_log
    if log is None or not log.entries:
        return (Paragraph(_l(lang, "device_log_missing")),)
    columns = (_l(lang, "index"), _l(lang, "at"), _l(lang, "device_event"), _l(lang, "detail"), _l(lang, "proven"))
    rows = tuple(
        (
            str(e.index),
            format_time(e.at),
            _pick(_DEVICE_EVENTS, e.event, lang),
            device_entry_detail(e.event, e.fields)[:500],
            _l(lang, "checkpoint_n", n=e.checkpoint_size),
        )
        for e in log.entries
    )
    return (Paragraph(_l(lang, "device_log_note", origin=log.origin)), Table(columns, rows))


def _commands(f: ServiceReportFacts, lang: str) -> Section:
    commands: list[tuple[str, ...]] = []
    transfers: list[tuple[str, ...]] = []
    for rec in f.recordings:
        short = rec.sha256[:12]  # times are seconds into that recording
        commands += [(f"+{at:.1f} s", text, short) for at, text in rec.commands]
        transfers += [(f"+{at:.1f} s", text, short) for at, text in rec.transfers]
    rec_col = _l(lang, "recording")
    return Section(
        _l(lang, "commands"),
        (
            *_device_log(f, lang),
            Paragraph(f"{_l(lang, 'recordings_heading')}: {_l(lang, 'commands_note')}"),
            Table(("t", _l(lang, "command"), rec_col), tuple(commands), empty=_l(lang, "no_commands")),
            Table(("t", _l(lang, "transfer"), rec_col), tuple(transfers), empty=_l(lang, "no_transfers")),
        ),
    )


def _results(f: ServiceReportFacts, lang: str) -> Section:
    if f.work_done is None:
        return Section(_l(lang, "results"), (Paragraph(_l(lang, "no_report")),))
    items = (
        (_l(lang, "work_done"), f.work_done),
        (_l(lang, "result"), f.results or "—"),
        (_l(lang, "verification"), f.verification or "—"),
        (_l(lang, "reported"), format_time(f.reported_at)),
    )
    return Section(_l(lang, "results"), (KeyValues(items),))


def _confirmation(f: ServiceReportFacts, lang: str) -> Section:
    if f.confirmed_by is None:
        return Section(_l(lang, "confirmation"), (Paragraph(_l(lang, "not_confirmed")),))
    items = (
        (_l(lang, "confirmed_by"), f.confirmed_by),
        (_l(lang, "at"), format_time(f.confirmed_at)),
        (_l(lang, "outcome"), _pick(_OUTCOMES, f.outcome, lang)),
        (_l(lang, "comment"), f.confirmation_comment or "—"),
    )
    return Section(_l(lang, "confirmation"), (KeyValues(items),))


def _evidence(f: ServiceReportFacts, lang: str) -> Section:
    # One recording per row of a key-value list: a hash in a narrow table cell would wrap into its neighbours.
    recordings: KeyValues | Paragraph = KeyValues(
        tuple(
            (
                f"{_l(lang, 'recording')} ({n})",
                f"{r.sha256} — {_l(lang, 'index')} {r.audit_index}, {format_time(r.sealed_at)}, "
                f"{_l(lang, 'check')}: {r.check}",
            )
            for n, r in enumerate(f.recordings, 1)
        )
    )
    if not f.recordings:
        recordings = Paragraph(_l(lang, "no_recordings"))
    p = f.proof
    proof = KeyValues(
        (
            (_l(lang, "log_origin"), p.origin),
            (_l(lang, "tree_size"), str(p.tree_size)),
            (_l(lang, "root_hash"), p.root_hash),
            (_l(lang, "log_key"), p.log_key),
        )
    )
    return Section(_l(lang, "evidence"), (recordings, Paragraph(_l(lang, "proof_note", n=p.entries)), proof))


def build_service_report(facts: ServiceReportFacts, lang: str) -> Document:
    """The report as a format-neutral document; render it with ``render_html`` or ``render_pdf``."""
    if lang not in ("en", "ja"):
        raise ValueError(f"report language must be en or ja, not {lang!r}")
    meta = KeyValues(
        (
            (_l(lang, "session"), facts.session_id),
            (_l(lang, "device"), facts.device),
            (_l(lang, "hospital"), facts.hospital),
            (_l(lang, "engineer"), facts.engineer),
            (_l(lang, "state"), _pick(_STATES, facts.state, lang)),
            (_l(lang, "generated"), format_time(facts.generated_at)),
        )
    )
    return Document(
        title=_l(lang, "title"),
        subtitle=f"{facts.device} · {facts.session_id}",
        lang=lang,
        meta=meta,
        sections=(
            _plan(facts, lang),
            _approvals(facts, lang),
            _timeline(facts, lang),
            _commands(facts, lang),
            _results(facts, lang),
            _confirmation(facts, lang),
            _evidence(facts, lang),
        ),
        footer=_l(lang, "footer", id=facts.session_id),
    )
