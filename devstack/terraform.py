"""What a first deploy gets from infra/terraform/variables.tf, for the local stack to match it."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from .processes import REPO

VARIABLES_TF = REPO / "infra" / "terraform" / "variables.tf"


@cache
def _variables(path: Path = VARIABLES_TF) -> dict[str, dict]:
    import hcl2

    with open(path) as handle:
        blocks = hcl2.load(handle)["variable"]
    return {name.strip('"'): body for block in blocks for name, body in block.items()}


def terraform_defaults(path: Path = VARIABLES_TF) -> dict[str, object]:
    """Each Terraform variable's default, as a first deploy gets it."""
    return {name: body["default"] for name, body in _variables(path).items() if "default" in body}


def function_threads(function: str, path: Path = VARIABLES_TF) -> int:
    """The ``THREADS`` a deployed ``function`` gets: its variable's default concurrency
    (infra/terraform/functions.tf sets THREADS to the concurrency)."""
    declared = str(_variables(path)[function]["type"])
    found = re.search(r"\bconcurrency\s*=\s*optional\(\s*number\s*,\s*(\d+)\s*\)", declared)
    if found is None:
        raise ValueError(f"variable {function!r} in {path} declares no default concurrency")
    return int(found.group(1))
