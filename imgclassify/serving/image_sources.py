"""Where an input image's bytes come from: the request itself, an allowed bucket, or a URL.

The API reads all three; objects are read by :meth:`imgclassify.store.objects.ObjectStore.read_limited`,
which the batch job uses for its input prefix under the same size limit.
"""

from __future__ import annotations

from imgclassify.errors import ForbiddenSource
from imgclassify.settings import Settings
from imgclassify.store.objects import GcsStore, split_gs_uri

from .inputs import ImageInput
from .url_fetch import UrlFetcher, UrlPolicy


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
            return GcsStore(bucket, **self.settings.gcs_options()).read_limited(name, self.settings.max_request_bytes)
        if self.url_fetcher is None:
            raise ForbiddenSource("URL input is not enabled on this deployment; upload the image or use gcs_uri")
        return self.url_fetcher.fetch(image.url)
