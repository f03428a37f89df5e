"""Executable memfds: outside every mount, so fanotify never sees them; ``vm.memfd_noexec=2`` closes that path.

The sysctl is per pid namespace, so these tests apply it only inside ``unshare --pid``: the
machine's own setting is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medsec.protect.engine import memfd_noexec_state

from .conftest import policy_document

pytestmark = [pytest.mark.timeout(60)]

# Runs inside the new pid namespace: optionally starts the engine on the device mount with the
# policy's memfd_noexec, then tries to run /bin/true from an anonymous memory file.
CHILD = r"""
import errno, json, os, sys
from pathlib import Path
from medsec.protect.engine import Engine, memfd_noexec_state
from medsec.protect.policy import parse_document

mount, policy_json = sys.argv[1], sys.argv[2]
result = {"before": memfd_noexec_state()}
engine = None
if mount:
    engine = Engine(Path(mount), parse_document(json.loads(policy_json)), set())
    engine.start()
try:
    result["after"] = memfd_noexec_state()
    try:
        os.memfd_create("exec-flag", 0x10)  # MFD_EXEC
        result["mfd_exec"] = "created"
    except OSError as e:
        result["mfd_exec"] = errno.errorcode[e.errno]
    fd = os.memfd_create("payload", 0)
    os.write(fd, open("/bin/true", "rb").read())
    pid = os.fork()
    if pid == 0:
        try:
            os.execve(fd, ["payload"], {})
        except OSError as e:
            os._exit(100 + e.errno)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    result["exec"] = "ran" if code == 0 else errno.errorcode.get(code - 100, str(code))
finally:
    if engine is not None:
        engine.close()
print(json.dumps(result))
"""


def run_in_pid_namespace(mount: str, policy: dict[str, object]) -> dict[str, object]:
    done = subprocess.run(
        ["unshare", "--pid", "--fork", sys.executable, "-c", CHILD, mount, json.dumps(policy)],
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, object] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


@pytest.fixture
def pid_namespace_ready() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (unshare --pid)")
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    if memfd_noexec_state() is None:
        pytest.skip("vm.memfd_noexec is not available (Linux < 6.3)")


@pytest.mark.req("RL-3")
@pytest.mark.usefixtures("pid_namespace_ready")
def test_memfd_exec_runs_when_policy_leaves_memfd_noexec_unset(device_mount: Path) -> None:
    """The baseline the next test must change: without the sysctl, memfd code runs unseen."""
    result = run_in_pid_namespace(str(device_mount), policy_document(memfd_noexec=None))
    if result["before"] == 2:
        pytest.skip("this machine already sets vm.memfd_noexec=2")
    assert result["exec"] == "ran"


@pytest.mark.req("RL-3")
@pytest.mark.usefixtures("pid_namespace_ready")
def test_executable_memfd_is_refused_when_policy_sets_memfd_noexec(device_mount: Path) -> None:
    host_before = memfd_noexec_state()
    result = run_in_pid_namespace(str(device_mount), policy_document(memfd_noexec=2))
    assert result["after"] == 2
    assert result["mfd_exec"] == "EACCES"
    assert result["exec"] == "EACCES"
    assert memfd_noexec_state() == host_before  # the machine's own namespace is untouched
