"""The signed protection policy: how the allowlisting engine behaves on one device model (RL-1..3).

It travels as a DSSE envelope (:mod:`medsec.crypto.envelope`) of type :data:`PAYLOAD_TYPE`,
signed by the manufacturer. The document::

    {"format": "medsec-protect-policy/v1",
     "product": "infusion-pump", "model": "IP-200",          # model may be null (all models)
     "version": 4,                                          # counter; lower than the one in use is refused
     "mode": "enforce",                                     # learn | monitor | enforce
     "failure_mode": "fail_closed",                         # fail_closed | fail_open, always explicit
     "decision_deadline_ms": 250,                           # after this the failure mode decides
     "interpreters": ["/usr/bin/python3*", "/usr/bin/dash", "/usr/bin/bash", "/usr/bin/perl"],
     "loaders": [],                                         # extra dynamic loaders (ld-*.so* is built in)
     "script_suffixes": [".py", ".pyc", ".sh", ".pl", ".pm"],
     "updater_sha256": "<64 hex>",                          # the only trusted updater, pinned
     "excluded_paths": [],                                  # path prefixes never checked (risky)
     "memfd_noexec": 2}                                     # vm.memfd_noexec to apply, or null

Interpreter and loader entries are ``fnmatch`` globs matched against the resolved path of the
subject's executable (``/proc/<pid>/exe``), so list ``/usr/bin/dash`` rather than ``/bin/sh``.

:func:`load_policy` verifies and parses, raising :class:`PolicyError` naming the field;
:func:`lint_policy` lists settings that endanger the device's availability or its protection.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medsec.crypto.envelope import open_envelope, seal
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import CryptoError
from medsec.protect.errors import PolicyError

PAYLOAD_TYPE = "application/vnd.medsec.protect-policy+json"
FORMAT = "medsec-protect-policy/v1"
MODES = ("learn", "monitor", "enforce")
FAILURE_MODES = ("fail_closed", "fail_open")
MIN_DEADLINE_MS = 1
MAX_DEADLINE_MS = 60_000
MEMFD_NOEXEC_LEVELS = (0, 1, 2)
_FIELDS = frozenset(
    {
        "format",
        "product",
        "model",
        "version",
        "mode",
        "failure_mode",
        "decision_deadline_ms",
        "interpreters",
        "loaders",
        "script_suffixes",
        "updater_sha256",
        "excluded_paths",
        "memfd_noexec",
    }
)
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Policy:
    """A parsed protection policy; see the module docstring for the meaning of each field."""

    product: str
    model: str | None
    version: int
    mode: str
    failure_mode: str
    decision_deadline_ms: int
    interpreters: tuple[str, ...]
    loaders: tuple[str, ...]
    script_suffixes: tuple[str, ...]
    updater_sha256: str
    excluded_paths: tuple[str, ...]
    memfd_noexec: int | None

    @property
    def fail_open(self) -> bool:
        return self.failure_mode == "fail_open"

    @property
    def updater_digest(self) -> bytes:
        return bytes.fromhex(self.updater_sha256)

    def to_document(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "product": self.product,
            "model": self.model,
            "version": self.version,
            "mode": self.mode,
            "failure_mode": self.failure_mode,
            "decision_deadline_ms": self.decision_deadline_ms,
            "interpreters": list(self.interpreters),
            "loaders": list(self.loaders),
            "script_suffixes": list(self.script_suffixes),
            "updater_sha256": self.updater_sha256,
            "excluded_paths": list(self.excluded_paths),
            "memfd_noexec": self.memfd_noexec,
        }

    def seal(self, keys: Sequence[SigningKey]) -> bytes:
        """The signed envelope of this policy."""
        return seal(self.to_document(), PAYLOAD_TYPE, keys)


def _text(doc: Mapping[str, Any], name: str, *, nullable: bool = False) -> str | None:
    value = doc.get(name)
    if value is None and nullable:
        return None
    if type(value) is not str or not value or len(value) > 200:
        raise PolicyError(f"policy field {name!r} must be a non-empty string of at most 200 characters")
    return value


def _choice(doc: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str:
    value = doc.get(name)
    if value not in choices:
        raise PolicyError(f"policy field {name!r} must be one of {', '.join(choices)} (got {value!r})")
    return str(value)


def _int(doc: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = doc.get(name)
    if type(value) is not int or not low <= value <= high:
        raise PolicyError(f"policy field {name!r} must be an integer from {low} to {high}")
    return value


def _list(doc: Mapping[str, Any], name: str, *, absolute: bool) -> tuple[str, ...]:
    value = doc.get(name)
    if not isinstance(value, list):
        raise PolicyError(f"policy field {name!r} must be a list of strings")
    items: list[str] = []
    for i, item in enumerate(value):
        if type(item) is not str or not item or "\x00" in item or len(item) > 4096:
            raise PolicyError(f"policy field {name}[{i}] must be a non-empty string")
        if absolute and not item.startswith("/"):
            raise PolicyError(f"policy field {name}[{i}] must be an absolute path (got {item!r})")
        items.append(item)
    return tuple(items)


def parse_document(doc: Mapping[str, Any]) -> Policy:
    """Check every field of a policy document; PolicyError names the first bad one."""
    unknown = sorted(set(doc) - _FIELDS)
    if unknown:
        raise PolicyError(f"policy has unknown fields: {unknown}")
    missing = sorted(_FIELDS - set(doc))
    if missing:
        raise PolicyError(f"policy is missing fields: {missing} (every setting is explicit)")
    if doc["format"] != FORMAT:
        raise PolicyError(f"policy field 'format' must be {FORMAT!r}")
    updater = doc["updater_sha256"]
    if type(updater) is not str or len(updater) != 64 or not _HEX.issuperset(updater):
        raise PolicyError("policy field 'updater_sha256' must be 64 lowercase hex digits")
    memfd = doc["memfd_noexec"]
    if memfd is not None and (type(memfd) is not int or memfd not in MEMFD_NOEXEC_LEVELS):
        raise PolicyError("policy field 'memfd_noexec' must be null, 0, 1 or 2")
    suffixes = _list(doc, "script_suffixes", absolute=False)
    for i, suffix in enumerate(suffixes):
        if not suffix.startswith(".") or "/" in suffix:
            raise PolicyError(f"policy field script_suffixes[{i}] must look like '.py' (got {suffix!r})")
    return Policy(
        product=str(_text(doc, "product")),
        model=_text(doc, "model", nullable=True),
        version=_int(doc, "version", 0, 2**53),
        mode=_choice(doc, "mode", MODES),
        failure_mode=_choice(doc, "failure_mode", FAILURE_MODES),
        decision_deadline_ms=_int(doc, "decision_deadline_ms", MIN_DEADLINE_MS, MAX_DEADLINE_MS),
        interpreters=_list(doc, "interpreters", absolute=True),
        loaders=_list(doc, "loaders", absolute=True),
        script_suffixes=suffixes,
        updater_sha256=updater,
        excluded_paths=_list(doc, "excluded_paths", absolute=True),
        memfd_noexec=memfd,
    )


def load_policy(
    data: bytes,
    trusted_keys: Iterable[VerifyKey],
    *,
    product: str,
    min_version: int,
    model: str | None = None,
    threshold: int = 1,
) -> Policy:
    """Verify a signed policy and return it; PolicyError says why it was refused.

    Refused: a bad or missing signature, another product (or another model when ``model`` is
    given and the policy names one), a ``version`` below ``min_version`` (rollback), and any
    malformed field.
    """
    try:
        document = open_envelope(data, PAYLOAD_TYPE, trusted_keys, threshold=threshold)
    except CryptoError as e:
        raise PolicyError(f"protection policy refused: {e}") from e
    policy = parse_document(document)
    if policy.product != product:
        raise PolicyError(f"protection policy is for product {policy.product!r}, this device is {product!r}")
    if model is not None and policy.model is not None and policy.model != model:
        raise PolicyError(f"protection policy is for model {policy.model!r}, this device is {model!r}")
    if policy.version < min_version:
        raise PolicyError(
            f"protection policy version {policy.version} is older than the one in use ({min_version}): rollback refused"
        )
    return policy


@dataclass(frozen=True)
class PolicyFinding:
    """One risky setting: ``severity`` is ``error`` (do not sign) or ``warning`` (know why)."""

    code: str
    severity: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "severity": self.severity, "message": self.message}


def lint_policy(
    policy: Policy,
    *,
    trust: Container[bytes] | None = None,
    trust_size: int | None = None,
    agent_interpreter_sha256: bytes | None = None,
) -> list[PolicyFinding]:
    """Settings that can lock the device out or leave a hole; an empty list means clean.

    ``trust`` (with its ``trust_size``) is the trust set the policy will run with and
    ``agent_interpreter_sha256`` the digest of the interpreter the agent itself runs on:
    with both, an enforce + fail_closed policy that would refuse the agent is an error.
    """
    findings: list[PolicyFinding] = []

    def add(code: str, severity: str, message: str) -> None:
        findings.append(PolicyFinding(code, severity, message))

    enforce = policy.mode == "enforce"
    if enforce and trust_size == 0:
        add("empty_trust_set", "error", "enforce mode with an empty trust set denies every execution")
    if (
        enforce
        and not policy.fail_open
        and trust is not None
        and agent_interpreter_sha256 is not None
        and agent_interpreter_sha256 not in trust
    ):
        add(
            "agent_interpreter_untrusted",
            "error",
            "enforce + fail_closed without the agent's own interpreter in the trust set: the agent cannot restart",
        )
    if enforce and policy.fail_open:
        add("fail_open_enforce", "warning", "fail_open lets an execution through whenever a decision is late")
    if policy.decision_deadline_ms > 5000:
        add("long_deadline", "warning", "a deadline above 5 s can stall the device's essential function")
    if policy.decision_deadline_ms < 20:
        add("short_deadline", "warning", "a deadline below 20 ms makes the failure mode decide under normal load")
    if not policy.interpreters:
        add("no_interpreters", "warning", "no interpreters listed: scripts run through an interpreter are unchecked")
    for path in policy.excluded_paths:
        severity = "error" if path.rstrip("/") == "" else "warning"
        add("excluded_path", severity, f"files under {path} are never checked")
    if enforce and policy.memfd_noexec != 2:
        add("memfd_exec_allowed", "warning", "memfd_noexec is not 2: executable memfds are outside the allowlist")
    if policy.mode == "learn":
        add("learn_mode", "warning", "learn mode allows everything; use it only while building the trust set")
    return findings
