"""The catalog write protocol: how a version is published and removed without readers seeing half of it.

Order of writes, so that readers never see a half-published model: the model files first,
then the manifest, then the catalog entry. Every write has a generation precondition: files
and manifest only if absent (a version is never overwritten), the catalog only if nobody
changed it since we read it (concurrent publishers retry instead of losing entries).
Removal goes the other way round: catalog entry, manifest, files.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from imgclassify.errors import InvalidRequest, UnknownVersion
from imgclassify.store.catalog import (
    ARTIFACT_FILENAMES,
    CATALOG_OBJECT,
    SCHEMA_VERSION,
    ArtifactRef,
    Catalog,
    Manifest,
    artifact_object,
    check_name,
    check_version,
    manifest_object,
    read_catalog,
)
from imgclassify.store.objects import GenerationMismatch, ObjectStore

from .errors import PublishError, VersionExists

_CATALOG_ATTEMPTS = 50


def update_catalog(store: ObjectStore, change: Callable[[Catalog], Catalog]) -> Catalog:
    """Apply ``change`` to the catalog with compare-and-swap, retrying when another writer won."""
    for attempt in range(_CATALOG_ATTEMPTS):
        catalog, generation = read_catalog(store)
        updated = change(catalog)
        try:
            store.write(CATALOG_OBJECT, updated.to_bytes(), if_generation_match=generation)
            return updated
        except GenerationMismatch:
            time.sleep(random.uniform(0, 0.05 * (attempt + 1)))
    raise PublishError(f"the catalog kept changing; gave up after {_CATALOG_ATTEMPTS} attempts")


def _progress_bar(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=description,
                disable=not sys.stderr.isatty(), leave=False)


def refuse_existing(store: ObjectStore, name: str, version: str) -> None:
    """Raise VersionExists if ``name@version`` is published: versions are immutable."""
    if store.info(manifest_object(name, version)) is not None:
        raise VersionExists(f"{name}@{version} is already published; versions are immutable")


def publish(store: ObjectStore, manifest: Manifest, files: dict[str, bytes], *,
            make_default: bool = False) -> Manifest:
    """Write ``files`` (artifact kind -> bytes), then ``manifest`` (their refs filled in), then the catalog.

    The caller has checked the files (see :func:`publish_torch_module`). Raises VersionExists
    if the version already exists. A publish that died after writing some files can be
    finished by publishing the same files again.
    """
    name, version = check_name(manifest.name), check_version(manifest.version)
    unknown = sorted(set(files) - set(ARTIFACT_FILENAMES))
    if not files or unknown:
        raise InvalidRequest(f"a version holds some of {', '.join(ARTIFACT_FILENAMES)}; found {sorted(files)}")
    refuse_existing(store, name, version)
    artifacts = {kind: ArtifactRef(artifact_object(name, version, kind), len(data), hashlib.sha256(data).hexdigest())
                 for kind, data in sorted(files.items())}
    manifest = replace(
        manifest,
        artifacts=artifacts,
        published_at=manifest.published_at or datetime.now(UTC).isoformat(timespec="seconds"),
        publish_id=uuid.uuid4().hex,
        schema_version=SCHEMA_VERSION,  # what to_bytes() writes, even for a manifest read from schema 1
    )
    for kind, ref in artifacts.items():
        with _progress_bar(ref.bytes, f"{name}@{version} {ARTIFACT_FILENAMES[kind]}") as bar:
            try:
                store.write(ref.object, files[kind], if_generation_match=0, progress=bar.update)
            except GenerationMismatch:
                leftover = store.read(ref.object).data
                if hashlib.sha256(leftover).hexdigest() != ref.sha256:
                    raise VersionExists(
                        f"{ref.object} holds another file from an unfinished publish; "
                        f"run `remove {name}@{version}` first") from None
    try:
        store.write(manifest_object(name, version), manifest.to_bytes(), if_generation_match=0)
    except GenerationMismatch:
        # Either another publisher won, or our own write landed and only its reply was lost
        # (the retry then fails its precondition): the stored bytes tell which.
        if store.read(manifest_object(name, version)).data != manifest.to_bytes():
            raise VersionExists(f"{name}@{version} was published by somebody else meanwhile") from None
    update_catalog(store, lambda catalog: catalog.with_version(manifest, make_default=make_default))
    return manifest


def remove(store: ObjectStore, name: str, version: str) -> None:
    """Unpublish ``name@version``: catalog entry first, then manifest and weights.

    Also cleans up a half-finished publish that never reached the catalog.
    """
    check_name(name)
    check_version(version)
    catalog, _ = read_catalog(store)
    listed = version in catalog.models.get(name, {}).get("versions", {})
    objects = [manifest_object(name, version)] + [artifact_object(name, version, kind) for kind in ARTIFACT_FILENAMES]
    present = [obj for obj in objects if store.info(obj) is not None]
    if not listed and not present:
        raise UnknownVersion(f"{name}@{version} is not published")
    if listed:
        update_catalog(store, lambda current: current.without_version(name, version)
                       if version in current.models.get(name, {}).get("versions", {}) else current)
    for obj in present:
        store.delete(obj)


def next_version(store: ObjectStore, name: str) -> str:
    """One more than the highest numeric version of ``name`` (``1`` for a new model)."""
    catalog, _ = read_catalog(store)
    numbers = [int(v) for v in catalog.models.get(name, {}).get("versions", {}) if v.isdigit()]
    return str(max(numbers, default=0) + 1)


def describe_files(manifest: Manifest) -> str:
    return ", ".join(f"{ARTIFACT_FILENAMES[kind]} {ref.bytes:,} bytes" for kind, ref in manifest.artifacts.items())
