"""Shared helpers of the infrastructure tests: Terraform offline, HCL, the gateway spec, log filters."""


from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import hcl2
from hcl2 import SerializationOptions

from devstack.processes import REPO

TERRAFORM_DIR = REPO / "infra" / "terraform"
SPEC_TEMPLATE = TERRAFORM_DIR / "openapi.yaml.tftpl"
CHECKOV = Path(os.environ.get("CHECKOV", REPO / ".local" / "checkov-venv" / "bin" / "checkov"))
TF_ENV = {**os.environ, "TF_CLI_CONFIG_FILE": "/dev/null", "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}

BACKENDS = {
    "list_models": "https://list-models-abc123-ew.a.run.app",
    "classify": "https://classify-abc123-ew.a.run.app",
}
DEDICATED = {"efficientnet_lite2": "https://classify-efficientnet-lite2-abc123-ew.a.run.app",
             "big.model-v2": "https://classify-big-model-v2-abc123-ew.a.run.app"}
RUNTIME_ACCOUNTS = {"classify", "list_models"}
IAM_GRANT = re.compile(r"_iam_(member|binding|policy)$")


def terraform() -> str:
    found = shutil.which("terraform")
    assert found, "terraform is not on PATH; the infrastructure checks need it (see .ci/run)"
    return found


# --- helpers ---------------------------------------------------------------------------------


def load_hcl(name: str) -> dict:
    options = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
    with open(TERRAFORM_DIR / name) as handle:
        return hcl2.load(handle, serialization_options=options)


def all_resources() -> Iterator[tuple[str, str, dict]]:
    for path in sorted(TERRAFORM_DIR.glob("*.tf")):
        for block in load_hcl(path.name).get("resource", []):
            for kind, named in block.items():
                for name, body in named.items():
                    yield kind, name, body


def resource_kinds() -> set[str]:
    return {kind for kind, _, _ in all_resources()}


def resources(kind: str) -> dict[str, dict]:
    return {name: body for each, name, body in all_resources() if each == kind}


class Grant(tuple):
    """One IAM member grant: (resource address, target, role, member, for_each)."""

    resource = property(lambda self: self[0])
    target = property(lambda self: self[1])
    role = property(lambda self: self[2])
    member = property(lambda self: self[3])
    for_each = property(lambda self: self[4])


def iam_grants() -> list[Grant]:
    """Every IAM grant, with ``member = each.value`` expanded over a literal for_each map."""
    grants = []
    for kind, name, body in all_resources():
        if not IAM_GRANT.search(kind):
            continue
        target = body.get("bucket") or body.get("repository") or body.get("project") or body.get("name")
        members = body.get("members") or [body["member"]]
        for_each = body.get("for_each")
        for member in members:
            expanded = list(for_each.values()) if member == "${each.value}" and isinstance(for_each, dict) else [member]
            grants += [Grant((f"{kind}.{name}", target, body["role"], each, for_each)) for each in expanded]
    return grants


def account_of(member: str) -> str | None:
    found = re.fullmatch(r"\$\{google_service_account\.(\w+)\.(member|email)\}", member)
    return found.group(1) if found else None


def operations(spec: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in spec["paths"].items() for method in item if method != "options"}


def render_spec(workdir: Path, dedicated: dict[str, str]) -> str:
    """openapi.yaml.tftpl rendered by Terraform's templatefile, with gateway.tf's variables."""
    values = {
        "title": "imgclassify image classification",
        "list_models": {"address": BACKENDS["list_models"], "deadline_seconds": 30},
        "classify": {"address": BACKENDS["classify"], "deadline_seconds": 120},
        "dedicated": {model: {"address": address, "deadline_seconds": 300,
                              "operation_suffix": re.sub(r"[^A-Za-z0-9]", "_", model)}
                      for model, address in dedicated.items()},
        "classify_requests_per_minute": 77,
        "list_models_requests_per_minute": 555,
    }
    return render_template(workdir, SPEC_TEMPLATE, values)


def iam_condition(expression: str):
    """The resource names an IAM condition made of ``resource.name == "X"`` and ``startsWith("X")`` terms allows."""
    terms = [term.strip() for term in expression.split("||")]
    tests = []
    for term in terms:
        found = re.fullmatch(r'resource\.name == "([^"]+)"', term) or re.fullmatch(
            r'resource\.name\.startsWith\("([^"]+)"\)', term)
        assert found, f"condition term this test cannot read: {term}"
        value = found.group(1)
        tests.append((lambda name, value=value: name == value) if "==" in term else
                     (lambda name, value=value: name.startswith(value)))
    return lambda name: any(test(name) for test in tests)


REQUIRED_VARIABLES = {"project_id": "my-project", "weights_bucket": "my-project-weights"}


def terraform_workdir(workdir: Path, settings: dict, sources: tuple[str, ...] = (), stubs: dict | None = None) -> Path:
    """A provider-free Terraform module: variables.tf, the locals blocks of ``sources``, ``settings``."""
    shutil.copyfile(TERRAFORM_DIR / "variables.tf", workdir / "variables.tf")
    blocks = [block for name in sources for block in locals_blocks((TERRAFORM_DIR / name).read_text())]
    if stubs:
        blocks.append("locals {\n" + "".join(f"  {name} = {value}\n" for name, value in stubs.items()) + "}\n")
    (workdir / "module.tf").write_text("\n".join(blocks))
    (workdir / "settings.tfvars.json").write_text(json.dumps({**REQUIRED_VARIABLES, **settings}))
    return workdir


def plan_variables(workdir: Path, settings: dict, var_file: Path | None = None) -> subprocess.CompletedProcess:
    """``terraform plan`` of the variables alone: runs every validation, offline."""
    terraform_workdir(workdir, settings)
    init = subprocess.run([terraform(), "init", "-input=false", "-no-color"], cwd=workdir, capture_output=True,
                          text=True, env=TF_ENV, timeout=120)
    assert init.returncode == 0, init.stderr
    files = ["-var-file=settings.tfvars.json"] if var_file is None else [f"-var-file={var_file}"]
    return subprocess.run([terraform(), "plan", "-input=false", "-no-color", "-lock=false", *files], cwd=workdir,
                          capture_output=True, text=True, env=TF_ENV, timeout=120)


def evaluate_locals(workdir: Path, expression: str, settings: dict, sources: tuple[str, ...],
                    stubs: dict | None = None):
    """``expression`` evaluated by ``terraform console`` over the named files' locals."""
    terraform_workdir(workdir, settings, sources, stubs)
    result = subprocess.run([terraform(), "console", "-var-file=settings.tfvars.json"], cwd=workdir,
                            input=f"jsonencode({expression})", capture_output=True, text=True, env=TF_ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(json.loads(result.stdout))


def locals_blocks(text: str) -> list[str]:
    """The top-level ``locals { ... }`` blocks of a Terraform file, as text."""
    blocks = []
    for start in (found.start() for found in re.finditer(r"^locals \{", text, re.MULTILINE)):
        depth = 0
        for index in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if depth == 0 and text[index] == "}":
                blocks.append(text[start:index + 1])
                break
    return blocks


def render_template(workdir: Path, template: Path, values: dict) -> str:
    """``template`` rendered by Terraform's own templatefile."""
    expression = f"jsonencode({{out = templatefile({json.dumps(str(template))}, " \
                 f"jsondecode({json.dumps(json.dumps(values))}))}})"
    result = subprocess.run([terraform(), "console"], input=expression, cwd=workdir, capture_output=True, text=True,
                            env=TF_ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(json.loads(result.stdout))["out"]


def find_key(value, key: str) -> Iterator:
    """Every value stored under ``key`` anywhere in a JSON document."""
    if isinstance(value, dict):
        for name, item in value.items():
            if name == key:
                yield item
            yield from find_key(item, key)
    elif isinstance(value, list):
        for item in value:
            yield from find_key(item, key)


def cloud_logging_entry(line: dict, service_name: str) -> dict:
    """A JSON stdout line of a Cloud Run service as Cloud Logging stores it: the special keys
    (severity, httpRequest, trace) become the entry's own fields, the rest its jsonPayload."""
    payload = dict(line)
    entry = {"resource": {"type": "cloud_run_revision", "labels": {"service_name": service_name}},
             "severity": payload.pop("severity", "DEFAULT")}
    if "httpRequest" in payload:
        entry["httpRequest"] = payload.pop("httpRequest")
    if "logging.googleapis.com/trace" in payload:
        entry["trace"] = payload.pop("logging.googleapis.com/trace")
    payload.pop("logging.googleapis.com/spanId", None)
    entry["jsonPayload"] = payload
    return entry


def log_field(entry: dict, path: str):
    value = entry
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


LOG_FILTER_TERM = re.compile(r'([A-Za-z_][\w.]*)(=~|!=|>=|<=|=|>|<)("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?)')


def log_filter_matches(text: str, entry: dict) -> bool:
    """Cloud Logging's query language, for the terms this stack's filters use: A AND B AND ..."""
    for term in text.split(" AND "):
        found = LOG_FILTER_TERM.fullmatch(term.strip())
        assert found, f"a filter term this test cannot read: {term!r}"
        path, operator, literal = found.groups()
        expected, value = json.loads(literal), log_field(entry, path)
        if value is None:
            return False
        if operator == "=~":
            ok = re.search(expected, str(value)) is not None
        elif operator == "=":
            ok = str(value) == str(expected)
        elif operator == "!=":
            ok = str(value) != str(expected)
        else:
            ok = {">=": float.__ge__, "<=": float.__le__, ">": float.__gt__, "<": float.__lt__}[operator](
                float(value), float(expected))
        if not ok:
            return False
    return True


def extract(extractor: str, entry: dict) -> str | None:
    """A log-based metric's EXTRACT(field) or REGEXP_EXTRACT(field, "regex") on one entry."""
    found = re.fullmatch(r'EXTRACT\(([\w.]+)\)|REGEXP_EXTRACT\(([\w.]+), ("(?:[^"\\]|\\.)*")\)', extractor)
    assert found, f"an extractor this test cannot read: {extractor!r}"
    if found.group(1):
        value = log_field(entry, found.group(1))
        return None if value is None else str(value)
    value, pattern = log_field(entry, found.group(2)), re.compile(json.loads(found.group(3)))
    assert pattern.groups == 1, "Cloud Logging requires exactly one capture group"
    match = pattern.search(str(value)) if value is not None else None
    return match.group(1) if match else None
