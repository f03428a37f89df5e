"""pytest plugin: the requirement traceability matrix and its gate.

Collects the requirement IDs of every test (``@pytest.mark.req("RA-3")`` markers, on the test, its class
or module, and IDs spelled in test names like ``test_ra3_...``) and the outcome of every test, and writes
``matrix.csv``, ``matrix.html`` and ``matrix.json`` into ``--traceability-dir`` (default
``build/traceability``; an empty value writes nothing) when the session ends.

``--traceability-gate`` (what ``make test`` passes) fails the session, naming every requirement that has no
passing test; a skipped test does not count. With ``--collect-only`` the gate asks only whether each
requirement has a marked test at all, which lists the gaps without running anything.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from medsec.trace.catalogue import Catalogue, ids_in_test_name, load_catalogue
from medsec.trace.errors import GateFailed, TraceError
from medsec.trace.matrix import CaseResult, Matrix, Outcome, build_matrix, gate, write_matrix

DEFAULT_DIR = "build/traceability"
REPORT_PROPERTY = "requirements"
_RANK = {Outcome.NOT_RUN: 0, Outcome.PASSED: 1, Outcome.SKIPPED: 2, Outcome.FAILED: 3}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("traceability", "requirement traceability matrix")
    group.addoption(
        "--traceability-gate",
        action="store_true",
        default=False,
        help="fail the session when a requirement (SM-, PA-, RA-, RL-) has no passing test",
    )
    group.addoption(
        "--traceability-dir",
        default=DEFAULT_DIR,
        help=f"where matrix.csv/.html/.json are written (default {DEFAULT_DIR}; empty: not written)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "req(id): the handbook requirement (SM-, PA-, RA-, RL-) a test covers")
    if not hasattr(config, "workerinput"):  # only the controlling process writes the matrix
        config.pluginmanager.register(TraceabilityRecorder(config), "medsec-traceability")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Carry each test's IDs in its reports: with ``-n`` (pytest-xdist) the workers collect, not the
    controlling process that writes the matrix."""
    for item in items:
        if reqs := requirements_of(item):
            item.user_properties.append((REPORT_PROPERTY, reqs))


def requirements_of(item: pytest.Item) -> tuple[str, ...]:
    """Marker IDs (closest first: test, class, module) plus IDs in the test's name."""
    found: list[str] = []
    for mark in item.iter_markers("req"):
        if len(mark.args) != 1 or not isinstance(mark.args[0], str) or mark.kwargs:
            raise pytest.UsageError(f"{item.nodeid}: use @pytest.mark.req('RA-3'), one ID per marker")
        found.append(mark.args[0].strip())
    found.extend(ids_in_test_name(item.name))
    return tuple(dict.fromkeys(found))


class TraceabilityRecorder:
    """Remembers the IDs and the worst outcome of each test, and writes the matrix at the end."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.requirements: dict[str, tuple[str, ...]] = {}
        self.outcomes: dict[str, Outcome] = {}
        self.matrix: Matrix | None = None
        self.written: tuple[Path, ...] = ()
        self.failure: GateFailed | None = None
        self.error: TraceError | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            self.requirements[item.nodeid] = requirements_of(item)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == REPORT_PROPERTY:
                self.requirements.setdefault(report.nodeid, tuple(value))
        outcome = _outcome_of(report)
        if outcome is None:
            return
        before = self.outcomes.get(report.nodeid, Outcome.NOT_RUN)
        if _RANK[outcome] > _RANK[before]:
            self.outcomes[report.nodeid] = outcome

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        try:
            catalogue = load_catalogue()
            self.matrix = self._build(catalogue)
            folder = self.config.getoption("traceability_dir")
            if folder:
                path = Path(folder)
                self.written = write_matrix(self.matrix, path if path.is_absolute() else self.config.rootpath / path)
        except TraceError as e:
            self.error = e
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
            return
        if not self.config.getoption("traceability_gate"):
            return
        try:
            gate(self.matrix, collect_only=bool(self.config.getoption("collectonly")))
        except GateFailed as e:
            self.failure = e
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _build(self, catalogue: Catalogue) -> Matrix:
        results = [
            CaseResult(nodeid, reqs, self.outcomes.get(nodeid, Outcome.NOT_RUN))
            for nodeid, reqs in sorted(self.requirements.items())  # the same order whatever the workers did
            if reqs
        ]
        return build_matrix(catalogue, results, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        tr = terminalreporter
        if self.error is not None:
            tr.write_sep("=", "traceability error", red=True)
            tr.write_line(self.error.diagnostics())
            return
        if self.matrix is None:
            return
        collect_only = bool(self.config.getoption("collectonly"))
        tr.write_sep("-", "requirement traceability")
        without = self.matrix.without_marked_test() if collect_only else self.matrix.without_passing_test()
        label = "without a marked test" if collect_only else "without a passing test"
        tr.write_line(f"{len(self.matrix.rows)} requirements; {label}: {', '.join(without) or 'none'}")
        for path in self.written:
            tr.write_line(f"wrote {path}")
        if self.failure is not None:
            tr.write_sep("=", "traceability gate FAILED", red=True)
            for rid in self.failure.missing:
                row = next(r for r in self.matrix.rows if r.requirement.id == rid)
                tr.write_line(f"{rid}: {label} ({row.coverage.value}) - {row.requirement.text}", red=True)
            for rid in self.failure.unknown:
                tr.write_line(f"{rid}: cited by a test but not in the requirement catalogue", red=True)


def _outcome_of(report: pytest.TestReport) -> Outcome | None:
    """The outcome a report phase contributes; an expected failure (xfail) proves nothing, so it is skipped."""
    if report.failed:
        return Outcome.FAILED
    if report.skipped:
        return Outcome.SKIPPED
    if report.when != "call":
        return None
    if hasattr(report, "wasxfail"):  # a non-strict xpass: not evidence either
        return Outcome.SKIPPED
    return Outcome.PASSED
