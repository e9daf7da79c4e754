"""Publish models into a store: ``python -m imgclassify.publish --help``.

The command line only: each command calls a typed function of :mod:`.sources` or
:mod:`.catalog_writes` and turns any refusal into one ``error:`` line and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from imgclassify.errors import InvalidRequest, ServiceError
from imgclassify.store.catalog import INTERPOLATIONS, OUTPUTS, parse_model_ref, read_catalog
from imgclassify.store.objects import GcsStore, LocalStore, ObjectStore, open_store

from .catalog_writes import describe_files, remove
from .errors import PublishError
from .quantize import DEFAULT_MIN_TOP1_AGREEMENT
from .sources import BUNDLED, migrate, publish_bundled, publish_framework_model, publish_onnx_file
from .training import DEFAULT_BACKBONE, TrainOptions, format_evaluation, train_classifier


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
    train = commands.add_parser("train", help="train a classifier on a frozen backbone from labelled photos")
    train.add_argument("source", metavar="SOURCE",
                       help="a folder or gs:// prefix of SOURCE/<label>/<image>, or a Vertex AI import CSV "
                            "([ML_USE,]URI,LABEL)")
    train.add_argument("--name", required=True, help="model name to publish as")
    train.add_argument("--backbone", metavar="MODEL[@VERSION]",
                       help=f"published model whose features are used (default {DEFAULT_BACKBONE}; with "
                            "--features, the batch job's model)")
    train.add_argument("--features", metavar="PREFIX",
                       help="take the features from an `imgclassify-batch --features` output instead of "
                            "computing them here (large sets; docs/batch.md)")
    train.add_argument("--version", help="version label (default: next number)")
    defaults = TrainOptions()
    train.add_argument("--min-per-label", type=int, default=defaults.min_per_label,
                       help=f"refuse a label with fewer images (default {defaults.min_per_label})")
    train.add_argument("--max-bad-share", type=float, default=defaults.max_bad_share,
                       help=f"refuse a set with more undecodable images than this share (default "
                            f"{defaults.max_bad_share:g}); fewer are listed and skipped")
    train.add_argument("--test-share", type=float, default=defaults.test_share,
                       help=f"share of each label's unassigned images held out (default {defaults.test_share:g})")
    train.add_argument("--validation-share", type=float, default=defaults.validation_share,
                       help=f"share of the rest that chooses the regularisation (default "
                            f"{defaults.validation_share:g})")
    train.add_argument("--augment", action="store_true", help="add flipped and cropped views of training images")
    train.add_argument("--seed", type=int, default=defaults.seed, help="seed of the split and the augmentation")
    train.add_argument("--description")
    train.add_argument("--default", action="store_true", help="make it the default model")
    quantize = commands.add_parser(
        "quantize", help="publish an int8 twin of a published fp32 ONNX model (statically quantized, measured)")
    quantize.add_argument("ref", metavar="NAME[@VERSION]", help="the fp32 model to quantize (default: its latest)")
    quantize.add_argument("--name", help="model name to publish as (default: NAME_int8)")
    quantize.add_argument("--version", help="version label (default: next number)")
    quantize.add_argument("--min-top1-agreement", type=float, default=DEFAULT_MIN_TOP1_AGREEMENT, metavar="FRACTION",
                          help="refuse, writing nothing, if the twin's top-1 agrees with the source's on fewer of "
                               f"the held-out crops (default {DEFAULT_MIN_TOP1_AGREEMENT})")
    quantize.add_argument("--default", action="store_true", help="make it the default model")
    migrate_command = commands.add_parser(
        "migrate", help="republish models that have no model.onnx, or whose graph has no feature output, as new "
                        "versions")
    migrate_command.add_argument("names", nargs="*", metavar="NAME", help="models to migrate (default: all)")
    commands.add_parser("list", help="print the catalog")
    rm = commands.add_parser("remove", help="unpublish NAME@VERSION")
    rm.add_argument("ref", metavar="NAME@VERSION")
    return parser


def _store_text(store: ObjectStore) -> str:
    """The store a command used, as its user must see it: a bucket on an emulator says so."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if isinstance(store, GcsStore) and emulator:
        return f"{store.uri} (the storage emulator at {emulator})"
    return store.uri


def _note_if_missing(store: ObjectStore) -> None:
    # A mistyped or unset MODEL_STORE falls back to a local directory; an empty answer from a
    # directory that does not exist must not pass for an empty bucket.
    if isinstance(store, LocalStore) and not store.root.exists():
        print(f"note: {store.uri} does not exist; set MODEL_STORE or --store to the store you mean "
              "(make dev prints the lines for its own)", file=sys.stderr)


def _check_shares(args: argparse.Namespace) -> None:
    for option, value in (("--test-share", args.test_share), ("--validation-share", args.validation_share),
                          ("--max-bad-share", args.max_bad_share)):
        if not 0 <= value < 1:
            raise InvalidRequest(f"{option} must be at least 0 and below 1; found {value:g}")
    if args.min_per_label < 3:
        raise InvalidRequest(f"--min-per-label must be at least 3 (one image each to train, validate and test); "
                             f"found {args.min_per_label}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    store = open_store(args.store)
    where = _store_text(store)
    try:
        if args.command == "bundled":
            published = publish_bundled(store, args.names or None)
            print(f"bundled models in {where}: {len(published)} published, the rest were already there")
        elif args.command in ("torchvision", "timm"):
            manifest = publish_framework_model(
                store, args.library, args.builder, state_dict=args.state_dict, pretrained=args.pretrained,
                random_init=args.random_init, seed=args.seed, name=args.name, version=args.version,
                num_classes=args.num_classes, labels_file=args.labels, description=args.description,
                make_default=args.default, torch_only=args.torch_only)
            print(f"published {manifest.name}@{manifest.version} ({describe_files(manifest)}) to {where}")
        elif args.command == "onnx":
            manifest = publish_onnx_file(
                store, args.file, labels_file=args.labels, crop_size=args.crop_size, resize=args.resize,
                interpolation=args.interpolation, mean=tuple(args.mean), std=tuple(args.std), output=args.output,
                max_mb=args.max_mb, name=args.name, version=args.version, description=args.description,
                licence=args.licence, make_default=args.default)
            print(f"published {manifest.name}@{manifest.version} ({describe_files(manifest)}) to {where}")
        elif args.command == "train":
            _check_shares(args)
            options = TrainOptions(min_per_label=args.min_per_label, max_bad_share=args.max_bad_share,
                                   test_share=args.test_share, validation_share=args.validation_share,
                                   augment=args.augment, seed=args.seed)
            result = train_classifier(store, args.source, name=args.name, backbone=args.backbone,
                                      version=args.version, options=options, features_from=args.features,
                                      description=args.description,
                                      make_default=args.default)
            print(format_evaluation(result.evaluation))
            seconds = result.seconds
            print(f"features {seconds['features']:.1f} s, head {seconds['fit_and_evaluate']:.1f} s, "
                  f"total {seconds['total']:.1f} s ({seconds['total'] / max(seconds['features'], 1e-9):.2f} x the "
                  f"features)")
            print(f"published {result.manifest.name}@{result.manifest.version} "
                  f"({describe_files(result.manifest)}) to {where}")
        elif args.command == "quantize":
            from .quantize import publish_int8_twin

            manifest = publish_int8_twin(store, args.ref, name=args.name, version=args.version,
                                         min_top1_agreement=args.min_top1_agreement, make_default=args.default,
                                         log=lambda line: print(line, file=sys.stderr))
            print(f"published {manifest.name}@{manifest.version} ({describe_files(manifest)}) to {where}")
        elif args.command == "migrate":
            migrated = migrate(store, args.names or None)
            print(f"migrated {len(migrated)} models in {where}; the rest already had model.onnx with features")
        elif args.command == "list":
            _note_if_missing(store)
            catalog, _ = read_catalog(store)
            print(json.dumps({"store": store.uri, "default_model": catalog.default_name(),
                              "models": catalog.listing()}, indent=2))
        elif args.command == "remove":
            name, version = parse_model_ref(args.ref)
            if version is None:
                raise InvalidRequest("remove needs NAME@VERSION")
            remove(store, name, version)
            print(f"removed {name}@{version} from {where}")
    except (ServiceError, PublishError) as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    except OSError as error:  # a model, labels or state-dict file that cannot be read
        print(f"error: {error.strerror or error}: {error.filename}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
