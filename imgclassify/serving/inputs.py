"""What a classify request asks for, free of any web framework: the model, top-k and the images.

:mod:`.request_parsing` makes these from HTTP bodies; :mod:`.service` and
:mod:`.image_sources` take them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageInput:
    """One image of a request: its bytes, or where to get them."""

    data: bytes | None = None
    gcs_uri: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class ClassifyRequest:
    model: str | None
    top_k: int
    images: tuple[ImageInput, ...]
