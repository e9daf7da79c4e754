"""Every process of ``make dev`` ends when it ends, however it ends: Ctrl-C, SIGTERM, or the
runner killed outright (SIGKILL, as the kernel's out-of-memory killer does).

The real runner (``python -m devstack.run``) starts the emulator, both functions (gunicorn
parents and their forked workers) and the router; the test records the whole process tree,
signals the runner, and waits until none of it is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from devstack.processes import REPO, free_port, spawn, wait_until_answers

pytestmark = pytest.mark.integration


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc)."""
    found, pending = set(), [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = {int(child) for child in (task / "children").read_text().split()}
            except OSError:
                continue
            pending += list(children - found)
            found |= children
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped (pid 1 of a container may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until_gone(pids: set[int], timeout: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    return {pid for pid in pids if alive(pid)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Shared by the runs: only the first publishes the model into the emulator's files."""
    return tmp_path_factory.mktemp("make-dev")


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "sigkill"])
def test_make_dev_leaves_no_process_behind(data_dir, how):
    port, emulator_port = free_port(), free_port()
    runner = subprocess.Popen(
        [sys.executable, "-m", "devstack.run", "--port", str(port), "--emulator-port", str(emulator_port),
         "--data-dir", str(data_dir), "--models", "efficientnet_lite0"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "STORAGE_EMULATOR_HOST": ""})
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/v1/models", runner, timeout=300)
        assert requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).status_code == 200
        tree = descendants(runner.pid)
        assert len(tree) >= 5, tree  # the emulator, two gunicorn parents and their workers

        runner.send_signal(how)
        runner.wait(timeout=60)
        left = wait_until_gone(tree)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert left == set(), f"still running after {how.name}: {left}"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{emulator_port}/storage/v1/b", timeout=5)


def test_a_spawned_server_dies_with_the_process_that_spawned_it(tmp_path):
    """The parent-death signal alone, without the runner: a parent killed outright takes its
    server along (gunicorn's workers then see their parent gone and exit, as the test above shows)."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from devstack.processes import spawn\n"
        "child = spawn([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n")
    parent = spawn([sys.executable, str(script)], stdout=subprocess.PIPE, env={"PYTHONPATH": str(REPO)})
    child = int(parent.stdout.readline())
    assert alive(child)

    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=30)

    assert wait_until_gone({child}) == set()
