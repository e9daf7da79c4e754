"""The local stack serves each function with the gunicorn threads a first deploy gives it."""

from __future__ import annotations

import pytest

from devstack.terraform import function_threads


def test_each_function_gets_its_variables_default_concurrency_as_threads(tmp_path):
    variables = tmp_path / "variables.tf"
    variables.write_text('variable "classify" {\n  type = object({\n    memory_mb = optional(number, 4096)\n'
                         '    concurrency = optional(number, 6)\n  })\n  default = {}\n}\n')

    assert function_threads("classify", variables) == 6


def test_a_function_variable_without_a_default_concurrency_is_an_error(tmp_path):
    variables = tmp_path / "variables.tf"
    variables.write_text('variable "classify" {\n  type = object({ memory_mb = optional(number, 4096) })\n}\n')

    with pytest.raises(ValueError, match="no default concurrency"):
        function_threads("classify", variables)


def test_the_repositorys_functions_have_their_concurrency_as_threads():
    assert function_threads("classify") >= 1 and function_threads("list_models") >= 1
