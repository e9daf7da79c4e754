"""Locust users for ``make load``: mixed models, photo sizes and formats, plus listing.

The images come from files named in LOAD_IMAGES_DIR (written by bench/load.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from locust import HttpUser, between, task

IMAGES = Path(os.environ["LOAD_IMAGES_DIR"])
SMALL = (IMAGES / "small.jpg").read_bytes()
LARGE = (IMAGES / "large.jpg").read_bytes()
ALPHA = (IMAGES / "alpha.png").read_bytes()


class PhotoUser(HttpUser):
    wait_time = between(0.05, 0.3)

    def _classify(self, model: str, body: bytes, content_type: str, name: str) -> None:
        with self.client.post(f"/v1/models/{model}:classify?top_k=3", data=body, name=name,
                              headers={"Content-Type": content_type}, catch_response=True) as response:
            if response.status_code != 200 or not response.json()["results"][0]["predictions"]:
                response.failure(f"status {response.status_code}: {response.text[:200]}")

    @task(6)
    def small_photo_lite0(self) -> None:
        self._classify("efficientnet_lite0", SMALL, "image/jpeg", "classify small jpeg lite0")

    @task(2)
    def large_photo_lite1(self) -> None:
        self._classify("efficientnet_lite1", LARGE, "image/jpeg", "classify 12MP jpeg lite1")

    @task(2)
    def alpha_png_lite2(self) -> None:
        self._classify("efficientnet_lite2", ALPHA, "image/png", "classify alpha png lite2")

    @task(1)
    def list_models(self) -> None:
        self.client.get("/v1/models", name="list models")
