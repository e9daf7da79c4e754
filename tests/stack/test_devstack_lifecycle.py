"""Every process of ``make dev`` ends when it ends, however it ends: Ctrl-C, SIGTERM, or the
runner killed outright (SIGKILL, as the kernel's out-of-memory killer does).

The real runner (``python -m devstack.run``) starts the emulator, both functions (gunicorn
parents and their forked workers) and the router; the test records the whole process tree,
signals the runner, and waits until none of it is left."""

from __future__ import annotations

import json
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


def test_make_dev_started_by_a_script_prints_lines_that_reach_its_store_and_stops_on_ctrl_c(data_dir):
    """A script's `make dev &` starts it with SIGINT ignored; it still stops on SIGINT. The
    banner's first request works as printed, and its export line points the publisher at the
    stack's own bucket on the emulator."""
    port, emulator_port = free_port(), free_port()
    runner = subprocess.Popen(
        [sys.executable, "-m", "devstack.run", "--port", str(port), "--emulator-port", str(emulator_port),
         "--data-dir", str(data_dir), "--models", "efficientnet_lite0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "STORAGE_EMULATOR_HOST": ""},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        printed = []
        while not any("imgclassify.publish list" in line for line in printed):
            line = runner.stdout.readline()
            assert line, f"make dev ended before its banner: {printed}"
            printed.append(line.strip())
        [curl] = [line for line in printed if line.startswith("curl --data-binary")]
        [export] = [line for line in printed if line.startswith("export ")]

        photo = curl.split("@", 1)[1].split()[0]
        answer = requests.post(curl.split()[-1], data=(REPO / photo).read_bytes(),
                               headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert answer.status_code == 200
        assert answer.json()["results"][0]["predictions"][0]["label"] in {"tabby", "tiger cat", "Egyptian cat"}

        exported = dict(pair.split("=", 1) for pair in export.removeprefix("export ").split())
        assert exported == {"MODEL_STORE": "gs://imgclassify-models",
                            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{emulator_port}"}
        listed = subprocess.run([sys.executable, "-m", "imgclassify.publish", "list"], cwd=REPO,
                                env={**os.environ, **exported}, capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0, listed.stderr
        catalog = json.loads(listed.stdout)
        assert catalog["store"] == "gs://imgclassify-models"
        assert [model["name"] for model in catalog["models"]] == ["efficientnet_lite0"]

        tree = descendants(runner.pid)
        runner.send_signal(signal.SIGINT)
        runner.wait(timeout=60)
        assert wait_until_gone(tree) == set()
    finally:
        if runner.poll() is None:
            runner.kill()
