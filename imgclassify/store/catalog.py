"""Model manifests, the catalog that indexes them, and the bucket layout they live in.

::

    models/catalog.json                        index of every published model (one GET lists all)
    models/NAME/VERSION/manifest.json          immutable once written
    models/NAME/VERSION/model.onnx             immutable once written (what ONNX Runtime serves)
    models/NAME/VERSION/weights.safetensors    immutable once written (the torch weights, if any)
    models/NAME/VERSION/golden.png             immutable once written (an int8 twin's check photos)

A manifest says everything needed to serve a model with no other code or download: each
artifact with its size and sha256, and which engine serves it. The catalog holds a summary
of each version and which version ``latest`` means.

Schema versions: 2 names ``artifacts`` and ``engine``; 1 (before ONNX) named one
``weights`` object, which reads as a torch-only model (``python -m imgclassify.publish
migrate`` republishes such models with ONNX).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from imgclassify.errors import (
    IntegrityError,
    InvalidModelName,
    InvalidModelVersion,
    InvalidRequest,
    UnknownModel,
    UnknownVersion,
)

from .objects import ObjectNotFound, ObjectStore

SCHEMA_VERSION = 2
CATALOG_OBJECT = "models/catalog.json"
MANIFEST_FILENAME = "manifest.json"
# artifact kind -> its file name in the version's folder
# (golden.png: an int8 twin's check photos, see imgclassify.runtime.golden)
ARTIFACT_FILENAMES = {"onnx": "model.onnx", "safetensors": "weights.safetensors", "golden": "golden.png"}
# what the model's output row holds; softmax is applied to logits only
OUTPUTS = ("logits", "probabilities")
LATEST = "latest"

MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
MODEL_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


def version_dir(name: str, version: str) -> str:
    return f"models/{name}/{version}"


def manifest_object(name: str, version: str) -> str:
    return f"{version_dir(name, version)}/{MANIFEST_FILENAME}"


def artifact_object(name: str, version: str, kind: str) -> str:
    """Where artifact ``kind`` ("onnx" or "safetensors") of ``name@version`` lives."""
    return f"{version_dir(name, version)}/{ARTIFACT_FILENAMES[kind]}"


def weights_object(name: str, version: str) -> str:
    return artifact_object(name, version, "safetensors")


def onnx_object(name: str, version: str) -> str:
    return artifact_object(name, version, "onnx")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise InvalidRequest."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) or ".." in name:
        raise InvalidModelName(
            f"model name must be 1-64 of a-z, 0-9, '_', '-', '.', starting with a letter or digit; "
            f"found {str(name)[:80]!r}"
        )
    return name


def check_version(version: str) -> str:
    """Return ``version`` if it is a valid version label, else raise InvalidRequest."""
    if not isinstance(version, str) or not MODEL_VERSION.fullmatch(version) or ".." in version:
        raise InvalidModelVersion(
            f"model version must be 1-32 of A-Z, a-z, 0-9, '_', '-', '.'; found {str(version)[:80]!r}"
        )
    return version


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """Split ``name`` or ``name@version`` (``@latest`` is the same as no version)."""
    if not isinstance(ref, str):
        raise InvalidModelName(f"model must be a string, found {type(ref).__name__}")
    name, at, version = ref.partition("@")
    check_name(name)
    if not at or version == LATEST:
        return name, None
    return name, check_version(version)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor: resize shorter side, centre crop, normalise."""

    resize: int
    crop_size: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if not (isinstance(self.crop_size, int) and isinstance(self.resize, int)
                and 1 <= self.crop_size <= self.resize <= 4096):
            raise ValueError(f"need 1 <= crop_size <= resize <= 4096, found {self.crop_size}, {self.resize}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, found {self.interpolation!r}")
        for values in (self.mean, self.std):
            if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
                raise ValueError(f"mean and std need three numbers, found {values!r}")
        if min(self.std) <= 0:
            raise ValueError("std must be positive")


@dataclass(frozen=True)
class Architecture:
    """Which library builds the network, with which builder name and keyword arguments."""

    library: str
    builder: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ArtifactRef:
    """One stored file of a model version: its object name, exact size and sha256."""

    object: str
    bytes: int
    sha256: str

    @classmethod
    def from_json(cls, data: Any) -> ArtifactRef:
        ref = cls(str(data["object"]), int(data["bytes"]), str(data["sha256"]))
        if not re.fullmatch(r"[0-9a-f]{64}", ref.sha256):
            raise ValueError(f"the sha256 of {ref.object} must be 64 hex digits")
        return ref


@dataclass(frozen=True)
class Manifest:
    """Everything needed to serve one model version."""

    name: str
    version: str
    architecture: Architecture
    artifacts: dict[str, ArtifactRef]   # kind ("onnx", "safetensors") -> stored file
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    engine: str = "onnxruntime"          # the engine the publisher checked it with
    output: str = "logits"
    feature_size: int | None = None      # width of the graph's feature output (what :embed serves), if any
    random_init: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    published_at: str = ""
    publish_id: str = ""        # unique per publish: tells a publisher its own write from another's
    schema_version: int = SCHEMA_VERSION

    @property
    def input_size(self) -> list[int]:
        return [3, self.preprocessing.crop_size, self.preprocessing.crop_size]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        data["input_size"] = self.input_size
        data["num_classes"] = self.num_classes
        return data

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=2, sort_keys=True).encode()

    def served_artifact(self) -> ArtifactRef:
        """The file the publisher's engine serves: model.onnx where there is one."""
        return self.artifacts.get("onnx") or self.artifacts["safetensors"]

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Parse a manifest; raise ValueError if anything is missing or of the wrong type."""
        try:
            if not isinstance(data["labels"], list):  # a string or dict would iterate into bogus labels
                raise ValueError("labels must be a non-empty list of strings")
            labels = tuple(data["labels"])
            if not labels or not all(isinstance(label, str) for label in labels):
                raise ValueError("labels must be a non-empty list of strings")
            pre = data["preprocessing"]
            schema = int(data.get("schema_version", 1))
            if schema == 1:  # one safetensors file, served by torch
                artifacts, engine = {"safetensors": ArtifactRef.from_json(data["weights"])}, "torch"
            else:
                artifacts = {kind: ArtifactRef.from_json(ref) for kind, ref in data["artifacts"].items()}
                engine = str(data["engine"])
            if not artifacts or not set(artifacts) <= set(ARTIFACT_FILENAMES):
                raise ValueError(f"artifacts must be some of {', '.join(ARTIFACT_FILENAMES)}, "
                                 f"found {sorted(artifacts)}")
            feature_size = data.get("feature_size")
            if feature_size is not None and (not isinstance(feature_size, int) or isinstance(feature_size, bool)
                                             or feature_size < 1):
                raise ValueError(f"feature_size must be a positive whole number or null, found {feature_size!r}")
            output = data.get("output", "logits")
            if output not in OUTPUTS:
                raise ValueError(f"output must be one of {OUTPUTS}, found {output!r}")
            architecture = data["architecture"]
            if not isinstance(architecture.get("kwargs", {}), dict):
                raise ValueError("architecture.kwargs must be an object")
            return cls(
                name=check_name(data["name"]),
                version=check_version(data["version"]),
                architecture=Architecture(str(architecture["library"]), str(architecture["builder"]),
                                          dict(architecture.get("kwargs", {}))),
                artifacts=artifacts,
                engine=engine,
                output=output,
                feature_size=feature_size,
                labels=labels,
                preprocessing=Preprocessing(
                    resize=pre["resize"], crop_size=pre["crop_size"],
                    interpolation=pre.get("interpolation", "bilinear"),
                    mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                ),
                random_init=bool(data.get("random_init", False)),
                metadata=dict(data.get("metadata", {})),
                published_at=str(data.get("published_at", "")),
                publish_id=str(data.get("publish_id", "")),
                schema_version=schema,
            )
        except (KeyError, TypeError, AttributeError, InvalidRequest) as error:
            raise ValueError(f"malformed manifest: {error}") from None

    def summary(self) -> dict[str, Any]:
        """What the catalog and ``GET /v1/models`` say about this version."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.metadata.get("description", ""),
            "architecture": f"{self.architecture.library}/{self.architecture.builder}",
            "input_size": self.input_size,
            "num_classes": self.num_classes,
            "engine": self.engine,
            "feature_size": self.feature_size,
            "weights_bytes": self.served_artifact().bytes,
            "random_init": self.random_init,
            "top1_accuracy": self.metadata.get("top1_accuracy"),
            "licence": self.metadata.get("licence"),
            "source": self.metadata.get("source"),
            "published_at": self.published_at,
            "precision": self.metadata.get("precision", "fp32"),
            "agreement": self.metadata.get("agreement"),
            "quantized_from": self.metadata.get("quantized_from"),
        }


@dataclass(frozen=True)
class Catalog:
    """The index of published models: ``{name: {"latest": version, "versions": {version: summary}}}``."""

    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_model: str | None = None

    @classmethod
    def from_bytes(cls, raw: bytes) -> Catalog:
        try:
            data = json.loads(raw)
            models = data["models"]
            if not isinstance(models, dict) or not all(
                isinstance(entry.get("versions"), dict) and entry.get("latest") in entry["versions"]
                for entry in models.values()
            ):
                raise ValueError("every model needs versions and a latest that is one of them")
            return cls(models=models, default_model=data.get("default_model"))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise IntegrityError(f"{CATALOG_OBJECT} is malformed: {error}") from None

    def to_bytes(self) -> bytes:
        data = {"schema_version": SCHEMA_VERSION, "default_model": self.default_model, "models": self.models}
        return json.dumps(data, indent=2, sort_keys=True).encode()

    def resolve(self, name: str, version: str | None) -> str:
        """Return the concrete version that ``name[@version]`` means; raise 404 errors if unknown."""
        entry = self.models.get(name)
        if entry is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise UnknownModel(f"no model named {name!r} is published (known: {known})")
        if version is None:
            return entry["latest"]
        if version not in entry["versions"]:
            known = ", ".join(sorted(entry["versions"]))
            raise UnknownVersion(f"model {name!r} has no version {version!r} (known: {known})")
        return version

    def default_name(self, configured: str | None = None) -> str | None:
        """The default model, decided here only: ``configured`` (the DEFAULT_MODEL setting) when
        given, else the catalog's marked default, else the first model by name."""
        if configured:
            return configured
        if self.default_model in self.models:
            return self.default_model
        return min(self.models) if self.models else None

    def with_version(self, manifest: Manifest, *, make_default: bool = False) -> Catalog:
        """A new catalog that lists ``manifest`` as its model's latest version."""
        models = {name: dict(entry) for name, entry in self.models.items()}
        entry = models.setdefault(manifest.name, {"versions": {}})
        entry["versions"] = {**entry.get("versions", {}), manifest.version: manifest.summary()}
        entry["latest"] = manifest.version
        default = manifest.name if make_default or self.default_model is None else self.default_model
        return replace(self, models=models, default_model=default)

    def without_version(self, name: str, version: str) -> Catalog:
        """A new catalog without ``name@version``; ``latest`` falls back to the newest remaining."""
        self.resolve(name, version)
        models = {key: dict(entry) for key, entry in self.models.items()}
        versions = {key: value for key, value in models[name]["versions"].items() if key != version}
        if versions:
            latest = models[name]["latest"]
            if latest == version:
                # published_at has 1 s resolution: break ties by version number, so "10" beats "9".
                latest = max(versions, key=lambda key: (versions[key].get("published_at", ""),
                                                        int(key) if key.isdecimal() else -1, key))
            models[name] = {"latest": latest, "versions": versions}
        else:
            del models[name]
        default = self.default_model if self.default_model in models else None
        return replace(self, models=models, default_model=default)

    def listing(self, configured_default: str | None = None) -> list[dict[str, Any]]:
        """The latest version of every model, with all version labels, default first then by name."""
        default = self.default_name(configured_default)
        rows = []
        for name in sorted(self.models, key=lambda key: (key != default, key)):
            entry = self.models[name]
            rows.append({
                **entry["versions"][entry["latest"]],
                "default": name == default,
                "versions": sorted(entry["versions"]),
            })
        return rows


def verify_artifact(manifest: Manifest, artifact: ArtifactRef, data: bytes, digest: str | None = None) -> None:
    """Raise IntegrityError unless ``data`` has the manifest's exact size and sha256 (``digest``:
    the sha256 of ``data``, when the caller computed it as it read the bytes)."""
    label = f"{artifact.object.rsplit('/', 1)[-1]} of {manifest.name}@{manifest.version}"
    if len(data) != artifact.bytes:
        raise IntegrityError(f"{label} has {len(data)} bytes, manifest says {artifact.bytes}")
    digest = digest or hashlib.sha256(data).hexdigest()
    if digest != artifact.sha256:
        raise IntegrityError(f"{label} has sha256 {digest}, manifest says {artifact.sha256}")


def read_catalog(store: ObjectStore) -> tuple[Catalog, int]:
    """Read the catalog and its generation; an empty store has an empty catalog at generation 0."""
    try:
        stored = store.read(CATALOG_OBJECT)
    except ObjectNotFound:
        return Catalog(), 0
    return Catalog.from_bytes(stored.data), stored.generation


def read_manifest(store: ObjectStore, name: str, version: str) -> Manifest:
    """Read and validate one manifest; a missing or malformed one is an integrity failure."""
    try:
        raw = store.read(manifest_object(name, version)).data
    except ObjectNotFound:
        raise IntegrityError(f"the catalog lists {name}@{version} but its manifest is missing") from None
    try:
        manifest = Manifest.from_json(json.loads(raw))
    except ValueError as error:
        raise IntegrityError(f"manifest of {name}@{version} is malformed: {error}") from None
    if (manifest.name, manifest.version) != (name, version):
        raise IntegrityError(f"the manifest stored for {name}@{version} describes "
                             f"{manifest.name}@{manifest.version}")
    return manifest
