"""The command line and exit status of ``imgclassify-batch`` / ``python -m imgclassify.batch``."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping

from imgclassify.errors import ServiceError, UnknownModel, UnknownVersion
from imgclassify.logs import configure_logging
from imgclassify.settings import ConfigError, Settings, declared
from imgclassify.top_k import parse_top_k

from .plan import BatchConfigError, BatchOptions
from .task import run_task

log = logging.getLogger(__package__)  # "imgclassify.batch" in every part, and under python -m


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, found {value}")
    return value


def _top_k(text: str) -> int:
    try:
        return parse_top_k(text)
    except ServiceError as error:
        raise argparse.ArgumentTypeError(error.message) from None


def _task_index(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, found {value}")
    return value


def _default(env_name: str) -> str:
    """The declared default of a batch variable (imgclassify.settings.BATCH_SETTINGS), as argparse reads it."""
    return declared(env_name).default_text


def _from(env: Mapping[str, str], env_name: str) -> str:
    return env.get(env_name, _default(env_name))


def _help(env_name: str) -> str:
    return f"{declared(env_name).meaning} ({env_name}, default {_default(env_name)})"


def parse_args(argv: list[str] | None, env: Mapping[str, str]) -> BatchOptions:
    parser = argparse.ArgumentParser(
        prog="imgclassify-batch",
        description="Classify every image under a prefix with one model; one JSON Lines output per task. "
                    "Each flag falls back to the environment variable named in its help.")
    parser.add_argument("input", nargs="?", metavar="INPUT", default=env.get("BATCH_INPUT"),
                        help="gs://bucket/path/ or a local directory of images (BATCH_INPUT)")
    parser.add_argument("output", nargs="?", metavar="OUTPUT", default=env.get("BATCH_OUTPUT"),
                        help="gs://bucket/path/ or a local directory for the results (BATCH_OUTPUT)")
    parser.add_argument("--model", default=env.get("BATCH_MODEL") or None,
                        help="name or name@version (BATCH_MODEL; default: DEFAULT_MODEL, else the catalog's default)")
    parser.add_argument("--top-k", type=_top_k, default=_from(env, "BATCH_TOP_K"),
                        help=_help("BATCH_TOP_K"))
    parser.add_argument("--batch-size", type=_positive_int, default=_from(env, "BATCH_SIZE"),
                        help=_help("BATCH_SIZE"))
    parser.add_argument("--download-concurrency", type=_positive_int,
                        default=_from(env, "BATCH_DOWNLOAD_CONCURRENCY"), help=_help("BATCH_DOWNLOAD_CONCURRENCY"))
    parser.add_argument("--chunk-size", type=_positive_int, default=_from(env, "BATCH_CHUNK_SIZE"),
                        help=_help("BATCH_CHUNK_SIZE"))
    parser.add_argument("--task-index", type=_task_index, default=env.get("CLOUD_RUN_TASK_INDEX", "0"),
                        help="this task's index (CLOUD_RUN_TASK_INDEX, default 0)")
    parser.add_argument("--task-count", type=_positive_int, default=env.get("CLOUD_RUN_TASK_COUNT", "1"),
                        help="number of tasks (CLOUD_RUN_TASK_COUNT, default 1)")
    parser.add_argument("--log-every", type=float, default=_from(env, "BATCH_LOG_SECONDS"),
                        help=_help("BATCH_LOG_SECONDS"))
    try:
        features = declared("BATCH_FEATURES").read(env)
    except ConfigError as error:
        parser.error(str(error))
    parser.add_argument("--features", action=argparse.BooleanOptionalAction, default=features,
                        help=_help("BATCH_FEATURES"))
    args = parser.parse_args(argv)
    if not args.input or not args.output:
        parser.error("INPUT and OUTPUT (or BATCH_INPUT and BATCH_OUTPUT) are required")
    if args.task_index >= args.task_count:
        parser.error(f"task index {args.task_index} must be below the task count {args.task_count}")
    return BatchOptions(input=args.input, output=args.output, model=args.model, top_k=args.top_k,
                        batch_size=args.batch_size, download_concurrency=args.download_concurrency,
                        chunk_size=args.chunk_size, task_index=args.task_index, task_count=args.task_count,
                        log_every_seconds=args.log_every, attempt=env.get("CLOUD_RUN_TASK_ATTEMPT"),
                        features=args.features)


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Exit status: 0 done (bad images are rows, not failures), 2 bad arguments, 1 anything else (retry)."""
    env = os.environ if env is None else env
    options = parse_args(argv, env)
    configure_logging()
    try:
        settings = Settings.from_env(env)
        run_task(options, settings)
    except (BatchConfigError, ConfigError) as error:
        log.error("%s", error)
        return 2
    except (UnknownModel, UnknownVersion) as error:  # say where the job looked
        log.error("%s: %s (model store: %s, from MODEL_STORE)", error.code, error.message,
                  settings.model_store)
        return 2
    except ServiceError as error:
        log.error("%s: %s", error.code, error.message)
        return 2 if 400 <= error.status < 500 else 1
    except Exception:
        log.exception("task failed; a retry resumes after the last chunk written")
        return 1
    return 0
