"""Manifest drafts for the small graphs of :mod:`tests.support.onnx_graphs`.

Kept apart from that module, which imports nothing of the package: a test of what importing
``imgclassify`` changes (tests/unit/test_runtime_telemetry.py) builds its graphs without it.
"""

from __future__ import annotations

from imgclassify.store.catalog import Architecture, ArtifactRef, Manifest, Preprocessing


def tiny_draft(version: str, name: str = "tiny") -> Manifest:
    """A manifest to publish a ``colour_classifier(3)`` graph with (red, green, blue; 40 / 32 px)."""
    return Manifest(name=name, version=version, architecture=Architecture("onnx", "tests"),
                    artifacts={"onnx": ArtifactRef("", 0, "0" * 64)}, labels=("red", "green", "blue"),
                    preprocessing=Preprocessing(resize=40, crop_size=32), random_init=True)
