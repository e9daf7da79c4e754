"""ONNX Runtime's telemetry stays off wherever the package runs a model (imgclassify/__init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# The runtime collects nothing when it sees one of these (the names are in the 1.32 wheel's strings;
# each seen to turn it off here): under a CI service the test would pass and its control fail whatever
# the package did, so the child process runs without them.
CI_MARKERS = ("CI", "ORT_RUNNING_UNIT_TESTS", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI",
              "TRAVIS", "JENKINS_URL", "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR",
              "BITBUCKET_BUILD_NUMBER")

RUN_A_SESSION = """
import numpy as np
import onnxruntime
from tests.support.onnx_graphs import colour_classifier, serialized
session = onnxruntime.InferenceSession(serialized(colour_classifier(3)), providers=["CPUExecutionProvider"])
session.run(None, {"input": np.zeros((1, 3, 8, 8), np.float32)})
"""


def telemetry_files_after(tmp_path, code: str, extra_env: dict | None = None) -> list[str]:
    """The files ONNX Runtime's telemetry leaves (its event store, its session file) after ``code``."""
    home, temporary = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    temporary.mkdir()
    ignored = {"ORT_DISABLE_TELEMETRY", *CI_MARKERS}
    env = {key: value for key, value in os.environ.items() if key not in ignored}
    env.update(HOME=str(home), TMPDIR=str(temporary), **(extra_env or {}))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120, cwd=REPO)
    return sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file())


@pytest.mark.parametrize("first", ["import imgclassify", "import imgclassify.runtime.engines"])
def test_onnx_runtime_leaves_no_telemetry_once_the_package_is_imported(tmp_path, first):
    assert telemetry_files_after(tmp_path, first + RUN_A_SESSION) == []


@pytest.mark.parametrize("code, env", [
    (RUN_A_SESSION, {}),                                               # nobody turns it off
    ("import imgclassify" + RUN_A_SESSION, {"ORT_DISABLE_TELEMETRY": "0"}),  # an operator turns it on
], ids=["without_the_package", "operator_opts_in"])
def test_the_runtime_collects_when_nobody_turns_it_off_or_an_operator_turns_it_on(tmp_path, code, env):
    """The control that shows the test above can fail, and that the package only sets a default."""
    assert any(".onnxruntime" in path for path in telemetry_files_after(tmp_path, code, env))
