"""Where an input image's bytes come from: the request itself, an allowed bucket, or a URL.

The API reads all three; the batch job reads objects of its input prefix through
:func:`read_image_object`, under the same size limit.
"""

from __future__ import annotations

from .errors import ForbiddenSource, ObjectNotFound, PayloadTooLarge
from .request_parsing import ImageInput
from .settings import Settings
from .storage import GcsStore, ObjectStore, split_gs_uri
from .url_fetch import UrlFetcher, UrlPolicy


def read_image_object(store: ObjectStore, name: str, max_bytes: int) -> bytes:
    """An image object's bytes; 413 before downloading anything larger than ``max_bytes``."""
    info = store.info(name)
    if info is None:
        raise ObjectNotFound(f"{store.uri}/{name} does not exist")
    if info.size > max_bytes:
        raise PayloadTooLarge(f"{store.uri}/{name} has {info.size} bytes; the limit is {max_bytes}")
    data = store.read(name).data
    if len(data) > max_bytes:  # replaced by a larger object since
        raise PayloadTooLarge(f"{store.uri}/{name} has {len(data)} bytes; the limit is {max_bytes}")
    return data


class ImageSources:
    """Reads the bytes of a request's images, within the deployment's rules."""

    def __init__(self, settings: Settings, url_fetcher: UrlFetcher | None) -> None:
        self.settings = settings
        self.url_fetcher = url_fetcher

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageSources:
        fetcher = None
        if settings.url_fetch_enabled:
            fetcher = UrlFetcher(UrlPolicy.build(settings.url_fetch_schemes, settings.url_allowed_networks,
                                                 max_bytes=settings.max_request_bytes,
                                                 timeout_seconds=settings.url_fetch_timeout_seconds))
        return cls(settings, fetcher)

    def read(self, image: ImageInput) -> bytes:
        """The bytes of one input image: inline, from an allowed bucket, or from a URL if enabled."""
        if image.data is not None:
            return image.data
        if image.gcs_uri is not None:
            bucket, name = split_gs_uri(image.gcs_uri)
            if bucket not in self.settings.allowed_gcs_buckets:
                raise ForbiddenSource(f"bucket {bucket!r} is not one this service may read from")
            return read_image_object(GcsStore(bucket, **self.settings.gcs_options()), name,
                                     self.settings.max_request_bytes)
        if self.url_fetcher is None:
            raise ForbiddenSource("URL input is not enabled on this deployment; upload the image or use gcs_uri")
        return self.url_fetcher.fetch(image.url)
