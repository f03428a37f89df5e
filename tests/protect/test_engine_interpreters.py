"""Which file an interpreter loads as its script (RL-3): the command-line rule and its attacks.

The pure rule (:func:`medsec.protect.engine.script_argument`) is tested over the option forms of
python, the shells and perl; the kernel tests run the real Python and shell interpreters against
files on a dedicated tmpfs mount (the only thing marked with fanotify).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medsec.protect.engine import Engine, script_argument
from medsec.protect.events import ProtectionEvent
from medsec.protect.policy import parse_document

from .conftest import policy_document

PYTHON = os.path.realpath(sys.executable)
SHELL = os.path.realpath(shutil.which("bash") or "/bin/bash")


# -- the rule on its own ---------------------------------------------------------------------------------


@pytest.mark.req("RL-3")
@pytest.mark.parametrize(
    ("argv", "script"),
    [
        (["python3", "app.py", "--config", "data.json"], "app.py"),
        (["python3", "-u", "-B", "app.py", "data.json"], "app.py"),
        (["python3", "-W", "ignore", "app"], "app"),
        (["python3", "-Wignore", "app"], "app"),
        (["python3", "-X", "utf8", "-X", "dev", "app"], "app"),
        (["python3", "-uW", "error", "app"], "app"),
        (["python3", "--check-hash-based-pycs", "always", "app"], "app"),
        (["python3", "--", "-app"], "-app"),
        (["python3", "-I", "-E", "-s", "app"], "app"),
        (["python3", "-c", "print(1)", "app.py"], None),
        (["python3", "-Ic", "print(1)"], None),
        (["python3", "-m", "clinical", "--config", "/opt/etc/clinical.json"], None),
        (["python3", "-mclinical", "x.py"], None),
        (["python3", "-", "app.py"], None),
        (["python3"], None),
        (["python3", "-u"], None),
    ],
)
def test_python_script_argument(argv: list[str], script: str | None) -> None:
    assert script_argument(argv, "/usr/bin/python3.11") == script


@pytest.mark.req("RL-3")
@pytest.mark.parametrize(
    ("argv", "script"),
    [
        (["bash", "job", "data.txt"], "job"),
        (["bash", "-e", "-o", "pipefail", "job"], "job"),
        (["bash", "-eo", "pipefail", "job"], "job"),
        (["bash", "+o", "posix", "job"], "job"),
        (["bash", "-O", "extglob", "job"], "job"),
        (["bash", "--norc", "--rcfile", "rc", "job"], "job"),
        (["bash", "--", "job"], "job"),
        (["bash", "-", "job"], "job"),
        (["bash", "-c", ". ./job", "job"], None),
        (["bash", "-ec", "true"], None),
        (["bash", "-s", "job"], None),
    ],
)
def test_shell_script_argument(argv: list[str], script: str | None) -> None:
    assert script_argument(argv, "/usr/bin/bash") == script
    assert script_argument(["sh", *argv[1:]], "/usr/bin/dash") == script


@pytest.mark.req("RL-3")
@pytest.mark.parametrize(
    ("argv", "script"),
    [
        (["perl", "-w", "job.pl", "data"], "job.pl"),
        (["perl", "-I", "lib", "job"], "job"),
        (["perl", "-Ilib", "-MStrict", "job"], "job"),
        (["perl", "-lne", "print", "data"], None),
        (["perl", "-e", "print 1", "data"], None),
    ],
)
def test_perl_script_argument(argv: list[str], script: str | None) -> None:
    assert script_argument(argv, "/usr/bin/perl5.36") == script


def test_unknown_interpreter_takes_the_first_argument_that_is_not_an_option() -> None:
    assert script_argument(["awk", "-f", "prog", "data"], "/usr/bin/gawk") == "prog"
    assert script_argument(["node", "--", "app.js"], "/usr/bin/node") == "app.js"


# -- against the kernel -------------------------------------------------------------------------------------


class Events:
    def __init__(self) -> None:
        self.seen: list[ProtectionEvent] = []

    def __call__(self, event: ProtectionEvent) -> None:
        self.seen.append(event)

    def denied_paths(self) -> set[str]:
        return {e.object.path for e in list(self.seen) if e.action == "deny" and e.object and e.object.path}

    def denial(self, path: Path) -> ProtectionEvent:
        """The refusal of ``path``; events arrive from the engine's own thread, so wait briefly."""
        end = time.monotonic() + 5
        while time.monotonic() < end:
            for e in list(self.seen):
                if e.action == "deny" and e.object is not None and e.object.path == str(path):
                    return e
            time.sleep(0.01)
        raise AssertionError(f"{path} was not refused: {[e.to_json() for e in self.seen]}")


@pytest.fixture
def area(device_mount: Path) -> Path:
    """Trusted scripts that read data files, an untrusted script in each form, and the data."""
    (device_mount / "app").mkdir()
    (device_mount / "app/clinical.py").write_text(
        "import sys\nwith open(sys.argv[sys.argv.index('--config') + 1]) as f:\n    print(f.read().strip())\n"
    )
    (device_mount / "app/reader.sh").write_text('read -r line < "$1"\necho "$line"\n')
    (device_mount / "etc").mkdir()
    (device_mount / "etc/clinical.json").write_text('{"rate_ml_per_h": 120}\n')
    (device_mount / "incoming").mkdir()
    for name in ("evil.py", "evil", "evil.sh", "evilmod.py"):
        (device_mount / "incoming" / name).write_text("print('payload ran')\n" if "sh" not in name else "echo ran\n")
    return device_mount


@pytest.fixture
def engine(area: Path) -> Iterator[tuple[Engine, Events]]:
    trust = {hashlib.sha256((area / p).read_bytes()).digest() for p in ("app/clinical.py", "app/reader.sh")}
    policy = parse_document(policy_document(interpreters=[PYTHON, SHELL], script_suffixes=[".py", ".sh"]))
    events = Events()
    running = Engine(area, policy, trust, on_event=events)
    running.start()
    try:
        yield running, events
    finally:
        running.close()


def _run(
    *argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, timeout=30, cwd=cwd, env=env
    )


@pytest.mark.req("RL-3")
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "form",
    [
        ["incoming/evil.py"],
        ["incoming/evil"],
        ["-W", "ignore", "incoming/evil"],
        ["-X", "utf8", "-u", "incoming/evil"],
        ["-B", "--", "incoming/evil"],
    ],
)
def test_python_running_an_untrusted_script_on_the_mount_is_refused(
    form: list[str], area: Path, engine: tuple[Engine, Events]
) -> None:
    _engine, events = engine
    done = _run(PYTHON, *form, cwd=area)
    assert done.returncode != 0
    assert "payload ran" not in done.stdout
    assert "Operation not permitted" in done.stderr
    denial = events.denial(area / form[-1])
    assert (denial.category, denial.rule) == ("open", "interpreter_script_untrusted")
    assert denial.subject is not None and denial.subject.exe == PYTHON


@pytest.mark.req("RL-3")
@pytest.mark.timeout(90)
def test_python_module_from_the_mount_is_refused(area: Path, engine: tuple[Engine, Events]) -> None:
    """``-m`` names no script file, but the module it imports is still a script load (by suffix)."""
    _engine, events = engine
    done = _run(PYTHON, "-m", "evilmod", env={**os.environ, "PYTHONPATH": str(area / "incoming")})
    assert done.returncode != 0 and "payload ran" not in done.stdout
    events.denial(area / "incoming/evilmod.py")


@pytest.mark.req("RL-3")
@pytest.mark.timeout(90)
def test_trusted_clinical_process_reads_its_configuration(area: Path, engine: tuple[Engine, Events]) -> None:
    """The data file named by ``--config`` is read, not run: before this rule it was refused."""
    running, events = engine
    config = area / "etc/clinical.json"
    done = _run(PYTHON, area / "app/clinical.py", "--config", config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"rate_ml_per_h": 120}'
    done = _run(PYTHON, "-c", f"print(open({str(config)!r}).read().strip())", config)
    assert done.returncode == 0 and "120" in done.stdout
    time.sleep(0.2)  # a refusal would be reported by now
    assert not events.denied_paths()
    assert running.metrics.snapshot()["decisions"].get("not_a_script_load", 0) >= 2


@pytest.mark.req("RL-3")
@pytest.mark.timeout(90)
def test_shell_script_reading_a_data_file_runs_and_an_untrusted_one_is_refused(
    area: Path, engine: tuple[Engine, Events]
) -> None:
    _engine, events = engine
    done = _run(SHELL, "-e", area / "app/reader.sh", area / "etc/clinical.json")
    assert done.returncode == 0, done.stderr
    assert "rate_ml_per_h" in done.stdout
    done = _run(SHELL, "-o", "errexit", area / "incoming/evil")
    assert done.returncode != 0 and "payload" not in done.stdout
    events.denial(area / "incoming/evil")
    assert events.denied_paths() == {str(area / "incoming/evil")}
