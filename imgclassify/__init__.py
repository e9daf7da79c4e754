"""imgclassify: serverless image classification, one level of subpackages over a shared ground.

The map, top to bottom (each part may import only the parts below it; import-linter holds
the rules, see ``[tool.importlinter]`` in pyproject.toml and ``make lint``)::

    serving/     the HTTP edge: routes, contract, request parsing, image sources, the apps, start-up
    publish/     catalog writes, model sources, ONNX export, the publisher's CLI
    batch/       the Cloud Run job that classifies bucket prefixes
        ──────── the three above never import each other
    runtime/     engines, ONNX rules, loaded models, the warm cache, the registry, scores
        ────────
    store/       objects in gs:// or a directory, manifests, the catalog and an instance's view of it
    imaging/     safe decode and preprocessing
        ──────── the two above never import each other
    errors, settings, logs, memory, inflight, top_k   the ground: shared facts and plumbing, standard library only

Entry points:

* ``functions/classify/main.py`` and ``functions/list_models/main.py`` call
  :func:`imgclassify.serving.bootstrap.create_http_app`;
* ``python -m imgclassify.publish`` publishes, lists and removes models;
* ``python -m imgclassify.batch`` classifies a bucket prefix.

Importing this package imports nothing: each function loads only the parts it serves. It does
one thing: it turns ONNX Runtime's telemetry off (below) unless ``ORT_DISABLE_TELEMETRY`` is set.
"""

import os

# ONNX Runtime's Linux wheels (1.29 and later) collect telemetry by default: a device id and an
# event store under ~/.cache/Microsoft, session and model events queued for upload to Microsoft.
# A classification service must not send its operators' model details anywhere, and nothing here
# may connect beyond 127.0.0.1. The runtime reads this variable once, when it is first imported,
# so it is set where every entry point passes before any part of the package imports it.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
