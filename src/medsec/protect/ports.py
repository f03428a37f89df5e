"""The device's signed port policy (PA-1, PA-2): interfaces, firewall, listeners, USB and service console.

One policy per device model, written by the manufacturer and signed with its release key as a DSSE
envelope of type :data:`PAYLOAD_TYPE`. The document (canonical JSON)::

    {"schema": "medsec.port-policy/1",
     "model": "pump-x1",                 # the device model (hardware id) it is for
     "version": 3,                       # counter; a device never goes back to a lower one
     "mode": "enforce",                  # enforce | monitor (monitor reports, never corrects)
     "interfaces": [{"name": "clin0", "role": "clinical"}, {"name": "svc0", "role": "service"}],
     "inbound": [{"interface": "svc0", "protocol": "tcp", "port": 22,
                  "from": "10.60.0.2/32", "comment": "maintenance gateway"}],
     "icmp_echo": false,                 # answer ping or not
     "outbound": {"default": "drop",     # accept (the default) | drop
                  "allow": [{"interface": "svc0", "protocol": "tcp", "port": 443, "to": "10.60.0.2/32"}]},
     "listen": [{"protocol": "udp", "port": 123}],   # extra listeners that are expected
     "foreign_tables": "report",         # report | ignore other nftables tables
     "usb": {"allow": [{"vendor": "0781", "product": "5581", "serial": "AA01",
                        "interface_class": "08", "comment": "service stick"}]},
     "console": {"mode": "maintenance_only", "port": 2222}}   # disabled | maintenance_only

Everything not listed is refused: interfaces not listed are brought down, inbound traffic is dropped
unless an ``inbound`` rule allows it (loopback and replies to the device's own connections always
pass), USB devices are deauthorised unless an ``allow`` entry matches, and the service console is
off unless a maintenance ticket is active.

This module holds the document, its verification and the installed-policy store, the two
namespace-aware probes (interfaces up, sockets listening) and the service-console gate. The
nftables part is :mod:`medsec.protect.netfilter`, USB is :mod:`medsec.protect.usb`, and the
periodic comparison of all of them with the policy is :mod:`medsec.protect.drift`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsec.atomic_file import atomic_write
from medsec.crypto.canonical import canonical_json
from medsec.crypto.envelope import open_envelope, seal
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import CryptoError
from medsec.protect.errors import PolicyError, PortPolicyError
from medsec.protect.events import Object, ProtectionEvent, Subject

logger = logging.getLogger(__name__)

PAYLOAD_TYPE = "application/vnd.medsec.port-policy+json"
SCHEMA = "medsec.port-policy/1"
POLICY_FILE = "port-policy.dsse"
CONSOLE_STATE_FILE = "console-state.json"
MAX_POLICY_BYTES = 1024 * 1024
COMMAND_TIMEOUT = 20.0

# Interface names are at most IFNAMSIZ-1 = 15 bytes; the restricted alphabet also keeps every
# name safe to place inside a quoted nftables string.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_NETNS_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_COMMENT_RE = re.compile(r"^[A-Za-z0-9 _.,:/()+@#=-]{0,100}$")
_HEX4_RE = re.compile(r"^[0-9a-f]{4}$")
_HEX2_RE = re.compile(r"^[0-9a-f]{2}$")
_SERIAL_RE = re.compile(r"^[\x20-\x7e]{1,126}$")

PROTOCOLS = ("tcp", "udp")
MODES = ("enforce", "monitor")
CONSOLE_MODES = ("disabled", "maintenance_only")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# ---- the document --------------------------------------------------------------------------------


@dataclass(frozen=True)
class InterfaceRule:
    """A network interface allowed up, and what it is for (clinical LAN, service LAN...)."""

    name: str
    role: str


@dataclass(frozen=True)
class FlowRule:
    """One allowed flow: inbound to ``port`` from ``peer``, or outbound to ``port`` at ``peer``."""

    interface: str
    protocol: str
    port: int
    peer: Network | None
    comment: str = ""


@dataclass(frozen=True)
class ListenRule:
    protocol: str
    port: int


@dataclass(frozen=True)
class UsbAllow:
    """A USB device that may be used: vendor and product id, optionally its serial and interface class."""

    vendor: str
    product: str
    serial: str | None = None
    interface_class: str | None = None
    comment: str = ""

    @property
    def label(self) -> str:
        return f"{self.vendor}:{self.product}"


@dataclass(frozen=True)
class ConsoleRule:
    """``disabled``: never; ``maintenance_only``: only while a maintenance ticket is active."""

    mode: str = "maintenance_only"
    port: int | None = None


@dataclass(frozen=True)
class PortPolicy:
    model: str
    version: int
    mode: str
    interfaces: tuple[InterfaceRule, ...]
    inbound: tuple[FlowRule, ...]
    icmp_echo: bool = False
    outbound_default: str = "accept"
    outbound: tuple[FlowRule, ...] = ()
    listen: tuple[ListenRule, ...] = ()
    foreign_tables: str = "report"
    usb_allow: tuple[UsbAllow, ...] = ()
    console: ConsoleRule = ConsoleRule()

    @property
    def enforce(self) -> bool:
        return self.mode == "enforce"

    @property
    def interface_names(self) -> frozenset[str]:
        return frozenset(i.name for i in self.interfaces)

    def allowed_listeners(self) -> frozenset[tuple[str, int]]:
        """(protocol, port) pairs that may listen: every inbound rule's port and the ``listen`` list."""
        return frozenset({(r.protocol, r.port) for r in self.inbound} | {(r.protocol, r.port) for r in self.listen})

    def to_json(self) -> dict[str, Any]:
        def flow(rule: FlowRule, peer_name: str) -> dict[str, Any]:
            value: dict[str, Any] = {"interface": rule.interface, "protocol": rule.protocol, "port": rule.port}
            if rule.peer is not None:
                value[peer_name] = str(rule.peer)
            if rule.comment:
                value["comment"] = rule.comment
            return value

        def usb(entry: UsbAllow) -> dict[str, Any]:
            value: dict[str, Any] = {"vendor": entry.vendor, "product": entry.product}
            for name in ("serial", "interface_class", "comment"):
                if getattr(entry, name):
                    value[name] = getattr(entry, name)
            return value

        console: dict[str, Any] = {"mode": self.console.mode}
        if self.console.port is not None:
            console["port"] = self.console.port
        return {
            "schema": SCHEMA,
            "model": self.model,
            "version": self.version,
            "mode": self.mode,
            "interfaces": [{"name": i.name, "role": i.role} for i in self.interfaces],
            "inbound": [flow(r, "from") for r in self.inbound],
            "icmp_echo": self.icmp_echo,
            "outbound": {"default": self.outbound_default, "allow": [flow(r, "to") for r in self.outbound]},
            "listen": [{"protocol": r.protocol, "port": r.port} for r in self.listen],
            "foreign_tables": self.foreign_tables,
            "usb": {"allow": [usb(u) for u in self.usb_allow]},
            "console": console,
        }

    def digest(self) -> str:
        """SHA-256 of the canonical document: two policies with one version must have one digest."""
        return hashlib.sha256(canonical_json(self.to_json())).hexdigest()

    @classmethod
    def from_json(cls, data: Any) -> PortPolicy:
        """Parse and check a policy document; every fault raises PolicyError naming the field."""
        return _parse_policy(data)


# ---- parsing (each fault names its field) --------------------------------------------------------


def _obj(value: Any, where: str, allowed: Iterable[str], required: Iterable[str] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(f"port policy field {where!r} must be an object")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise PolicyError(f"port policy field {where!r} has unknown fields: {', '.join(unknown)}")
    for name in required:
        if name not in value:
            raise PolicyError(f"port policy field '{where}.{name}' is missing")
    return value


def _str(value: Any, where: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise PolicyError(f"port policy field {where!r} must be {what}")
    return value


def _choice(value: Any, where: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise PolicyError(f"port policy field {where!r} must be one of {', '.join(choices)}")
    assert isinstance(value, str)
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise PolicyError(f"port policy field {where!r} must be an integer from {low} to {high}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise PolicyError(f"port policy field {where!r} must be a list")
    return value


def _network(value: Any, where: str) -> Network | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PolicyError(f"port policy field {where!r} must be an address or CIDR network")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        raise PolicyError(f"port policy field {where!r}: {e}") from e


def _flow(value: Any, where: str, peer_name: str, interfaces: frozenset[str]) -> FlowRule:
    rule = _obj(
        value, where, ("interface", "protocol", "port", peer_name, "comment"), ("interface", "protocol", "port")
    )
    interface = _str(rule["interface"], f"{where}.interface", _IFNAME_RE, "an interface name")
    if interface not in interfaces:
        raise PolicyError(f"port policy field '{where}.interface': {interface!r} is not in 'interfaces'")
    return FlowRule(
        interface=interface,
        protocol=_choice(rule["protocol"], f"{where}.protocol", PROTOCOLS),
        port=_int(rule["port"], f"{where}.port", 1, 65535),
        peer=_network(rule.get(peer_name), f"{where}.{peer_name}"),
        comment=_str(rule.get("comment", ""), f"{where}.comment", _COMMENT_RE, "plain text of at most 100 characters"),
    )


def _usb(value: Any, where: str) -> UsbAllow:
    entry = _obj(value, where, ("vendor", "product", "serial", "interface_class", "comment"), ("vendor", "product"))
    serial = entry.get("serial")
    interface_class = entry.get("interface_class")
    return UsbAllow(
        vendor=_str(entry["vendor"], f"{where}.vendor", _HEX4_RE, "four lowercase hex digits"),
        product=_str(entry["product"], f"{where}.product", _HEX4_RE, "four lowercase hex digits"),
        serial=None if serial is None else _str(serial, f"{where}.serial", _SERIAL_RE, "printable ASCII"),
        interface_class=None
        if interface_class is None
        else _str(interface_class, f"{where}.interface_class", _HEX2_RE, "two lowercase hex digits"),
        comment=_str(entry.get("comment", ""), f"{where}.comment", _COMMENT_RE, "plain text of at most 100 characters"),
    )


_TOP_FIELDS = (
    "schema",
    "model",
    "version",
    "mode",
    "interfaces",
    "inbound",
    "icmp_echo",
    "outbound",
    "listen",
    "foreign_tables",
    "usb",
    "console",
)


def _parse_policy(data: Any) -> PortPolicy:
    doc = _obj(data, "$", _TOP_FIELDS, ("schema", "model", "version", "interfaces", "inbound"))
    if doc["schema"] != SCHEMA:
        raise PolicyError(f"port policy field 'schema' must be {SCHEMA!r}")
    interfaces: list[InterfaceRule] = []
    for i, raw in enumerate(_list(doc["interfaces"], "interfaces")):
        entry = _obj(raw, f"interfaces[{i}]", ("name", "role"), ("name", "role"))
        name = _str(entry["name"], f"interfaces[{i}].name", _IFNAME_RE, "an interface name of at most 15 characters")
        if name == "lo" or name in {x.name for x in interfaces}:
            raise PolicyError(f"port policy field 'interfaces[{i}].name': {name!r} is loopback or listed twice")
        interfaces.append(InterfaceRule(name, _str(entry["role"], f"interfaces[{i}].role", _NAME_RE, "a short name")))
    names = frozenset(i.name for i in interfaces)
    inbound = tuple(_flow(r, f"inbound[{i}]", "from", names) for i, r in enumerate(_list(doc["inbound"], "inbound")))
    outbound = _obj(doc.get("outbound", {}), "outbound", ("default", "allow"))
    listen = []
    for i, raw in enumerate(_list(doc.get("listen", []), "listen")):
        entry = _obj(raw, f"listen[{i}]", ("protocol", "port"), ("protocol", "port"))
        listen.append(
            ListenRule(
                _choice(entry["protocol"], f"listen[{i}].protocol", PROTOCOLS),
                _int(entry["port"], f"listen[{i}].port", 1, 65535),
            )
        )
    usb = _obj(doc.get("usb", {}), "usb", ("allow",))
    console = _obj(doc.get("console", {}), "console", ("mode", "port"))
    icmp_echo = doc.get("icmp_echo", False)
    if not isinstance(icmp_echo, bool):
        raise PolicyError("port policy field 'icmp_echo' must be true or false")
    console_port = console.get("port")
    return PortPolicy(
        model=_str(doc["model"], "model", _MODEL_RE, "a model name"),
        version=_int(doc["version"], "version", 1, 2**53),
        mode=_choice(doc.get("mode", "enforce"), "mode", MODES),
        interfaces=tuple(interfaces),
        inbound=inbound,
        icmp_echo=icmp_echo,
        outbound_default=_choice(outbound.get("default", "accept"), "outbound.default", ("accept", "drop")),
        outbound=tuple(
            _flow(r, f"outbound.allow[{i}]", "to", names)
            for i, r in enumerate(_list(outbound.get("allow", []), "outbound.allow"))
        ),
        listen=tuple(listen),
        foreign_tables=_choice(doc.get("foreign_tables", "report"), "foreign_tables", ("report", "ignore")),
        usb_allow=tuple(_usb(r, f"usb.allow[{i}]") for i, r in enumerate(_list(usb.get("allow", []), "usb.allow"))),
        console=ConsoleRule(
            mode=_choice(console.get("mode", "maintenance_only"), "console.mode", CONSOLE_MODES),
            port=None if console_port is None else _int(console_port, "console.port", 1, 65535),
        ),
    )


# ---- signing, verification and the installed policy ---------------------------------------------


def sign_policy(document: Mapping[str, Any], keys: Sequence[SigningKey]) -> bytes:
    """Check ``document`` and seal it; a malformed policy is never signed."""
    policy = PortPolicy.from_json(dict(document))
    return seal(policy.to_json(), PAYLOAD_TYPE, keys)


def verify_policy(
    data: bytes,
    trusted: Sequence[VerifyKey],
    model: str,
    *,
    installed_version: int | None = None,
    threshold: int = 1,
) -> PortPolicy:
    """Open a signed policy for ``model``; refuse another model and any version below ``installed_version``."""
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"port policy is larger than {MAX_POLICY_BYTES} bytes")
    try:
        document = open_envelope(data, PAYLOAD_TYPE, trusted, threshold=threshold)
    except CryptoError as e:
        raise PolicyError(f"port policy refused: {e}") from e
    policy = PortPolicy.from_json(document)
    if policy.model != model:
        raise PolicyError(f"port policy is for model {policy.model!r}, this device is {model!r}")
    if installed_version is not None and policy.version < installed_version:
        raise PolicyError(
            f"port policy version {policy.version} is older than the installed version {installed_version} (rollback)"
        )
    return policy


class PolicyStore:
    """The installed policy envelope in the device's state folder, replaced atomically.

    A newer version replaces it; the same version is accepted only with the same content, so a
    second, different document signed under an already used number is refused.
    """

    def __init__(self, state_dir: Path, trusted: Sequence[VerifyKey], model: str) -> None:
        self.path = state_dir / POLICY_FILE
        self._trusted = tuple(trusted)
        self._model = model

    def current(self) -> PortPolicy | None:
        """The installed policy, re-verified; None when none is installed."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise PortPolicyError(f"cannot read the installed port policy {self.path}: {e.strerror}") from e
        return verify_policy(data, self._trusted, self._model)

    def install(self, data: bytes) -> PortPolicy:
        """Verify ``data`` against the installed policy and keep it; return the policy now in force."""
        current = self.current()
        policy = verify_policy(data, self._trusted, self._model, installed_version=current.version if current else None)
        if current is not None and policy.version == current.version:
            if policy.digest() != current.digest():
                raise PolicyError(f"port policy version {policy.version} is installed with different content")
            return current
        atomic_write(self.path, data, mode=0o600)
        logger.info("port policy %s version %d installed", policy.model, policy.version)
        return policy


# ---- running commands inside a network namespace ------------------------------------------------


def check_netns(netns: str | None) -> str | None:
    if netns is not None and not _NETNS_RE.match(netns):
        raise PortPolicyError(f"network namespace name {netns!r} is not valid")
    return netns


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``netns`` (through ``ip netns exec``), or as is for the current namespace."""
    check_netns(netns)
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def run_command(argv: Sequence[str], *, stdin: str | None = None, what: str) -> str:
    """Run a system tool; its failure becomes PortPolicyError naming ``what`` and the tool's message."""
    try:
        done = subprocess.run(  # noqa: S603 - argv built here from checked names, no shell
            list(argv), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PortPolicyError(f"{what}: cannot run {argv[0]}: {e}") from e
    if done.returncode != 0:
        raise PortPolicyError(f"{what}: {' '.join(argv[:6])} failed: {done.stderr.strip()[:400]}")
    return done.stdout


# ---- interfaces ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InterfaceState:
    name: str
    up: bool
    operstate: str


def list_interfaces(netns: str | None) -> list[InterfaceState]:
    """Every link in the namespace and whether it is administratively up (``ip -j link``)."""
    prefix = ["ip", "-n", netns] if check_netns(netns) else ["ip"]
    out = run_command([*prefix, "-j", "link", "show"], what="list interfaces")
    try:
        links = json.loads(out)
    except ValueError as e:
        raise PortPolicyError(f"list interfaces: 'ip -j link' printed no JSON: {e}") from e
    return [
        InterfaceState(str(link["ifname"]), "UP" in link.get("flags", []), str(link.get("operstate", "UNKNOWN")))
        for link in links
        if isinstance(link, dict) and "ifname" in link
    ]


def set_interface_down(netns: str | None, name: str) -> None:
    if not _IFNAME_RE.match(name):
        raise PortPolicyError(f"interface name {name!r} is not valid")
    prefix = ["ip", "-n", netns] if check_netns(netns) else ["ip"]
    run_command([*prefix, "link", "set", "dev", name, "down"], what=f"bring {name} down")


def interface_events(policy: PortPolicy, netns: str | None) -> list[ProtectionEvent]:
    """Drift for every up interface the policy does not list; in enforce mode it is brought down too."""
    events: list[ProtectionEvent] = []
    for link in list_interfaces(netns):
        if not link.up or link.name == "lo" or link.name in policy.interface_names:
            continue
        events.append(
            ProtectionEvent(
                "interface",
                "drift",
                "interface_not_in_policy",
                mode=policy.mode,
                object=Object(path=f"net:{link.name}"),
                detail=f"interface {link.name} is up ({link.operstate}) but not in port policy v{policy.version}",
            )
        )
        if policy.enforce:
            set_interface_down(netns, link.name)
            events.append(
                ProtectionEvent(
                    "interface",
                    "applied",
                    "interface_brought_down",
                    mode=policy.mode,
                    object=Object(path=f"net:{link.name}"),
                    detail=f"interface {link.name} brought down",
                )
            )
    return events


# ---- listening sockets (/proc/net/{tcp,tcp6,udp,udp6}) -------------------------------------------

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"
_PROC_NET_FILES = ("tcp", "tcp6", "udp", "udp6")
# One process prints all four tables, each after a marker line, so a namespace costs one exec.
_PROC_NET_SCRIPT = 'for f in tcp tcp6 udp udp6; do echo "## $f"; cat /proc/net/$f 2>/dev/null; done'


@dataclass(frozen=True)
class ListeningSocket:
    protocol: str  # tcp | udp
    address: str
    port: int
    inode: int
    uid: int

    @property
    def endpoint(self) -> str:
        """``tcp:0.0.0.0:22`` or ``udp:[::]:123``: how events name the socket."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.protocol}:{host}:{self.port}"

    @property
    def loopback_only(self) -> bool:
        addr = ipaddress.ip_address(self.address)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            return addr.ipv4_mapped.is_loopback
        return addr.is_loopback


def _decode_address(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` → ("127.0.0.1", 8080): each 32-bit word is printed in host byte order."""
    host, _, port = text.partition(":")
    words = [struct.pack("=I", int(host[i : i + 8], 16)) for i in range(0, len(host), 8)]
    family = socket.AF_INET if len(words) == 1 else socket.AF_INET6
    return socket.inet_ntop(family, b"".join(words)), int(port, 16)


def parse_proc_net(text: str, protocol: str) -> list[ListeningSocket]:
    """The listening sockets in one /proc/net table (TCP in LISTEN, UDP not connected)."""
    wanted = TCP_LISTEN if protocol == "tcp" else UDP_UNCONNECTED
    sockets: list[ListeningSocket] = []
    for number, line in enumerate(text.splitlines()):
        fields = line.split()
        if number == 0 or len(fields) < 10:
            continue
        try:
            if fields[3] != wanted:
                continue
            address, port = _decode_address(fields[1])
            sockets.append(ListeningSocket(protocol, address, port, int(fields[9]), int(fields[7])))
        except (ValueError, struct.error, OSError) as e:
            raise PortPolicyError(f"/proc/net/{protocol} line {number + 1} cannot be read: {e}") from e
    return sockets


def listening_sockets(netns: str | None) -> list[ListeningSocket]:
    """Every TCP and UDP socket waiting for peers inside ``netns``."""
    out = run_command(in_netns(netns, ["sh", "-c", _PROC_NET_SCRIPT]), what="read listening sockets")
    sockets: list[ListeningSocket] = []
    for chunk in out.split("## ")[1:]:
        name, _, body = chunk.partition("\n")
        if name in _PROC_NET_FILES:
            sockets.extend(parse_proc_net(body, name.removesuffix("6")))
    return sockets


def socket_owner(inode: int, proc: Path = Path("/proc")) -> Subject | None:
    """The process holding socket ``inode`` (inode numbers are unique across namespaces)."""
    target = f"socket:[{inode}]"
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                if os.readlink(fd) == target:
                    exe: str | None
                    try:
                        exe = os.readlink(pid_dir / "exe")
                    except OSError:
                        exe = None
                    return Subject(pid=int(pid_dir.name), exe=exe)
        except OSError:
            continue  # the process ended or hides its fds
    return None


def socket_events(policy: PortPolicy, netns: str | None, *, console_active: bool = False) -> list[ProtectionEvent]:
    """Drift for every listener reachable from outside that the policy does not expect.

    Loopback-only listeners are not reachable from another host, so they are left alone. The
    console port is expected only while a maintenance ticket is active (``console_active``).
    """
    allowed = set(policy.allowed_listeners())
    console_port = policy.console.port
    events: list[ProtectionEvent] = []
    seen: set[tuple[str, str, int]] = set()
    for sock in listening_sockets(netns):
        key = (sock.protocol, sock.address, sock.port)
        if sock.loopback_only or key in seen:
            continue
        seen.add(key)
        if sock.protocol == "tcp" and sock.port == console_port and policy.console.mode == "maintenance_only":
            if console_active:
                continue
            category, rule = "console", "console_port_without_ticket"
        elif (sock.protocol, sock.port) in allowed:
            continue
        else:
            category, rule = "port", "listening_port_not_in_policy"
        events.append(
            ProtectionEvent(
                category,
                "drift",
                rule,
                mode=policy.mode,
                subject=socket_owner(sock.inode),
                object=Object(path=sock.endpoint),
                detail=f"{sock.protocol} {sock.address} port {sock.port} is listening (uid {sock.uid})",
            )
        )
    return events


# ---- the service console (PA-3 under PA-1) -------------------------------------------------------


@dataclass(frozen=True)
class ConsoleGrant:
    """A console session the agent opened: which maintenance session, how authorised, until when."""

    session_id: str
    method: str
    not_after: int


class ConsoleGate:
    """Keeps the service console off unless the policy allows it and a maintenance ticket is active.

    The agent calls :meth:`open` right after the console accepted a ticket or a maintenance code
    (with that authorisation's session, method and end), and :meth:`close` when the console session
    ends. The state lives in a small file so the drift check, run by another process or after a
    restart, sees a console left open past its ticket.
    """

    def __init__(self, policy: PortPolicy, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self._policy = policy
        self.path = state_dir / CONSOLE_STATE_FILE
        self._clock = clock

    def open(self, session_id: str, method: str, not_after: int) -> ConsoleGrant:
        """Record an opened console; PolicyError if the policy forbids it or the authorisation has ended."""
        if self._policy.console.mode == "disabled":
            raise PolicyError(f"port policy v{self._policy.version} disables the service console")
        if not_after <= int(self._clock()):
            raise PolicyError(f"the maintenance authorisation of session {session_id} has ended")
        grant = ConsoleGrant(session_id, method, not_after)
        state = {"session_id": session_id, "method": method, "not_after": not_after}
        atomic_write(self.path, json.dumps(state, sort_keys=True).encode("utf-8"), mode=0o600)
        return grant

    def close(self) -> None:
        self.path.unlink(missing_ok=True)

    def grant(self) -> ConsoleGrant | None:
        """The console session on record, or None; a damaged record counts as an open console."""
        try:
            raw = json.loads(self.path.read_text("utf-8"))
            return ConsoleGrant(str(raw["session_id"]), str(raw["method"]), int(raw["not_after"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return ConsoleGrant("unknown", "damaged_record", 0)

    def active(self) -> bool:
        """True while a console session is on record within its authorised time."""
        grant = self.grant()
        return grant is not None and grant.not_after > int(self._clock()) and self._policy.console.mode != "disabled"

    def events(self) -> list[ProtectionEvent]:
        """Drift when a console is on record past its ticket, or at all under a policy that disables it."""
        grant = self.grant()
        if grant is None or self.active():
            return []
        rule = "console_disabled_by_policy" if self._policy.console.mode == "disabled" else "console_without_ticket"
        return [
            ProtectionEvent(
                "console",
                "drift",
                rule,
                mode=self._policy.mode,
                object=Object(path=str(self.path)),
                detail=f"service console of session {grant.session_id} ({grant.method}) is open without a ticket",
            )
        ]
