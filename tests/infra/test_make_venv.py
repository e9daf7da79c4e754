"""Infrastructure, offline: make venv: CPU torch for a newcomer, the machine's own torch where it has one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devstack.processes import REPO

# A PATH with make and a Python that has pip (this interpreter's), and no nvidia-smi unless added.
BASE_PATH = f"{Path(sys.executable).parent}:/usr/bin:/bin"
WITHOUT_PIP_SETTINGS = {name: value for name, value in os.environ.items() if not name.startswith("PIP_")}


def torch_pin(env: dict[str, str]) -> str:
    result = subprocess.run(["make", "--no-print-directory", "--eval", "show-torch-pin: ; @echo '$(TORCH_PIN)'",
                             "show-torch-pin"], cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


def test_make_venv_installs_cpu_only_torch_on_a_machine_without_a_gpu_or_a_torch_of_its_own(tmp_path):
    no_pip_config = {**WITHOUT_PIP_SETTINGS, "PIP_CONFIG_FILE": os.devnull, "PATH": BASE_PATH}
    assert torch_pin(no_pip_config) == (
        "torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu")


def test_make_venv_leaves_torch_to_a_machine_with_a_gpu_or_a_pip_constraint_on_torch(tmp_path):
    gpu = tmp_path / "gpu-bin"
    gpu.mkdir()
    (gpu / "nvidia-smi").write_text("#!/bin/sh\n")
    (gpu / "nvidia-smi").chmod(0o755)
    with_gpu = {**WITHOUT_PIP_SETTINGS, "PIP_CONFIG_FILE": os.devnull, "PATH": f"{gpu}:{BASE_PATH}"}
    assert torch_pin(with_gpu) == "torch==2.14.1 torchvision==0.29.1"
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch<=2.14.1\ntorchvision<=0.29.1\n")
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nconstraint = {constraints}\n")
    offline_machine = {**WITHOUT_PIP_SETTINGS, "PIP_CONFIG_FILE": str(config), "PATH": BASE_PATH}
    assert torch_pin(offline_machine) == "torch==2.14.1 torchvision==0.29.1"
    constraints.write_text("numpy<3\n")
    assert torch_pin(offline_machine).endswith("--index-url https://download.pytorch.org/whl/cpu")


