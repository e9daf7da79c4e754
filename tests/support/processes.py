"""Scripts run by this Python in a fresh process: for a state this test process no longer has
(nothing imported or opened yet, no fork hooks, glibc's malloc untouched)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def fresh_python(script: str, *args: object, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """What ``script`` prints, run with ``args`` as its arguments by this Python in a new process at
    the repository's root (with ``env`` as its whole environment if given)."""
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=timeout, check=True)
    return result.stdout
