"""ONNX Runtime's telemetry stays off wherever the package runs a model (imgclassify/__init__.py)."""

from __future__ import annotations

import os

import pytest

from tests.support.processes import fresh_python

# The runtime collects nothing when it sees one of these (the names are in the 1.32 wheel's strings;
# each seen to turn it off here): under a CI service the file tests could not fail, so the child
# process runs without them.
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


def untold_env(**extra: str) -> dict[str, str]:
    """This process's environment without the telemetry setting or a CI marker, plus ``extra``."""
    ignored = {"ORT_DISABLE_TELEMETRY", *CI_MARKERS}
    return {**{key: value for key, value in os.environ.items() if key not in ignored}, **extra}


def telemetry_files_after(tmp_path, code: str, extra_env: dict | None = None) -> list[str]:
    """The files ONNX Runtime's telemetry leaves (its event store, its session file) after ``code``."""
    home, temporary = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    temporary.mkdir()
    env = untold_env(HOME=str(home), TMPDIR=str(temporary), **(extra_env or {}))
    fresh_python(code, env=env)
    return sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file())


def collects(files: list[str]) -> bool:
    return any(".onnxruntime" in path for path in files)


@pytest.fixture(scope="module")
def runtime_collects_here(tmp_path_factory) -> None:
    """The control: without the package and untold, the runtime leaves its files. Where it does not
    (a sandbox it will not report from, a CI marker not in the list above) the file tests below could
    not fail, so they are skipped, saying why; the setting's own test still runs."""
    if not collects(telemetry_files_after(tmp_path_factory.mktemp("control"), RUN_A_SESSION)):
        pytest.skip("ONNX Runtime collects no telemetry here even when nobody turns it off")


@pytest.mark.parametrize("before, after", [(None, "1"), ("0", "0"), ("1", "1")])
def test_importing_the_package_turns_telemetry_off_unless_the_variable_is_set(before, after):
    env = untold_env() if before is None else untold_env(ORT_DISABLE_TELEMETRY=before)
    said = fresh_python("import os, imgclassify; print(os.environ['ORT_DISABLE_TELEMETRY'])", env=env,
                        timeout=60)
    assert said.strip() == after


@pytest.mark.parametrize("first", ["import imgclassify", "import imgclassify.runtime.engines"])
def test_onnx_runtime_leaves_no_telemetry_once_the_package_is_imported(tmp_path, first, runtime_collects_here):
    assert telemetry_files_after(tmp_path, first + RUN_A_SESSION) == []


def test_an_operator_can_turn_the_runtimes_telemetry_back_on(tmp_path, runtime_collects_here):
    """The package only sets a default."""
    assert collects(telemetry_files_after(tmp_path, "import imgclassify" + RUN_A_SESSION,
                                          {"ORT_DISABLE_TELEMETRY": "0"}))
