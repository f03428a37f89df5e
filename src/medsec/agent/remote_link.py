"""The agent's side of remote maintenance: attach to the gateway only while a session is pending (RA-1, RA-4).

Remote access is off unless ``ROOT/etc/medsec/remote.json`` turns it on::

    {
      "approval_key": "<base64 Ed25519 key of the server's remote-approval.key>",
      "enabled": true,
      "gateway": {"host": "10.250.1.1", "port": 2222, "host_key": "ssh-ed25519 AAAA..."},
      "source_address": "10.250.1.2",
      "interface": "eth1",
      "poll_seconds": 30
    }

The agent asks ``GET /api/v1/remote/devices/{serial}/pending`` (signed like its director requests)
whether a session of this device may open now. If one may, it dials out to the gateway with a
:class:`~medsec.remote.device_side.DeviceEndpoint` bound to the service LAN; the endpoint checks
every ticket itself against the configured approval key, so the server's answer only decides
*when* to connect, never *whether* a session is allowed. With nothing pending the link is closed.

The same answer names the newest access-log checkpoint the server cosigned for this device. The
:class:`SessionLogUploader` then sends the session entries that checkpoint covers, with inclusion
proofs against it (:mod:`medsec.remote.session_log`), so the service report can list what the
device itself logged (RA-2, RA-5). Each entry is sent once; ``state/remote-log-upload.json``
remembers how far the log was sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from medsec.atomic_file import atomic_write
from medsec.crypto.keys import SigningKey, VerifyKey
from medsec.errors import AuditLogError, ConfigError, SignatureError
from medsec.protocol import sign_director_request
from medsec.remote.device_side import AccessRecorder, DeviceEndpoint, DeviceLinkConfig, RestrictedShell
from medsec.remote.errors import AccessRefused, GatewayTransportError, RemoteSessionError
from medsec.remote.session_log import SessionLogSource, SessionLogUpload, build_uploads, session_entries
from medsec.remote.ticket import NonceStore

if TYPE_CHECKING:
    from medsec.agent.access_log import AccessLog
    from medsec.agent.config import AgentConfig

logger = logging.getLogger(__name__)

REMOTE_CONFIG_RELPATH = Path("etc/medsec/remote.json")
MAX_REMOTE_CONFIG_BYTES = 16 * 1024
MAX_PENDING_BYTES = 64 * 1024
DEFAULT_POLL_SECONDS = 30
MAX_NOTE_BYTES = 8 * 1024
UPLOAD_STATE_FILE = "remote-log-upload.json"
_FIELDS = frozenset({"approval_key", "enabled", "gateway", "source_address", "interface", "poll_seconds"})


@dataclass(frozen=True)
class RemoteLinkConfig:
    approval_key: VerifyKey
    enabled: bool = False
    gateway_host: str | None = None
    gateway_port: int = 2222
    gateway_host_key: str | None = None
    source_address: str | None = None
    interface: str | None = None
    poll_seconds: int = DEFAULT_POLL_SECONDS

    @classmethod
    def from_mapping(cls, data: Any) -> RemoteLinkConfig:
        if not isinstance(data, dict):
            raise ConfigError("the top level must be a JSON object")
        unknown = set(data) - _FIELDS
        if unknown:
            raise ConfigError(f"unknown fields {sorted(unknown)}")
        try:
            approval_key = VerifyKey.from_base64(str(data["approval_key"]))
        except KeyError as e:
            raise ConfigError("field 'approval_key' is required") from e
        except SignatureError as e:
            raise ConfigError(f"field 'approval_key': {e}") from e
        enabled = data.get("enabled", False)
        if not isinstance(enabled, bool):
            raise ConfigError("field 'enabled' must be true or false")
        gateway = data.get("gateway") or {}
        if not isinstance(gateway, dict):
            raise ConfigError("field 'gateway' must be an object")
        host, port, host_key = gateway.get("host"), gateway.get("port", 2222), gateway.get("host_key")
        if enabled and not (isinstance(host, str) and isinstance(host_key, str) and host_key.startswith("ssh-")):
            raise ConfigError("with 'enabled', 'gateway' needs 'host' and the pinned 'host_key'")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ConfigError("field 'gateway.port' must be a TCP port")
        poll = data.get("poll_seconds", DEFAULT_POLL_SECONDS)
        if not isinstance(poll, int) or isinstance(poll, bool) or not 1 <= poll <= 3600:
            raise ConfigError("field 'poll_seconds' must be 1 to 3600")
        for name in ("source_address", "interface"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise ConfigError(f"field {name!r} must be a string")
        return cls(
            approval_key=approval_key,
            enabled=enabled,
            gateway_host=host,
            gateway_port=port,
            gateway_host_key=host_key,
            source_address=data.get("source_address"),
            interface=data.get("interface"),
            poll_seconds=poll,
        )

    @classmethod
    def load(cls, root: Path) -> RemoteLinkConfig | None:
        """The settings, or None when the device has no ``remote.json`` (remote access off)."""
        path = root / REMOTE_CONFIG_RELPATH
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_REMOTE_CONFIG_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from e
        if len(raw) > MAX_REMOTE_CONFIG_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_REMOTE_CONFIG_BYTES} bytes")
        try:
            return cls.from_mapping(json.loads(raw))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


class MaintenanceEndpoint(Protocol):
    """What the link needs of a device endpoint (``DeviceEndpoint`` fits; tests pass a simulator)."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...


EndpointFactory = Callable[[DeviceLinkConfig], MaintenanceEndpoint]


def device_endpoint_factory(
    key: SigningKey, shell: RestrictedShell, access_log: AccessRecorder, nonces: NonceStore
) -> EndpointFactory:
    def make(config: DeviceLinkConfig) -> MaintenanceEndpoint:
        return DeviceEndpoint(config, key, shell, access_log, nonces)

    return make


class DeviceLogReader(SessionLogSource, Protocol):
    """What the uploader reads of the access log (``AccessLog`` fits)."""

    def check_own_checkpoint(self, note: str) -> int: ...


class SessionLogUploader:
    """Sends session entries of the access log that a server-cosigned checkpoint covers (RA-2, RA-5).

    Only a checkpoint the server cosigned is worth proving against: the server checks every proof
    against the root it cosigned itself. The position is saved only after every upload up to the
    checkpoint went through, so a crash or an unreachable server means a resend, never a gap; the
    server answers ``replayed_upload`` for entries it already holds, which counts as delivered.
    """

    def __init__(
        self,
        serial: str,
        key: SigningKey,
        source: DeviceLogReader,
        recorder: AccessRecorder,
        client: httpx.Client,
        server_url: str,
        state_file: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._serial = serial
        self._key = key
        self._source = source
        self._recorder = recorder
        self._client = client
        self._url = f"{server_url.rstrip('/')}/api/v1/remote/devices/{serial}/log-entries"
        self._state_file = state_file
        self._clock = clock

    def position(self) -> int:
        """How far the log has been sent (entries below this index); 0 when unknown."""
        try:
            value = json.loads(self._state_file.read_bytes()).get("position", 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, AttributeError) as e:
            # Resending is harmless (the server keeps each entry once), losing entries is not.
            logger.warning("cannot read %s (%s); sending the session entries again", self._state_file, e)
            return 0
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    def upload(self, cosigned_note: str) -> int:
        """Send the session entries below the size of ``cosigned_note``; return how many the server stored."""
        size = self._source.check_own_checkpoint(cosigned_note)
        start = self.position()
        if start > size:  # a smaller log than what was sent: a new log after re-enrolment
            start = 0
        if start == size:
            return 0
        stored = 0
        now = int(self._clock())
        for session, indexes in session_entries(self._source, start, size).items():
            for upload in build_uploads(self._source, self._serial, session, indexes, size, now):
                stored += self._send(upload)
        atomic_write(self._state_file, json.dumps({"position": size}).encode("ascii") + b"\n")
        return stored

    def _send(self, upload: SessionLogUpload) -> int:
        try:
            response = self._client.post(self._url, json=upload.sign(self._key))
        except httpx.HTTPError as e:
            raise GatewayTransportError("server_unreachable", f"cannot send the session log entries: {e}") from e
        if response.status_code == 200:
            return len(upload.entries)
        try:
            code = str(response.json().get("error", "unknown"))[:64]
        except (ValueError, AttributeError):
            code = "unknown"
        if code == "replayed_upload":
            return 0
        if response.status_code >= 500 or code == "stale_upload":
            raise GatewayTransportError("server_refused", f"the server answered {response.status_code} ({code})")
        # A refusal the device cannot fix by resending: keep it in the access log and move on.
        self._recorder.record(
            "remote.log_upload_refused",
            for_session=upload.session,
            code=code,
            checkpoint_size=upload.checkpoint_size,
            entries=len(upload.entries),
        )
        return 0


class RemoteLink:
    """Polls the server for pending sessions and keeps one endpoint open while any is pending."""

    def __init__(
        self,
        serial: str,
        settings: RemoteLinkConfig,
        key: SigningKey,
        access_log: AccessRecorder,
        client: httpx.Client,
        server_url: str,
        endpoints: EndpointFactory,
        transfer_dir: Path,
        clock: Callable[[], float] = time.time,
        *,
        uploader: SessionLogUploader | None = None,
    ) -> None:
        self.serial = serial
        self.settings = settings
        self._key = key
        self._log = access_log
        self._client = client
        self._server_url = server_url.rstrip("/")
        self._endpoints = endpoints
        self._transfer_dir = transfer_dir
        self._clock = clock
        self._uploader = uploader
        self.endpoint: MaintenanceEndpoint | None = None
        self.cosigned_checkpoint: str | None = None

    def link_config(self) -> DeviceLinkConfig:
        s = self.settings
        assert s.gateway_host is not None and s.gateway_host_key is not None
        return DeviceLinkConfig(
            serial=self.serial,
            gateway_host=s.gateway_host,
            gateway_port=s.gateway_port,
            gateway_host_key=s.gateway_host_key,
            approval_key=s.approval_key,
            transfer_dir=self._transfer_dir,
            source_address=s.source_address,
            interface=s.interface,
        )

    def pending(self) -> list[str]:
        """Session ids the server says may open now; raise GatewayTransportError or AccessRefused."""
        path = f"/api/v1/remote/devices/{self.serial}/pending"
        headers = sign_director_request(self._key, self.serial, path, int(self._clock()))
        try:
            response = self._client.get(self._server_url + path, headers=headers)
        except httpx.HTTPError as e:
            raise GatewayTransportError("server_unreachable", f"cannot ask the server for sessions: {e}") from e
        if response.status_code != 200 or len(response.content) > MAX_PENDING_BYTES:
            raise GatewayTransportError("server_refused", f"the server answered {response.status_code}")
        try:
            body = response.json()
            sessions = [str(s) for s in body["sessions"]][:16]
            server_key = str(body["approval_key"])
            note = body.get("cosigned_checkpoint")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise GatewayTransportError("server_refused", "the pending answer is malformed") from e
        if isinstance(note, str) and len(note) <= MAX_NOTE_BYTES:
            self.cosigned_checkpoint = note
        if server_key != self.settings.approval_key.to_base64():
            # The device trusts only its configured approval key; a different one is worth an alarm.
            raise AccessRefused("approval_key_mismatch", "the server names an approval key this device does not trust")
        return sessions

    async def step(self) -> None:
        """One poll: open the endpoint when a session is pending, close it when none is."""
        if not self.settings.enabled:
            return
        try:
            sessions = await asyncio.to_thread(self.pending)
        except AccessRefused as e:
            self._log.record("remote.refused", code=e.code, reason=str(e))
            return
        except GatewayTransportError as e:
            logger.warning("remote maintenance poll failed: %s", e)
            return
        if sessions and self.endpoint is None:
            endpoint = self._endpoints(self.link_config())
            try:
                await endpoint.connect()
            except RemoteSessionError as e:
                self._log.record("remote.link_failed", code=e.code, reason=str(e)[:300])
            else:
                self.endpoint = endpoint
        elif not sessions and self.endpoint is not None:
            await self.close()
        await self.upload_session_entries()

    async def upload_session_entries(self) -> None:
        """Send the session entries the newest cosigned checkpoint covers (no-op without an uploader)."""
        note = self.cosigned_checkpoint
        if self._uploader is None or note is None:
            return
        try:
            stored = await asyncio.to_thread(self._uploader.upload, note)
        except GatewayTransportError as e:
            logger.warning("session log upload failed, will retry: %s", e)
        except AuditLogError as e:
            # The server named a checkpoint this log never signed or no longer matches: worth an alarm.
            self._log.record("remote.refused", code="foreign_cosigned_checkpoint", reason=str(e)[:300])
            self.cosigned_checkpoint = None
        else:
            if stored:
                logger.info("sent %d session log entries to the server", stored)

    async def close(self) -> None:
        if self.endpoint is not None:
            endpoint, self.endpoint = self.endpoint, None
            await endpoint.close()
            self._log.record("remote.link_down")

    async def run(self, stop: threading.Event, tick: float = 0.5) -> None:
        """Poll until ``stop`` (set by the agent's main thread) is set, then close the link."""
        try:
            while not stop.is_set():
                await self.step()
                deadline = self._clock() + self.settings.poll_seconds
                while not stop.is_set() and self._clock() < deadline:
                    await asyncio.sleep(tick)
        finally:
            await self.close()


def start_remote_link(config: AgentConfig, access_log: AccessLog, stop: threading.Event) -> threading.Thread | None:
    """Start the link in its own thread if ``remote.json`` enables it; None when remote access is off."""
    from medsec.agent.client import make_http_client
    from medsec.agent.console import device_commands
    from medsec.agent.status import agent_status
    from medsec.remote.ticket import FileNonceStore, nonce_store_path

    settings = RemoteLinkConfig.load(config.root)
    if settings is None or not settings.enabled:
        logger.info("remote maintenance is off on this device")
        return None
    layout = config.layout
    key = SigningKey.load(layout.key_file)
    shell = RestrictedShell(device_commands(lambda: agent_status(config.root), config.version_file))
    nonces = FileNonceStore(nonce_store_path(layout.state_dir), int(time.time()))
    client = make_http_client(config.ca_file)
    link = RemoteLink(
        config.serial,
        settings,
        key,
        access_log,
        client,
        config.server_url,
        device_endpoint_factory(key, shell, access_log, nonces),
        layout.state_dir / "transfer",
        uploader=SessionLogUploader(
            config.serial,
            key,
            access_log,
            access_log,
            client,
            config.server_url,
            layout.state_dir / UPLOAD_STATE_FILE,
        ),
    )

    def main() -> None:
        try:
            asyncio.run(link.run(stop))
        except Exception:
            logger.exception("the remote maintenance link stopped")
        finally:
            client.close()

    thread = threading.Thread(target=main, name="medsec-remote-link", daemon=True)
    thread.start()
    return thread
