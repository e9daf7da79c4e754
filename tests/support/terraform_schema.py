"""Terraform blocks checked against a provider's schema (``terraform providers schema -json``).

What ``terraform validate`` would say about arguments and nested blocks, offline: unknown
arguments and blocks, missing required ones, computed-only arguments that are set, deprecated
ones, and more (or fewer) blocks than the schema allows. ``dynamic "x" { content { ... } }``
is checked as an ``x`` block; it counts as one block toward a limit, since its number is only
known at plan time. Expressions are not evaluated: a value is an expression or a literal alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scripts.refresh_provider_schema import OUT_DIR, load_tf

# Terraform's own arguments and blocks, allowed in every resource and data block.
META_ARGUMENTS = {"count", "for_each", "depends_on", "provider"}
META_BLOCKS = {"lifecycle", "provisioner", "connection"}


@dataclass(frozen=True)
class Block:
    """One resource or data block of the configuration."""

    kind: str       # "resource" or "data"
    type: str
    name: str
    file: str
    body: dict

    @property
    def address(self) -> str:
        prefix = "data." if self.kind == "data" else ""
        return f"{prefix}{self.type}.{self.name}"

    @property
    def provider(self) -> str:
        provider = str(self.body.get("provider", self.type.split("_")[0]))
        return provider.removeprefix("${").removesuffix("}").split(".")[0]


def provider_schema(version: str, provider: str = "google") -> dict:
    """The committed schema of ``provider`` (google or google-beta) at ``version``."""
    return json.loads((OUT_DIR / f"{provider}-{version}.json").read_text())


def blocks_in(directory: Path) -> Iterator[Block]:
    """Every resource and data block of the .tf files in ``directory``."""
    for path in sorted(directory.glob("*.tf")):
        parsed = load_tf(path)
        for kind in ("resource", "data"):
            for declaration in parsed.get(kind, []):
                for type_name, named in declaration.items():
                    for name, body in named.items():
                        yield Block(kind, type_name, name, path.name, body)


def _is_block(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and v.get("__is_block__")
                                                             for v in value)


def check_block(body: dict, schema: dict, where: str, *, top_level: bool = False) -> list[str]:
    """What is wrong with ``body`` (one block's parsed HCL) against ``schema`` (its ``block``)."""
    problems: list[str] = []
    attributes = schema.get("attributes", {})
    block_types = schema.get("block_types", {})
    counts: dict[str, int] = {}
    nested: list[tuple[str, dict, str]] = []

    for key, value in body.items():
        if key == "__is_block__" or (top_level and key in META_ARGUMENTS):
            continue
        if top_level and key in META_BLOCKS:
            continue
        if key == "dynamic" and isinstance(value, list):
            for declaration in value:
                for name, dynamic in declaration.items():
                    if name == "__is_block__":
                        continue
                    if name not in block_types:
                        problems.append(f"{where}: dynamic block {name!r} is not a block of this type")
                        continue
                    counts[name] = counts.get(name, 0) + 1
                    for content in dynamic.get("content", []):
                        nested.append((name, content, f"{where}.dynamic.{name}.content"))
                    if "content" not in dynamic:
                        problems.append(f"{where}: dynamic block {name!r} has no content block")
            continue
        if key in block_types:
            if not _is_block(value):
                problems.append(f"{where}: {key!r} is a block, written as an argument")
                continue
            counts[key] = counts.get(key, 0) + len(value)
            for index, item in enumerate(value):
                nested.append((key, item, f"{where}.{key}[{index}]" if len(value) > 1 else f"{where}.{key}"))
            continue
        if key not in attributes:
            kind = "block" if _is_block(value) else "argument"
            problems.append(f"{where}: unknown {kind} {key!r}")
            continue
        if _is_block(value) and "nested_type" not in attributes[key]:
            problems.append(f"{where}: {key!r} is an argument, written as a block")
        attribute = attributes[key]
        if attribute.get("computed") and not (attribute.get("optional") or attribute.get("required")):
            problems.append(f"{where}: {key!r} is computed by the provider and cannot be set")
        if attribute.get("deprecated"):
            problems.append(f"{where}: {key!r} is deprecated")

    for name, attribute in attributes.items():
        if attribute.get("required") and name not in body:
            problems.append(f"{where}: the required argument {name!r} is missing")
    for name, block_type in block_types.items():
        count = counts.get(name, 0)
        if block_type.get("max_items") and count > block_type["max_items"]:
            problems.append(f"{where}: {count} {name!r} blocks; at most {block_type['max_items']} allowed")
        if block_type.get("min_items") and count < block_type["min_items"]:
            problems.append(f"{where}: the required block {name!r} is missing")
        if block_type["block"].get("deprecated") and count:
            problems.append(f"{where}: the block {name!r} is deprecated")
    for name, item, path in nested:
        problems += check_block(item, block_types[name]["block"], path)
    return problems


def check(block: Block, schema: dict) -> list[str]:
    """Problems of one resource or data block against the provider schema (``provider_schema``)."""
    table = schema["resource_schemas" if block.kind == "resource" else "data_source_schemas"]
    where = f"{block.file}: {block.address}"
    if block.type not in table:
        return [f"{where}: {block.type} is not a {block.kind} type of {schema['provider']} {schema['version']}"]
    type_schema = table[block.type]["block"]
    problems = check_block(block.body, type_schema, where, top_level=True)
    if type_schema.get("deprecated"):
        problems.append(f"{where}: the {block.kind} type {block.type} is deprecated")
    return problems
