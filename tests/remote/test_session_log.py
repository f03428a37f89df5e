"""The session-log upload and the offline check of attached device entries, without a server (RA-2, RA-5)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from medsec.agent.access_log import AccessLog
from medsec.auditlog import FileLog, NoteSigner
from medsec.auditlog.checkpoint import Checkpoint
from medsec.auditlog.export import ATTACHED_LOGS, verify_bundle
from medsec.auditlog.note import parse_note
from medsec.crypto.keys import SigningKey
from medsec.errors import CheckpointError, ExportError, ProofError
from medsec.remote.session_log import DeviceLogError, SessionLogUpload, build_uploads, session_entries, verify_entries

pytestmark = [pytest.mark.req("RA-2"), pytest.mark.req("RA-5")]
SERIAL = "SN-0001"
SID = "ms-0001"


def _device_log(tmp_path: Path) -> tuple[AccessLog, SigningKey]:
    key = SigningKey.generate()
    log = AccessLog(tmp_path / "device", SERIAL, key)
    log.record("remote.login", session=SID, engineer="eng", approvers=["dr"], emergency=False)
    log.record("agent.checkin", counter=1)
    log.record("remote.command", session=SID, argv=["status"], status=0)
    log.record("remote.command", session="ms-other", argv=["version"], status=0)
    log.record("remote.session_end", session=SID, reason="completed", commands=1, seconds=9)
    return log, key


def _root(log: AccessLog) -> tuple[int, bytes]:
    cp = Checkpoint.parse(parse_note(log.checkpoint())[0])
    return cp.size, cp.root_hash


def test_upload_round_trip_and_proofs(tmp_path: Path) -> None:
    log, key = _device_log(tmp_path)
    size, root = _root(log)
    groups = session_entries(log, 0, size)
    assert groups == {SID: [0, 2, 4], "ms-other": [3]}
    (upload,) = build_uploads(log, SERIAL, SID, groups[SID], size, 1_900_000_000)
    signed = json.loads(json.dumps(upload.sign(key)))  # through JSON, as on the wire
    parsed = SessionLogUpload.verify(signed["upload"], signed["signature"], key.verify_key)
    assert parsed == upload
    verify_entries(parsed.entries, SID, size, root)


def test_upload_attacks_fail_with_their_codes(tmp_path: Path) -> None:
    log, key = _device_log(tmp_path)
    size, root = _root(log)
    (upload,) = build_uploads(log, SERIAL, SID, [0, 2, 4], size, 1_900_000_000)
    signed = upload.sign(key)

    with pytest.raises(DeviceLogError) as err:
        SessionLogUpload.verify(signed["upload"], signed["signature"], SigningKey.generate().verify_key)
    assert err.value.code == "bad_signature"

    changed = copy.deepcopy(signed)
    changed["upload"]["entries"][1]["entry"]["argv"] = ["reboot"]
    with pytest.raises(DeviceLogError) as err:
        SessionLogUpload.verify(changed["upload"], changed["signature"], key.verify_key)
    assert err.value.code == "bad_signature"  # the signature covers every entry

    with pytest.raises(DeviceLogError) as err:
        verify_entries(upload.entries, "ms-other", size, root)
    assert err.value.code == "entry_not_for_session"

    (other,) = build_uploads(log, SERIAL, SID, [0, 2, 4], size, 1_900_000_000)
    forged = [
        other.entries[0],
        type(other.entries[1])(2, {**other.entries[1].entry, "status": 1}, other.entries[1].inclusion_proof),
    ]
    with pytest.raises(DeviceLogError, match="entry 2 is not in the cosigned checkpoint") as err:
        verify_entries(forged, SID, size, root)
    assert err.value.code == "bad_inclusion_proof"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda u: u.update(extra=1), "exactly the fields"),
        (lambda u: u.update(checkpoint_size=0), "checkpoint_size"),
        (lambda u: u.update(entries=[]), "entries must list"),
        (lambda u: u["entries"].reverse(), "out of order"),
        (lambda u: u["entries"][0].update(inclusion_proof=["not base64!"]), "entries[0]: an inclusion proof"),
        (lambda u: u["entries"][0].update(entry=[1]), "entries[0]: entry must be a JSON object"),
        (lambda u: u.update(checkpoint_size=3), "not inside the checkpoint of size 3"),
    ],
)
def test_malformed_uploads_name_the_field(tmp_path: Path, mutate: Any, field: str) -> None:
    log, _key = _device_log(tmp_path)
    size, _ = _root(log)
    body = build_uploads(log, SERIAL, SID, [0, 2, 4], size, 1)[0].to_json()
    mutate(body)
    with pytest.raises(DeviceLogError, match=re.escape(field)) as err:
        SessionLogUpload.from_json(body)
    assert err.value.code == "malformed_upload"


# -- offline: a server export with the device entries attached ----------------------------------------


def _bundle(tmp_path: Path, *, vouch: bool = True) -> tuple[dict[str, Any], str, AccessLog]:
    device, _ = _device_log(tmp_path)
    size, root = _root(device)
    note = device.checkpoint()
    server = FileLog(tmp_path / "server", "test/audit", NoteSigner("test/audit", SigningKey.generate()))
    details = {"session": SID, "log_origin": device.origin, "log_key": device._signer.vkey}
    details |= {"checkpoint_size": size, "root_hash": root.hex()} if vouch else {}
    server.append({"type": "remote.device_log_received", "details": details})
    export = server.export(0, server.size)
    uploads = build_uploads(device, SERIAL, SID, [0, 2, 4], size, 1)
    export[ATTACHED_LOGS] = [
        {
            "origin": device.origin,
            "log_key": device._signer.vkey,
            "match": {"session": SID},
            "checkpoints": [note],
            "entries": [{**e.to_json(), "checkpoint_size": size} for e in uploads[0].entries],
        }
    ]
    vkey = server.signer.vkey
    server.close()
    return export, vkey, device


def test_attached_entries_verify_and_tampering_is_caught(tmp_path: Path) -> None:
    bundle, vkey, device = _bundle(tmp_path)
    summary = verify_bundle(bundle, vkey)
    assert [i for i, _ in summary.attached[0].entries] == [0, 2, 4]

    altered = copy.deepcopy(bundle)
    altered[ATTACHED_LOGS][0]["entries"][2]["entry"]["reason"] = "window_closed"
    with pytest.raises(ProofError, match="attached log medsec-device/SN-0001 entry 4: not included"):
        verify_bundle(altered, vkey)

    moved = copy.deepcopy(bundle)
    moved[ATTACHED_LOGS][0]["match"] = {"session": "ms-other"}
    with pytest.raises(ExportError, match="entry 0: session is 'ms-0001', not 'ms-other'"):
        verify_bundle(moved, vkey)

    with pytest.raises(CheckpointError, match="not the one given"):
        verify_bundle(bundle, vkey, attached_keys=[NoteSigner(device.origin, SigningKey.generate()).vkey])


def test_attached_checkpoint_must_be_vouched_for(tmp_path: Path) -> None:
    bundle, vkey, device = _bundle(tmp_path, vouch=False)
    with pytest.raises(ExportError, match="neither given nor vouched"):
        verify_bundle(bundle, vkey)
    assert verify_bundle(bundle, vkey, attached_keys=[device._signer.vkey]).attached[0].key_source == "given"


def test_plain_exports_still_verify(tmp_path: Path) -> None:
    bundle, vkey, _ = _bundle(tmp_path)
    del bundle[ATTACHED_LOGS]
    summary = verify_bundle(bundle, vkey)
    assert summary.attached == () and len(summary.export.entries) == 1
