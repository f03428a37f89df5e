"""``medsec agent``: the device daemon."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from medsec.cli.output import console, emit_json, errors_to_exit


def agent(
    root: Annotated[Path, typer.Option("--root", help="the device root folder (config in ROOT/etc/medsec/agent.json)")],
    status: Annotated[bool, typer.Option("--status", help="print the agent's state and exit")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output (with --status)")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log debug messages")] = False,
    local_console: Annotated[
        bool, typer.Option("--console", help="open the local service console (PA-3); the agent must be stopped")
    ] = False,
    ticket: Annotated[
        Path | None, typer.Option("--ticket", help="with --console: a hospital-signed session ticket file")
    ] = None,
    session: Annotated[str | None, typer.Option("--session", help="with --console: the session id")] = None,
    code: Annotated[
        str | None, typer.Option("--code", help="with --console: the one-time local maintenance code")
    ] = None,
    supervise: Annotated[
        bool,
        typer.Option("--supervise", help="run the agent as a child process and restart it whenever it dies (RL-1)"),
    ] = False,
) -> None:
    """Run the device agent: enroll once, then send signed check-ins and keep the device access log."""
    from medsec.agent.config import AgentConfig
    from medsec.agent.daemon import run_agent
    from medsec.agent.status import agent_status

    with errors_to_exit(as_json):
        if local_console:
            import sys

            from medsec.agent.console import open_console_and_serve

            open_console_and_serve(
                root,
                ticket_text=ticket.read_text("utf-8") if ticket is not None else None,
                session_id=session,
                code=code,
                lines=sys.stdin,
                out=sys.stdout,
            )
            return
        if status:
            info = agent_status(root)
            if as_json:
                emit_json(info)
            else:
                for k, v in info.items():
                    console.print(f"{k}: {v}", highlight=False)
            return
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.INFO,
            format=f"%(asctime)s {'supervisor' if supervise else 'agent'}[{root.name}] %(levelname)s %(message)s",
        )
        config = AgentConfig.load(root)  # a broken config fails here, not in a restart loop
        if supervise:
            from medsec.agent.supervisor import agent_command, run_supervisor

            run_supervisor(agent_command(config.root, verbose=verbose))
            return
        run_agent(config)
