"""``medsec gateway``: the maintenance SSH gateway over the server's database (RA-1)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Annotated

import asyncssh
import typer

from medsec.cli.output import console, errors_to_exit
from medsec.crypto.keys import write_private_file
from medsec.remote.gateway import Gateway
from medsec.server.context import build_context
from medsec.server.remote_authority import DatabaseSessionAuthority, load_remote_keys
from medsec.server.settings import Settings

logger = logging.getLogger(__name__)

HOST_KEY_FILE = "gateway-host.key"
# RA-1: a revoked session is cut within 5 s; poll well inside that.
REVOCATION_POLL = 1.0


def load_host_key(keys_dir: Path) -> asyncssh.SSHKey:
    path = keys_dir / HOST_KEY_FILE
    if not path.exists():
        write_private_file(path, asyncssh.generate_private_key("ssh-ed25519").export_private_key("openssh"))
    return asyncssh.read_private_key(path)


async def run_gateway(
    settings: Settings,
    *,
    engineer_host: str,
    engineer_port: int,
    device_host: str,
    device_port: int,
    stop: asyncio.Event,
) -> None:
    ctx = build_context(settings)
    try:
        keys = load_remote_keys(settings)
        recordings = settings.data_dir / "recordings"
        recordings.mkdir(parents=True, exist_ok=True)
        gateway = Gateway(
            DatabaseSessionAuthority(ctx, keys),
            keys.ca.public_key,
            load_host_key(settings.keys_dir),
            recordings,
            revocation_poll=REVOCATION_POLL,
        )
        eng, dev = await gateway.start(engineer_host, engineer_port, device_host, device_port)
        console.print(
            f"gateway: engineers on {engineer_host}:{eng}, devices on {device_host}:{dev}\n"
            f"host key: {gateway.host_key_line()}\nCA: {keys.ca.public_key_line()}",
            highlight=False,
        )
        try:
            await stop.wait()
        finally:
            await gateway.close()
    finally:
        ctx.close()


def gateway(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="the server's data directory (keys, database)")],
    engineer_host: Annotated[str, typer.Option("--engineer-host")] = "127.0.0.1",
    engineer_port: Annotated[int, typer.Option("--engineer-port")] = 2222,
    device_host: Annotated[str, typer.Option("--device-host", help="address on the service network")] = "127.0.0.1",
    device_port: Annotated[int, typer.Option("--device-port")] = 2223,
) -> None:
    """Run the maintenance SSH gateway: engineers with plain ssh, devices dialling out."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with errors_to_exit():
        settings = Settings(data_dir=data_dir)

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                # Event loops without Unix signal support raise here; Ctrl-C then ends asyncio.run instead.
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, stop.set)
            await run_gateway(
                settings,
                engineer_host=engineer_host,
                engineer_port=engineer_port,
                device_host=device_host,
                device_port=device_port,
                stop=stop,
            )

        asyncio.run(main())
