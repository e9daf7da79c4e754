"""Fixtures several infrastructure test files share."""

import pytest
import yaml

from tests.support.infra import DEDICATED, render_spec


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    """The gateway spec as Terraform renders it, with two dedicated models."""
    return yaml.safe_load(render_spec(tmp_path_factory.mktemp("render"), DEDICATED))
