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
