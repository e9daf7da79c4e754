"""The README's layout table describes the package as it is: every part, every module, nothing else."""

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "imgclassify"


def readme_layout() -> dict[str, set[str]]:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| part | modules |"):readme.index("Each function's bundle carries")]
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("part", "---"):
            rows[cells[0].strip("`")] = set(re.findall(r"`([a-z_]+)`", cells[1]))
    return rows


def package_layout() -> dict[str, set[str]]:
    layout = {"ground": {path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"}}
    for folder in sorted(path for path in PACKAGE.iterdir() if (path / "__init__.py").exists()):
        layout[f"{folder.name}/"] = {path.stem for path in folder.glob("*.py")} - {"__init__", "__main__"}
    return layout


def test_the_readme_layout_table_lists_every_part_and_module_of_the_package():
    assert readme_layout() == package_layout()


def test_every_subpackage_states_its_job_and_import_rule_in_its_init():
    for part in package_layout():
        if part == "ground":
            continue
        doc = (PACKAGE / part / "__init__.py").read_text()
        assert doc.startswith('"""') and "Import rule:" in doc, part


def test_the_import_contracts_cover_every_part_of_the_package():
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [contract["layers"] for contract in contracts if contract["type"] == "layers"]
    layered = {name.strip().removeprefix("imgclassify.") for layer in layers for name in re.split("[|:]", layer)}
    expected = {part.rstrip("/") for part in package_layout() if part != "ground"} | package_layout()["ground"]
    assert layered == expected


def test_the_readme_lists_every_test_tier_with_its_time():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| tier | what it proves |"):]
    rows = [line for line in table.splitlines() if line.startswith("| `tests/")]
    listed = {re.match(r"\| `tests/([a-z]+)`", row).group(1) for row in rows}
    tiers = {path.parent.name for path in (REPO / "tests").glob("*/test_*.py")}

    assert listed == tiers
    assert all(re.search(r"\| [\d.]+ (s|min)[^|]* \|$", row) for row in rows), rows
