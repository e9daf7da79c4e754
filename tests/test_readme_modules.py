"""The README's module table names every module of the package, and nothing else."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_readme_module_table_matches_the_package():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| module | job |"):readme.index("* `devstack/`")]
    listed = set()
    for row in (line.strip() for line in table.splitlines()):
        if row.startswith("| `"):
            listed |= set(re.findall(r"`([a-z_/]+)`", row.split("|")[1]))
    package = REPO / "imgclassify"
    modules = {path.stem for path in package.glob("*.py") if path.stem != "__init__"}
    modules |= {f"{path.name}/" for path in package.iterdir() if (path / "__init__.py").exists()}

    assert listed == modules
