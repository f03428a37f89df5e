"""Rendering for people (Rich) and machines (``--json``), and error-to-exit-code mapping."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console

from medsec.errors import Error

console = Console()
err_console = Console(stderr=True)


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str) + "\n")


@contextmanager
def errors_to_exit(as_json: bool = False) -> Iterator[None]:
    """Turn a medsec Error into its diagnostics on stderr and exit code 1."""
    try:
        yield
    except Error as e:
        if as_json:
            emit_json({"ok": False, "error": type(e).__name__, "detail": e.diagnostics()})
        else:
            err_console.print(f"[bold red]error:[/] {e.diagnostics()}", highlight=False)
        raise typer.Exit(1) from e


def render(as_json: bool, value: Any, human: Callable[[], None]) -> None:
    if as_json:
        emit_json(value)
    else:
        human()
