"""A short run of the load test (``make load`` runs the long one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_a_short_mixed_load_has_no_failed_request_and_no_runaway_memory_and_says_where_results_went(tmp_path):
    output = tmp_path / "load.json"

    # Ten seconds is too short for memory to settle (make load's two minutes hold it to 30 MB):
    # here the bound only catches a runaway. The run keeps its logs and CSV files for the reader:
    # in the test's own directory, not the machine's /tmp.
    finished = subprocess.run([sys.executable, str(REPO / "bench" / "load.py"), "--duration", "10s", "--users", "4",
                               "--max-rss-growth-mb", "200", "--output", str(output)],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(tmp_path)})

    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    lines = finished.stdout.splitlines()
    assert lines[0].startswith("starting the local stack") and lines[1].startswith("warming up")
    assert lines[-1].startswith(f"results: {output} (locust's CSV files in {tmp_path}/load-")
    result = json.loads(output.read_text())
    assert sum(half["requests"] for half in result["halves"]) > 20
    assert [half["failures"] for half in result["halves"]] == [0, 0]
    assert set(result["halves"][0]["per_endpoint"]) == {"classify small jpeg lite0", "classify 12MP jpeg lite1",
                                           "classify alpha png lite2", "list models"}
