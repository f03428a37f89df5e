"""The features map tells the truth: every module it names exists and every command is a real command."""

from __future__ import annotations

import importlib.util
from typing import Any

import typer.main

from medsec.cli.main import app
from medsec.trace.catalogue import load_catalogue


def _command_paths() -> set[str]:
    root = typer.main.get_command(app)
    out: set[str] = set()

    def walk(cmd: Any, prefix: str) -> None:
        out.add(prefix)
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            walk(sub, f"{prefix} {name}")

    walk(root, "medsec")
    return out


def test_every_feature_module_exists() -> None:
    missing = [
        f"{f.name}: {m}" for f in load_catalogue().features for m in f.modules if importlib.util.find_spec(m) is None
    ]
    assert missing == []


def test_every_feature_command_is_a_medsec_command() -> None:
    known = _command_paths()
    missing = [f"{f.name}: {c}" for f in load_catalogue().features for c in f.commands if c not in known]
    assert missing == []


def test_unknown_module_would_be_noticed() -> None:
    assert importlib.util.find_spec("medsec.server.no_such_module") is None
    assert "medsec no-such-command" not in _command_paths()


def test_every_requirement_is_served_by_a_feature() -> None:
    catalogue = load_catalogue()
    assert [r.id for r in catalogue.requirements if not catalogue.features_for(r.id)] == []
