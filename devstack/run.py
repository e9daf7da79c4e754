"""``make dev``: the whole service on http://127.0.0.1:8080 until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from .processes import REPO
from .stack import FUNCTIONS, LocalStack

# The README's photo too: scikit-image's "chelsea" (public domain), a tabby cat.
SAMPLE_PHOTO = REPO / "scripts" / "data" / "chelsea.jpg"


def banner(stack: LocalStack) -> str:
    """What a user needs once the stack answers: its URL, a first request (with the key when the
    router checks keys, as API Gateway does: LOCAL_API_KEY), and the lines that point the
    publisher and the batch job at this stack's store."""
    photo = os.path.relpath(SAMPLE_PHOTO)
    python = os.path.relpath(sys.executable) if sys.prefix != sys.base_prefix else sys.executable
    if stack.api_key:
        key = f"-H 'x-api-key: {stack.api_key}' "
        keys = ("API keys and quotas are checked as API Gateway checks them (LOCAL_API_KEY); "
                f"the key: {stack.api_key}\n")
    else:
        key = keys = ""
    return f"""
Serving on {stack.url}/  (Ctrl-C stops everything)
{keys}
  curl {key}{stack.url}/v1/models
  curl {key}--data-binary @{photo} -H 'Content-Type: image/jpeg' {stack.url}/v1/models/efficientnet_lite0:classify

To publish to this stack (or run the batch job on it), in another shell:

  export MODEL_STORE={stack.model_store} STORAGE_EMULATOR_HOST={stack.emulator.url}
  {python} -m imgclassify.publish list
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make dev", description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEV_PORT", 8080)))
    parser.add_argument("--emulator-port", type=int, default=int(os.environ.get("EMULATOR_PORT", 9023)))
    parser.add_argument("--bucket", default=os.environ.get("DEV_BUCKET", "imgclassify-models"))
    parser.add_argument("--data-dir", type=Path, default=REPO / ".local",
                        help="where the emulator's data (gcs/) and the logs (logs/) live (default: .local)")
    parser.add_argument("--models", nargs="*", metavar="NAME",
                        help="bundled models to publish when missing (default: all three)")
    parser.add_argument("--no-int8", action="store_true", default=os.environ.get("DEV_INT8", "1") == "0",
                        help="do not publish the bundled models' int8 twins (made once per source version, "
                             "a minute or two each; DEV_INT8=0 too)")
    args = parser.parse_args(argv)

    local = args.data_dir
    (local / "logs").mkdir(parents=True, exist_ok=True)
    api_key = os.environ.get("LOCAL_API_KEY", "").strip() or None
    stack = LocalStack(bucket=args.bucket, router_port=args.port, emulator_port=args.emulator_port,
                       data_dir=local / "gcs", log_dir=local / "logs", bundled_models=args.models or None,
                       api_key=api_key)
    # SIGTERM (kill, systemd) and SIGHUP (the terminal closed) stop as gracefully as Ctrl-C,
    # even during start-up; SIGINT too when a script started this in the background (a shell
    # then starts it with SIGINT ignored). SIGKILL cannot be caught: then the servers'
    # parent-death signal ends them (processes.spawn).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    try:
        print(f"storage emulator on 127.0.0.1:{args.emulator_port} (data in {local / 'gcs'})", flush=True)
        stack.start_storage()
        for function in FUNCTIONS:
            print(f"starting {function} (logs in {local / 'logs' / function}.log)", flush=True)
            stack.start_function(function)
        stack.start_router()
        print(banner(stack), flush=True)
        if not args.no_int8:
            # after the banner: the fp32 models serve meanwhile, the twins join the listing as they are published
            stack.publish_int8_twins()
        threading.Event().wait()  # until a signal interrupts it
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping…", flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
