"""Write the part of the google provider's schema that infra/terraform uses, for offline checks.

    python3 scripts/refresh_provider_schema.py SCHEMA.json[.gz] [--source TEXT]
    python3 scripts/refresh_provider_schema.py --beta-source DIR --beta-commit SHA

SCHEMA is ``terraform providers schema -json`` output holding hashicorp/google at the version
infra/terraform/versions.tf pins (here: /work/shared/terraform/google-6.50.0.schema.json.gz,
from the public repository lonegunmanb/terraform-google-schema, tag v6.50.0). Where providers
download, ``terraform -chdir=infra/terraform init -backend=false && terraform -chdir=infra/terraform
providers schema -json > schema.json`` makes one. The script keeps the resource and data source
types the .tf files declare with the google provider (google-beta has no published schema:
docs/deploy.md says how its resources are checked), without descriptions, and writes
tests/infra/provider_schema/google-VERSION.json, which tests/infra/test_provider_schema.py
checks every block against. Run it after a provider upgrade or when a new type is used.

hashicorp/google-beta publishes no schema, so with ``--beta-source`` the script reads the
google-beta resources the configuration uses (API Gateway's) from the provider's Go source at
the pinned tag: DIR holds ``google-beta/services/...`` of a checkout of
hashicorp/terraform-provider-google-beta (``git archive vVERSION google-beta/services/apigateway |
tar -x -C DIR``). Each ``map[string]*schema.Schema`` literal becomes the same format as
Terraform's (attributes with required/optional/computed/deprecated; nested resources as
blocks with their item limits), written to tests/infra/provider_schema/google-beta-VERSION.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path

import hcl2
from hcl2 import SerializationOptions

REPO = Path(__file__).resolve().parent.parent
TERRAFORM_DIR = REPO / "infra" / "terraform"
OUT_DIR = REPO / "tests" / "infra" / "provider_schema"
PROVIDER = "registry.terraform.io/hashicorp/google"
BETA_PROVIDER = "registry.terraform.io/hashicorp/google-beta"
DEFAULT_SOURCE = ("terraform providers schema -json for hashicorp/google {version}, from the public repository "
                  "lonegunmanb/terraform-google-schema, tag v{version}")


def load_tf(path: Path) -> dict:
    options = SerializationOptions(with_comments=False, explicit_blocks=True, strip_string_quotes=True)
    with open(path) as handle:
        return hcl2.load(handle, serialization_options=options)


def pinned_version() -> str:
    providers = load_tf(TERRAFORM_DIR / "versions.tf")["terraform"][0]["required_providers"][0]
    return providers["google"]["version"]


def used_types(provider_name: str = "google") -> dict[str, set[str]]:
    """``{"resource": {...}, "data": {...}}``: the types the .tf files declare with that provider."""
    used: dict[str, set[str]] = {"resource": set(), "data": set()}
    for path in sorted(TERRAFORM_DIR.glob("*.tf")):
        parsed = load_tf(path)
        for kind in used:
            for block in parsed.get(kind, []):
                for type_name, named in block.items():
                    for body in named.values():
                        provider = str(body.get("provider", "google")).removeprefix("${").removesuffix("}")
                        if type_name.startswith("google_") and provider.split(".")[0] == provider_name:
                            used[kind].add(type_name)
    return used


# --- google-beta: the schema from the provider's Go source ----------------------------------

_GO_TOKEN = re.compile(r'`[^`]*`|"(?:[^"\\]|\\.)*"|[{}]|//[^\n]*')
_GO_FIELD = re.compile(r'"([a-z0-9_]+)":\s*\{')


def _matching_brace(text: str, start: int) -> int:
    """The index just past the brace that closes the one at ``start`` (strings and comments skipped)."""
    depth = 0
    for token in _GO_TOKEN.finditer(text, start):
        if token.group() == "{":
            depth += 1
        elif token.group() == "}":
            depth -= 1
            if depth == 0:
                return token.end()
    raise ValueError("unbalanced braces in the Go source")


def _top_level(body: str) -> str:
    """``body`` with its nested braces and its strings blanked, to read only its own fields."""
    out, depth, last = [], 0, 0
    for token in _GO_TOKEN.finditer(body):
        if depth == 0:
            out.append(body[last:token.start()])
        if token.group() == "{":
            depth += 1
        elif token.group() == "}":
            depth -= 1
        elif depth == 0 and token.group().startswith(('"', "`")):
            out.append('""')
        last = token.end()
    out.append(body[last:] if depth == 0 else "")
    return "".join(out)


def go_schema_block(text: str) -> dict:
    """The block of one ``map[string]*schema.Schema{...}`` literal (``text`` starts at its brace)."""
    end = _matching_brace(text, 0)
    inner = text[1:end - 1]
    attributes, block_types = {}, {}
    position = 0
    while (found := _GO_FIELD.search(inner, position)) is not None:
        brace = found.end() - 1
        close = _matching_brace(inner, brace)
        body = inner[brace + 1:close - 1]
        own = _top_level(body)
        position = close
        flags = {flag: bool(re.search(rf"\b{flag}:\s*true", own)) for flag in ("Required", "Optional", "Computed")}
        kind = re.search(r"Type:\s*schema\.Type(\w+)", own).group(1)
        nested = re.search(r"Elem:\s*&schema\.Resource\{\s*Schema:\s*map\[string\]\*schema\.Schema", body)
        if nested and (flags["Required"] or flags["Optional"]):
            entry = {"nesting_mode": kind.lower(), "block": go_schema_block(body[nested.end():])}
            for limit in ("MaxItems", "MinItems"):
                value = re.search(rf"\b{limit}:\s*(\d+)", own)
                if value:
                    entry[{"MaxItems": "max_items", "MinItems": "min_items"}[limit]] = int(value.group(1))
            if flags["Required"]:
                entry["min_items"] = max(entry.get("min_items", 0), 1)
            block_types[found.group(1)] = entry
            continue
        attribute = {"type": kind.lower(), **{flag.lower(): True for flag, on in flags.items() if on}}
        if re.search(r"\bDeprecated:", own):
            attribute["deprecated"] = True
        attributes[found.group(1)] = attribute
    block = {"attributes": attributes}
    if block_types:
        block["block_types"] = block_types
    return block


def go_resource_schema(source: str) -> dict:
    """A resource's schema from its ``resource_*.go`` file: the first Schema map of the resource."""
    found = re.search(r"\n\t\tSchema: map\[string\]\*schema\.Schema\{", source)
    if not found:
        raise ValueError("no resource Schema map in the source")
    return {"block": go_schema_block(source[found.end() - 1:])}


def beta_subset(source_dir: Path, commit: str, version: str) -> dict:
    schemas = {}
    for type_name in sorted(used_types("google-beta")["resource"]):
        matches = sorted(source_dir.glob(f"google-beta/services/*/resource_{type_name.removeprefix('google_')}.go"))
        if len(matches) != 1:
            raise SystemExit(f"error: {source_dir} has {len(matches)} source files for {type_name}")
        schema = go_resource_schema(matches[0].read_text())
        schema["block"]["attributes"].setdefault("id", {"type": "string", "optional": True, "computed": True})
        schemas[type_name] = {**schema, "source_file": str(matches[0].relative_to(source_dir))}
    return {"source": f"hashicorp/terraform-provider-google-beta v{version} (commit {commit}): the Go schema of "
                      "each resource, read by scripts/refresh_provider_schema.py --beta-source",
            "provider": BETA_PROVIDER, "version": version, "resource_schemas": schemas, "data_source_schemas": {}}


def strip_descriptions(block: dict) -> dict:
    """A schema ``block`` without its description texts (attribute and block names stay)."""
    def attribute(value: dict) -> dict:
        kept = {key: item for key, item in value.items() if key not in ("description", "description_kind")}
        if "nested_type" in kept:
            kept["nested_type"] = {**kept["nested_type"], "attributes": {
                name: attribute(item) for name, item in kept["nested_type"].get("attributes", {}).items()}}
        return kept

    stripped = {key: item for key, item in block.items()
                if key not in ("description", "description_kind", "attributes", "block_types")}
    if "attributes" in block:
        stripped["attributes"] = {name: attribute(item) for name, item in block["attributes"].items()}
    if "block_types" in block:
        stripped["block_types"] = {name: {**item, "block": strip_descriptions(item["block"])}
                                   for name, item in block["block_types"].items()}
    return stripped


def _stripped(type_schema: dict) -> dict:
    return {**type_schema, "block": strip_descriptions(type_schema["block"])}


def subset(full: dict, source: str, version: str) -> dict:
    """The provider schema reduced to the used types, with where it came from."""
    provider = full["provider_schemas"][PROVIDER]
    used = used_types()
    missing = sorted(used["resource"] - provider["resource_schemas"].keys()) + sorted(
        used["data"] - provider["data_source_schemas"].keys())
    if missing:
        raise SystemExit(f"error: the schema has no {', '.join(missing)} (is it hashicorp/google {version}?)")
    return {
        "source": source,
        "provider": PROVIDER,
        "version": version,
        "format_version": full.get("format_version"),
        "resource_schemas": {name: _stripped(provider["resource_schemas"][name]) for name in sorted(used["resource"])},
        "data_source_schemas": {name: _stripped(provider["data_source_schemas"][name])
                                for name in sorted(used["data"])},
    }


def render(document: dict) -> str:
    return json.dumps(document, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("schema", type=Path, nargs="?",
                        help="terraform providers schema -json output (.json or .json.gz)")
    parser.add_argument("--source", help="where the schema came from (default: lonegunmanb/terraform-google-schema)")
    parser.add_argument("--beta-source", type=Path, help="google-beta's source at the pinned tag (see above)")
    parser.add_argument("--beta-commit", default="unknown", help="the commit of that source")
    args = parser.parse_args(argv)
    if args.schema is None and args.beta_source is None:
        parser.error("give SCHEMA, --beta-source, or both")
    version = pinned_version()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    if args.schema is not None:
        try:
            opener = gzip.open if args.schema.suffix == ".gz" else open
            with opener(args.schema, "rt") as handle:
                full = json.load(handle)
        except (OSError, ValueError) as error:
            print(f"error: {args.schema}: {error}", file=sys.stderr)
            return 1
        if PROVIDER not in full.get("provider_schemas", {}):
            print(f"error: {args.schema} holds no {PROVIDER} schema", file=sys.stderr)
            return 1
        out = OUT_DIR / f"google-{version}.json"
        out.write_text(render(subset(full, args.source or DEFAULT_SOURCE.format(version=version), version)))
        print(f"wrote {out.relative_to(REPO)}")
    if args.beta_source is not None:
        out = OUT_DIR / f"google-beta-{version}.json"
        out.write_text(render(beta_subset(args.beta_source, args.beta_commit, version)))
        print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
