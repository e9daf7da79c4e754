"""A model snapshot: one published model version copied to local disk, so that a function
bundle can carry its default model and an instance can start without downloading it.

::

    DIR/manifest.json     the version's manifest
    DIR/model.onnx        the files an instance serves (never the torch weights: no bundle has torch)
    DIR/golden.png        (an int8 twin's check photos, when the model has them)

``scripts/build_bundles.py`` writes it (:func:`write_snapshot`) from the store's current default.
An instance never trusts it on its own (:meth:`ModelSnapshot.take`): it stands in for the
store's files only when its manifest names the same model and version with the same size and
sha256 for every file the load needs as the store's manifest, and the bytes read are then
verified against the store's manifest exactly as downloaded ones are. No snapshot, another
model or version, other checksums, a missing or corrupt file: the files are downloaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imgclassify.errors import IntegrityError, UnknownModel

from .catalog import ARTIFACT_FILENAMES, MANIFEST_FILENAME, Manifest, read_catalog, read_manifest, verify_artifact
from .objects import ObjectStore

# What a snapshot holds of a version: what a function bundle can serve (it installs no torch).
SNAPSHOT_KINDS = ("onnx", "golden")


def snapshot_directory(setting: str, package_root: Path = Path(__file__).resolve().parents[2]) -> Path:
    """The directory MODEL_SNAPSHOT_DIR names: a relative path is taken from the directory
    holding the ``imgclassify`` package (in a bundle, the one holding ``main.py``), not from the
    working directory, which differs between runtimes."""
    path = Path(setting)
    return path if path.is_absolute() else package_root / path


@dataclass(frozen=True)
class SnapshotLook:
    """What :meth:`ModelSnapshot.take` found: the verified files, or None and why not."""

    files: dict[str, bytes] | None
    reason: str
    broken: bool = False    # a snapshot is there but unreadable or corrupt: worth a warning


class ModelSnapshot:
    """The snapshot in ``directory`` (which need not exist), read on first use."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._manifest: Manifest | None = None
        self._problem: str | None = None
        self._broken = False
        self._read: dict[str, tuple[bytes, str]] = {}   # kind -> (bytes, their sha256), from prefetch()

    def manifest(self) -> tuple[Manifest | None, str]:
        """The snapshot's manifest, or None and why there is none."""
        if self._manifest is None and self._problem is None:
            path = self.directory / MANIFEST_FILENAME
            try:
                self._manifest = Manifest.from_json(json.loads(path.read_bytes()))
            except FileNotFoundError:
                self._problem = f"there is no snapshot in {self.directory}"
            except (OSError, ValueError) as error:  # JSONDecodeError and a malformed manifest are ValueErrors
                self._problem = f"the snapshot's {path} is unreadable: {error}"
                self._broken = True
        return self._manifest, self._problem or ""

    def prefetch(self) -> None:
        """Read the snapshot's files and their sha256 now, for :meth:`take` to verify later.

        Reading a file and hashing it release the GIL, so a start-up thread doing this runs
        beside the main thread's imports and catalog read. Call :meth:`take` or :meth:`release`
        only once this has returned.
        """
        held, _ = self.manifest()
        for kind in SNAPSHOT_KINDS if held is not None else ():
            if kind in held.artifacts:
                try:
                    data = (self.directory / ARTIFACT_FILENAMES[kind]).read_bytes()
                except OSError:
                    continue  # take() reads it again and says why it cannot
                self._read[kind] = (data, hashlib.sha256(data).hexdigest())

    def prefetched(self, kind: str) -> tuple[bytes, str] | None:
        """The bytes of ``kind`` :meth:`prefetch` read and their sha256, not yet verified; None if none."""
        return self._read.get(kind)

    def release(self) -> None:
        """Drop what :meth:`prefetch` read (a start that loads no model from the snapshot)."""
        self._read.clear()

    def mismatch(self, manifest: Manifest, kinds: list[str]) -> str | None:
        """Why this snapshot cannot stand in for ``kinds`` of the store's ``manifest``; None if it can."""
        held, problem = self.manifest()
        if held is None:
            return problem
        wanted = f"{manifest.name}@{manifest.version}"
        if (held.name, held.version) != (manifest.name, manifest.version):
            return f"the snapshot holds {held.name}@{held.version}, not {wanted}"
        for kind in kinds:
            theirs, ours = manifest.artifacts.get(kind), held.artifacts.get(kind)
            if ours is None or theirs is None:
                return f"the snapshot of {wanted} has no {ARTIFACT_FILENAMES[kind]}"
            if (ours.sha256, ours.bytes) != (theirs.sha256, theirs.bytes):
                return (f"the snapshot's {ARTIFACT_FILENAMES[kind]} of {wanted} has sha256 {ours.sha256}, "
                        f"the store's manifest {theirs.sha256}")
        return None

    def take(self, manifest: Manifest, kinds: list[str]) -> SnapshotLook:
        """The bytes of ``kinds`` of the store's ``manifest`` from this snapshot, verified against
        that manifest, and a sentence saying why; no files when they must be downloaded."""
        prefetched, self._read = self._read, {}
        problem = self.mismatch(manifest, kinds)
        if problem is not None:
            return SnapshotLook(None, problem, broken=self._broken)
        files: dict[str, bytes] = {}
        for kind in kinds:
            path = self.directory / ARTIFACT_FILENAMES[kind]
            try:
                files[kind], digest = prefetched.get(kind) or (path.read_bytes(), None)
                verify_artifact(manifest, manifest.artifacts[kind], files[kind], digest)
            except OSError as error:
                return SnapshotLook(None, f"the snapshot's {path} is unreadable: {error.strerror or error}", True)
            except IntegrityError as error:
                return SnapshotLook(None, f"the snapshot is corrupt: {error.message}", True)
        return SnapshotLook(files, f"the snapshot in {self.directory} matches the store's manifest")


def write_snapshot(store: ObjectStore, directory: Path, default_model: str | None = None) -> Manifest:
    """Copy the latest version of the store's default model (``default_model`` if given, as the
    DEFAULT_MODEL setting chooses it) into ``directory``, verified, replacing what was there.

    UnknownModel if the store has no model yet; IntegrityError if a file does not match its
    manifest or the model has no file a bundle can serve; storage errors as the store raises them.
    """
    catalog, _ = read_catalog(store)
    name = catalog.default_name(default_model)
    if name is None:
        raise UnknownModel(f"{store.uri} has no published model yet")
    version = catalog.resolve(name, None)
    manifest = read_manifest(store, name, version)
    kinds = [kind for kind in SNAPSHOT_KINDS if kind in manifest.artifacts]
    if "onnx" not in kinds:
        raise IntegrityError(f"{name}@{version} has no model.onnx (`python -m imgclassify.publish migrate {name}`)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".snapshot-", dir=directory.parent))
    try:
        for kind in kinds:
            data = store.download(manifest.artifacts[kind].object)
            verify_artifact(manifest, manifest.artifacts[kind], data)
            (staging / ARTIFACT_FILENAMES[kind]).write_bytes(data)
        (staging / MANIFEST_FILENAME).write_bytes(manifest.to_bytes())  # last: a snapshot without it is none at all
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
