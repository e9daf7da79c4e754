"""What a trained classifier and ``:embed`` cost per request against classify on the backbone, and
what ``publish train`` costs against its feature extraction alone: ratios measured in one run.

Publishes Lite0 into a local directory store, trains a classifier on scikit-learn's digits
(``--images`` of them, 30 % held out) and reports ``train``'s wall time against its feature
extraction. Then it serves the same photo through the real classify app (werkzeug test client:
parsing, decode, preprocessing, forward, JSON, the log line) to three operations in turn,
round after round so the host's drift falls on all three alike: ``:classify`` on Lite0,
``:classify`` on the trained model, ``:embed`` on Lite0. Reports the medians and their ratios
to the backbone's classify. Run with ``.venv/bin/python bench/trained.py`` (not part of
``make test``); JSON goes to ``.local/bench-trained.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgclassify.publish.sources import publish_bundled  # noqa: E402
from imgclassify.publish.training import TrainOptions, train_classifier  # noqa: E402
from imgclassify.serving.classify_app import build  # noqa: E402
from imgclassify.settings import Settings  # noqa: E402
from imgclassify.store.objects import LocalStore  # noqa: E402
from tests.support.digits import write_digit_folder  # noqa: E402
from tests.support.photos import cat_jpeg  # noqa: E402


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1797, help="digits to train on (default all 1 797)")
    parser.add_argument("--rounds", type=int, default=200, help="requests per operation (default 200)")
    args = parser.parse_args()
    logging.getLogger("imgclassify.requests").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        store = LocalStore(Path(folder) / "store")
        publish_bundled(store, ["efficientnet_lite0"], log=lambda _: None)
        write_digit_folder(Path(folder) / "digits", args.images)
        result = train_classifier(store, str(Path(folder) / "digits"), name="digits",
                                  options=TrainOptions(test_share=0.3), log=lambda _: None)
        from werkzeug.test import Client
        from werkzeug.wrappers import Request

        app = build(Settings(model_store=str(store.root), preload_default_model=False))
        client = Client(Request.application(app.__call__))
        photo = cat_jpeg()
        paths = {"classify backbone": "/v1/models/efficientnet_lite0:classify",
                 "classify trained": "/v1/models/digits:classify",
                 "embed backbone": "/v1/models/efficientnet_lite0:embed"}
        timings: dict[str, list[float]] = {name: [] for name in paths}
        for name, path in paths.items():  # warm: load and build every model first
            assert client.post(path, data=photo, content_type="image/jpeg").status_code == 200, name
        for _ in range(args.rounds):
            for name, path in paths.items():
                started = time.perf_counter()
                response = client.post(path, data=photo, content_type="image/jpeg")
                timings[name].append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200
        medians = {name: round(statistics.median(values), 3) for name, values in timings.items()}
        base = medians["classify backbone"]
        report = {
            "cpu": cpu_name(), "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "train": {"images": args.images, "held_out_accuracy": result.evaluation["accuracy"], **result.seconds,
                      "total_over_features": round(result.seconds["total"] / result.seconds["features"], 3)},
            "request_ms_p50": medians,
            "ratio_to_backbone_classify": {name: round(value / base, 3) for name, value in medians.items()},
        }
    print(json.dumps(report, indent=2))
    out = REPO / ".local" / "bench-trained.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
