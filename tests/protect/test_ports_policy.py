"""PA-1, PA-2: the signed port policy — signature, model, version counter and field checks."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from medsec.crypto.envelope import seal
from medsec.crypto.keys import SigningKey
from medsec.protect.errors import PolicyError
from medsec.protect.ports import (
    PAYLOAD_TYPE,
    ConsoleGate,
    PolicyStore,
    PortPolicy,
    sign_policy,
    verify_policy,
)

from .test_ports_lab import MODEL, policy_doc

pytestmark = [pytest.mark.req("PA-2")]

RELEASE = SigningKey.from_seed(b"\x01" * 32)
OTHER = SigningKey.from_seed(b"\x02" * 32)


def test_signed_policy_verifies_and_round_trips() -> None:
    data = sign_policy(policy_doc(), [RELEASE])
    policy = verify_policy(data, [RELEASE.verify_key], MODEL)
    assert policy.version == 1 and policy.interface_names == {"clin0", "svc0"}
    assert PortPolicy.from_json(policy.to_json()) == policy
    assert policy.allowed_listeners() == {("tcp", 2200)}


def test_policy_signed_by_another_key_is_refused() -> None:
    data = sign_policy(policy_doc(), [OTHER])
    with pytest.raises(PolicyError, match="valid signature"):
        verify_policy(data, [RELEASE.verify_key], MODEL)


def test_tampered_policy_is_refused() -> None:
    envelope = json.loads(sign_policy(policy_doc(), [RELEASE]))
    doc = json.loads(base64.b64decode(envelope["payload"]))
    doc["inbound"][0]["from"] = "0.0.0.0/0"
    envelope["payload"] = base64.b64encode(json.dumps(doc).encode()).decode()
    with pytest.raises(PolicyError, match="refused"):
        verify_policy(json.dumps(envelope).encode(), [RELEASE.verify_key], MODEL)


def test_another_document_type_is_refused() -> None:
    data = seal(policy_doc(), "application/vnd.medsec.protect-policy+json", [RELEASE])
    with pytest.raises(PolicyError, match=r"expected 'application/vnd\.medsec\.port-policy"):
        verify_policy(data, [RELEASE.verify_key], MODEL)


def test_policy_for_another_model_is_refused() -> None:
    data = sign_policy(policy_doc(model="ventilator-v2"), [RELEASE])
    with pytest.raises(PolicyError, match="model 'ventilator-v2'"):
        verify_policy(data, [RELEASE.verify_key], MODEL)


def test_rollback_attack_is_refused(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path, [RELEASE.verify_key], MODEL)
    assert store.current() is None
    store.install(sign_policy(policy_doc(version=5), [RELEASE]))
    with pytest.raises(PolicyError, match="older than the installed version 5"):
        store.install(sign_policy(policy_doc(version=4, inbound=[]), [RELEASE]))
    current = store.current()
    assert current is not None and current.version == 5


def test_same_version_with_other_content_is_refused(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path, [RELEASE.verify_key], MODEL)
    first = store.install(sign_policy(policy_doc(version=3), [RELEASE]))
    assert store.install(sign_policy(policy_doc(version=3), [RELEASE])) == first  # same document: no-op
    with pytest.raises(PolicyError, match="version 3 is installed with different content"):
        store.install(sign_policy(policy_doc(version=3, icmp_echo=True), [RELEASE]))
    assert store.install(sign_policy(policy_doc(version=4, icmp_echo=True), [RELEASE])).icmp_echo


def test_installed_policy_is_reverified(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path, [RELEASE.verify_key], MODEL)
    store.install(sign_policy(policy_doc(), [RELEASE]))
    store.path.write_bytes(sign_policy(policy_doc(version=9), [OTHER]))  # swapped on disk
    with pytest.raises(PolicyError, match="valid signature"):
        store.current()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"version": 0}, "'version'"),
        ({"version": True}, "'version'"),
        ({"schema": "other"}, "'schema'"),
        ({"mode": "learn"}, "'mode'"),
        ({"surprise": 1}, "unknown fields: surprise"),
        ({"interfaces": [{"name": "eth0; drop", "role": "clinical"}]}, "'interfaces[0].name'"),
        ({"interfaces": [{"name": "averyveryverylongname", "role": "x"}]}, "'interfaces[0].name'"),
        ({"interfaces": [{"name": "lo", "role": "x"}]}, "'interfaces[0].name'"),
        ({"inbound": [{"interface": "wlan0", "protocol": "tcp", "port": 22}]}, "'inbound[0].interface'"),
        ({"inbound": [{"interface": "svc0", "protocol": "sctp", "port": 22}]}, "'inbound[0].protocol'"),
        ({"inbound": [{"interface": "svc0", "protocol": "tcp", "port": 70000}]}, "'inbound[0].port'"),
        ({"inbound": [{"interface": "svc0", "protocol": "tcp", "port": 22, "from": "10.0.0.1/8"}]}, "inbound[0].from"),
        ({"inbound": [{"interface": "svc0", "protocol": "tcp", "port": 1, "comment": 'x" accept'}]}, "comment"),
        ({"outbound": {"default": "reject"}}, "'outbound.default'"),
        ({"usb": {"allow": [{"vendor": "ABCD", "product": "0001"}]}}, "'usb.allow[0].vendor'"),
        ({"usb": {"allow": [{"vendor": "abcd"}]}}, "'usb.allow[0].product' is missing"),
        ({"usb": {"allow": [{"vendor": "abcd", "product": "0001", "interface_class": "8"}]}}, "interface_class"),
        ({"console": {"mode": "always"}}, "'console.mode'"),
        ({"listen": [{"protocol": "tcp"}]}, "'listen[0].port' is missing"),
    ],
)
def test_malformed_policy_names_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError) as info:
        sign_policy(policy_doc(**change), [RELEASE])
    assert field in str(info.value)


def test_malformed_policy_inside_a_valid_signature_is_refused() -> None:
    data = seal(policy_doc(version="7"), PAYLOAD_TYPE, [RELEASE])
    with pytest.raises(PolicyError, match="'version'"):
        verify_policy(data, [RELEASE.verify_key], MODEL)


@pytest.mark.req("PA-1")
def test_console_gate_refuses_when_the_policy_disables_the_console(tmp_path: Path) -> None:
    policy = PortPolicy.from_json(policy_doc(console={"mode": "disabled"}))
    with pytest.raises(PolicyError, match="disables the service console"):
        ConsoleGate(policy, tmp_path, lambda: 1000.0).open("s-1", "ticket", 2000)


@pytest.mark.req("PA-1")
def test_console_left_open_past_its_ticket_is_drift(tmp_path: Path) -> None:
    now = [1000.0]
    gate = ConsoleGate(PortPolicy.from_json(policy_doc()), tmp_path, lambda: now[0])
    with pytest.raises(PolicyError, match="has ended"):
        gate.open("s-1", "ticket", 999)
    assert gate.events() == [] and not gate.active()
    gate.open("s-1", "ticket", 1600)
    assert gate.active() and gate.events() == []
    now[0] = 1600.0
    [event] = gate.events()
    assert (event.category, event.action, event.rule) == ("console", "drift", "console_without_ticket")
    gate.close()
    assert gate.events() == []


@pytest.mark.req("PA-1")
def test_damaged_console_record_counts_as_an_open_console(tmp_path: Path) -> None:
    gate = ConsoleGate(PortPolicy.from_json(policy_doc()), tmp_path, lambda: 1000.0)
    gate.path.write_text("{not json")
    assert not gate.active()
    assert [e.rule for e in gate.events()] == ["console_without_ticket"]
