"""Start and stop local servers: free ports, readiness polling, clean shutdown."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1
# the C library among the symbols Python has loaded (find_library would run ldconfig)
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answers(url: str, process: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Poll ``url`` until it answers any HTTP status; raise if ``process`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 300.0, interval: float = 0.002) -> None:
    """Wait until something listens on 127.0.0.1:``port``; raise if ``process`` dies or time runs out.

    For cold-start figures: a refused connect costs microseconds, so the wait takes almost no CPU
    from the server it is timing (an HTTP client retrying every few milliseconds took 100-270 ms
    of CPU during one start on 2 vCPUs).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(interval)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f} s")


def stop(process: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Terminate ``process`` and its process group; kill it if it does not stop in time."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


def _dies_with(parent: int):
    """A preexec function: on Linux the child is SIGKILLed when ``parent`` ends, however it ends.

    Linux ties PR_SET_PDEATHSIG to the thread that forked, so spawn from a thread that
    outlives the child (the main thread in ``make dev`` and the tests).
    """
    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def spawn(args: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """Start ``args`` in its own process group (so stop() ends its children too), dying with us.

    The group lets :func:`stop` end a server with its workers on Ctrl-C or SIGTERM; the
    parent-death signal ends it even when this process is killed outright (SIGKILL, the
    kernel's out-of-memory killer), so no server outlives ``make dev`` or a test run.
    """
    return subprocess.Popen(args, env={**os.environ, **(env or {})}, start_new_session=True,
                            preexec_fn=_dies_with(os.getpid()), **kwargs)


def rss_kib(pid: int, *, children_only: bool = False, field: str = "VmRSS") -> int:
    """Resident memory of ``pid`` and its direct children (gunicorn's workers), in KiB (Linux).

    ``children_only`` leaves the parent out (gunicorn's arbiter shares pages with its worker);
    ``field`` names a part of it in /proc/PID/status (``RssAnon``, ``RssFile``: mapped files).
    """
    pids = [] if children_only else [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(child) for child in (task / "children").read_text().split()]
    total = 0
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                total += int(line.split()[1])
    return total
