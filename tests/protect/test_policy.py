"""The signed protection policy: verification, field errors, rollback and lint."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest

from medsec.crypto.keys import SigningKey
from medsec.protect.errors import PolicyError
from medsec.protect.policy import PAYLOAD_TYPE, lint_policy, load_policy, parse_document

from .conftest import policy_document

KEY = SigningKey.from_seed(b"\x01" * 32)
OTHER = SigningKey.from_seed(b"\x02" * 32)


def signed(**overrides: object) -> bytes:
    return parse_document(policy_document(**overrides)).seal([KEY])


def test_signed_policy_round_trips() -> None:
    policy = load_policy(signed(), [KEY.verify_key], product="infusion-pump", min_version=3, model="IP-200")
    assert policy == parse_document(policy_document())
    assert policy.to_document() == policy_document()


@pytest.mark.req("RL-3")
def test_policy_signed_by_another_key_is_refused() -> None:
    with pytest.raises(PolicyError, match="signature"):
        load_policy(signed(), [OTHER.verify_key], product="infusion-pump", min_version=0)


@pytest.mark.req("RL-3")
def test_tampered_policy_is_refused() -> None:
    envelope = json.loads(signed())
    doc = json.loads(base64.b64decode(envelope["payload"]))
    doc["mode"] = "monitor"
    envelope["payload"] = base64.b64encode(json.dumps(doc).encode()).decode()
    with pytest.raises(PolicyError, match="does not verify"):
        load_policy(json.dumps(envelope).encode(), [KEY.verify_key], product="infusion-pump", min_version=0)


@pytest.mark.req("RL-3")
def test_policy_of_another_type_is_refused() -> None:
    from medsec.crypto.envelope import seal

    data = seal(policy_document(), "application/vnd.medsec.trustdb+json", [KEY])
    with pytest.raises(PolicyError, match=PAYLOAD_TYPE.replace("+", r"\+")):
        load_policy(data, [KEY.verify_key], product="infusion-pump", min_version=0)


@pytest.mark.req("RL-3")
def test_policy_for_another_product_or_model_is_refused() -> None:
    with pytest.raises(PolicyError, match="product 'infusion-pump', this device is 'ventilator'"):
        load_policy(signed(), [KEY.verify_key], product="ventilator", min_version=0)
    with pytest.raises(PolicyError, match="model 'IP-200', this device is 'IP-300'"):
        load_policy(signed(), [KEY.verify_key], product="infusion-pump", min_version=0, model="IP-300")


@pytest.mark.req("RL-3")
def test_policy_rollback_is_refused() -> None:
    with pytest.raises(PolicyError, match="version 3 is older than the one in use \\(4\\): rollback refused"):
        load_policy(signed(), [KEY.verify_key], product="infusion-pump", min_version=4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mode": "audit"}, "'mode' must be one of learn, monitor, enforce"),
        ({"failure_mode": "fail_soft"}, "'failure_mode' must be one of fail_closed, fail_open"),
        ({"decision_deadline_ms": 0}, "'decision_deadline_ms' must be an integer from 1"),
        ({"decision_deadline_ms": True}, "'decision_deadline_ms' must be an integer"),
        ({"version": -1}, "'version' must be an integer"),
        ({"interpreters": ["python3"]}, r"interpreters\[0\] must be an absolute path"),
        ({"interpreters": "/bin/sh"}, "'interpreters' must be a list"),
        ({"script_suffixes": ["py"]}, r"script_suffixes\[0\] must look like '.py'"),
        ({"updater_sha256": "AB" * 32}, "'updater_sha256' must be 64 lowercase hex"),
        ({"memfd_noexec": 3}, "'memfd_noexec' must be null, 0, 1 or 2"),
        ({"product": ""}, "'product' must be a non-empty string"),
        ({"format": "other/v1"}, "'format' must be"),
        ({"colour": "red"}, r"unknown fields: \['colour'\]"),
    ],
)
def test_malformed_policy_names_the_field(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_document(policy_document(**overrides))


def test_failure_mode_has_no_hidden_default() -> None:
    doc = policy_document()
    del doc["failure_mode"]
    with pytest.raises(PolicyError, match=r"missing fields: \['failure_mode'\]"):
        parse_document(doc)


def codes(findings: list[object]) -> dict[str, str]:
    return {f.code: f.severity for f in findings}  # type: ignore[attr-defined]


def test_lint_flags_a_policy_that_would_lock_out_the_agent() -> None:
    policy = parse_document(policy_document(interpreters=["/usr/bin/python3*"], memfd_noexec=2))
    agent = b"\x07" * 32
    assert codes(lint_policy(policy, trust={agent}, trust_size=1, agent_interpreter_sha256=agent)) == {}
    found = codes(lint_policy(policy, trust={b"\x01" * 32}, trust_size=1, agent_interpreter_sha256=agent))
    assert found == {"agent_interpreter_untrusted": "error"}
    fail_open = replace(policy, failure_mode="fail_open")
    assert "agent_interpreter_untrusted" not in codes(
        lint_policy(fail_open, trust=set(), trust_size=1, agent_interpreter_sha256=agent)
    )


def test_lint_flags_empty_trust_and_risky_settings() -> None:
    policy = parse_document(
        policy_document(failure_mode="fail_open", decision_deadline_ms=10, excluded_paths=["/"], interpreters=[])
    )
    found = codes(lint_policy(policy, trust=set(), trust_size=0))
    assert found == {
        "empty_trust_set": "error",
        "fail_open_enforce": "warning",
        "short_deadline": "warning",
        "no_interpreters": "warning",
        "excluded_path": "error",
        "memfd_exec_allowed": "warning",
    }
    assert codes(lint_policy(replace(policy, mode="learn", excluded_paths=()), trust_size=0))["learn_mode"] == "warning"
