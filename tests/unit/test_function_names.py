"""The Cloud Functions are named once (imgclassify.serving.routes.FUNCTIONS); every other list derives from it."""

from pathlib import Path

from imgclassify.serving.routes import FUNCTIONS, ROOT_ROUTES, ROUTES

REPO = Path(__file__).resolve().parents[2]


def test_every_route_is_served_by_a_named_function_and_every_function_serves_a_route():
    assert {route.function for route in ROUTES} == set(FUNCTIONS) == set(ROOT_ROUTES)


def test_every_function_has_its_folder_with_an_entry_point_of_its_own_name():
    folders = {path.name for path in (REPO / "functions").iterdir() if (path / "main.py").exists()}

    assert folders == set(FUNCTIONS)
    for function in FUNCTIONS:
        source = (REPO / "functions" / function / "main.py").read_text()
        assert f"def {function}(request)" in source and f'create_http_app("{function}")' in source


def test_the_bootstrap_has_one_app_module_per_function_each_building_that_functions_app():
    import importlib

    from imgclassify.serving.bootstrap import APP_MODULES, app_module

    assert list(APP_MODULES) == list(FUNCTIONS)
    for function in FUNCTIONS:
        module = app_module(function)
        assert module is importlib.import_module(APP_MODULES[function])
        assert callable(module.build) and callable(module.warm)


def test_an_unknown_function_is_refused_with_the_names_of_the_real_ones():
    import pytest

    from imgclassify.serving.bootstrap import app_module

    with pytest.raises(ValueError, match="expected one of classify, list_models"):
        app_module("resize")
