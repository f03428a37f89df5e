"""``medsec trace``: the requirement traceability matrix from a saved test run (SM-, PA-, RA-, RL- IDs)."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from medsec.atomic_file import atomic_write
from medsec.cli.output import console, errors_to_exit, render

app = typer.Typer(help="Requirement traceability: requirement → features → tests.", no_args_is_help=True)


class MatrixFormat(StrEnum):
    HTML = "html"
    CSV = "csv"
    JSON = "json"


@app.command("matrix")
def matrix(
    results: Annotated[
        Path, typer.Option("--results", help="matrix.json written by a test run (build/traceability/matrix.json)")
    ],
    format_: Annotated[MatrixFormat, typer.Option("--format", help="html, csv or json")] = MatrixFormat.HTML,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file to write (default: stdout)")] = None,
    gate: Annotated[
        bool, typer.Option("--gate", help="exit 1 when a requirement has no passing test in these results")
    ] = False,
) -> None:
    """Regenerate the matrix from a results file against the current catalogue and features map."""
    from medsec.trace.catalogue import load_catalogue
    from medsec.trace.matrix import build_matrix, read_results, render_csv, render_html, to_json
    from medsec.trace.matrix import gate as run_gate

    with errors_to_exit():
        tests, generated_at = read_results(results)
        built = build_matrix(load_catalogue(), tests, generated_at)
        if format_ is MatrixFormat.HTML:
            text = render_html(built)
        elif format_ is MatrixFormat.CSV:
            text = render_csv(built)
        else:
            import json

            text = json.dumps(to_json(built), ensure_ascii=False, indent=2, sort_keys=True) + "\n"
        if output is None:
            sys.stdout.write(text)
        else:
            atomic_write(output, text.encode("utf-8"))
            console.print(f"wrote {output}", highlight=False)
        if gate:
            run_gate(built)


@app.command("requirements")
def requirements(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List the requirement catalogue with the features that implement each requirement."""
    from medsec.trace.catalogue import load_catalogue

    with errors_to_exit(as_json):
        catalogue = load_catalogue()
        out = [
            {
                "id": r.id,
                "group": r.group.en,
                "text": r.text,
                "features": [f.name for f in catalogue.features_for(r.id)],
            }
            for r in catalogue.requirements
        ]

    def human() -> None:
        for r in out:
            console.print(f"[bold]{r['id']}[/] {r['text']}", highlight=False)
            console.print(f"  features: {', '.join(r['features']) or '-'}", highlight=False)

    render(as_json, out, human)
