"""Object storage: Cloud Storage buckets and plain local directories behind one interface.

``gs://bucket[/prefix]`` goes through the official ``google-cloud-storage`` client (which
honours ``STORAGE_EMULATOR_HOST``); any other location is a local directory, handy for
quick experiments. Both offer generation preconditions, so publishers can compare-and-swap
the catalog, and both turn transport failures into :class:`StorageUnavailable`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import io
import os
import re
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from imgclassify.errors import (
    ForbiddenSource,
    InvalidGcsUri,
    ObjectNotFound,
    PayloadTooLarge,
    StorageUnavailable,
)

# Cloud Storage bucket names: 3-222 characters of a-z, 0-9, "-", "_" and ".", starting and
# ending with a letter or digit (dotted names may be longer than 63; the service checks no more).
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{1,220}[a-z0-9]")
_MAX_OBJECT_NAME_BYTES = 1024



class GenerationMismatch(Exception):
    """A write's generation precondition failed: somebody else wrote the object first.

    Not an API error: the publisher and the batch job each decide what it means.
    """

    status = 412  # Precondition Failed, as storage itself says
    code = "GENERATION_MISMATCH"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    generation: int


# What a bucket answered to reads, by object name: the object, or the error the read raised.
Answers = dict[str, StoredObject | Exception]


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    generation: int


def split_gs_uri(uri: str) -> tuple[str, str]:
    """Split ``gs://bucket[/name]`` into ``(bucket, name)``; raise InvalidGcsUri (400) if it is not one."""
    if not isinstance(uri, str) or not uri.startswith("gs://"):
        raise InvalidGcsUri(f"expected gs://BUCKET/OBJECT, found {str(uri)[:80]!r}")
    bucket, _, name = uri[5:].partition("/")
    if not BUCKET_NAME.fullmatch(bucket):
        raise InvalidGcsUri(f"a gs:// URI needs a bucket name (3-222 of a-z, 0-9, '-', '_', '.'), "
                            f"found {bucket[:80]!r}")
    return bucket, name


def split_object_uri(uri: str) -> tuple[str, str]:
    """Split ``gs://bucket/object``, which must name an object Cloud Storage could hold."""
    bucket, name = split_gs_uri(uri)
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape
        raise InvalidGcsUri("the object name is not valid Unicode") from None
    if not name or size > _MAX_OBJECT_NAME_BYTES or name in (".", "..") or any(c in name for c in "\r\n\0"):
        raise InvalidGcsUri(f"gs://{bucket}/ needs an object name of 1-{_MAX_OBJECT_NAME_BYTES} bytes "
                            f"without line breaks or NUL, found {name[:80]!r}")
    return bucket, name


class ObjectStore(ABC):
    """A flat namespace of immutable-or-versioned objects, addressed by ``/``-separated names."""

    uri: str

    @abstractmethod
    def read(self, name: str) -> StoredObject:
        """Return the object's bytes and generation; raise ObjectNotFound if missing."""

    @abstractmethod
    def info(self, name: str) -> ObjectInfo | None:
        """Return size and generation, or None if the object does not exist."""

    @abstractmethod
    def write(self, name: str, data: bytes, *, if_generation_match: int | None = None,
              progress: Callable[[int], object] | None = None) -> int:
        """Write ``data``; ``if_generation_match=0`` means "only if absent". Returns the new generation.

        ``progress(n)`` is called as bytes are sent.
        """

    @abstractmethod
    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        """Delete the object; a missing object is not an error."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Names under ``prefix``, sorted."""

    def is_empty(self, prefix: str = "") -> bool:
        """Whether nothing is stored under ``prefix`` (without listing everything where the backend can)."""
        return not self.list(prefix)

    def download(self, name: str) -> bytes:
        """Read a possibly large object, in parallel where the backend can."""
        return self.read(name).data

    def connect(self) -> None:  # noqa: B027 - most stores have nothing to do
        """Get ready for the first read, so that no request waits for it (a GcsStore imports its
        client library and creates its client)."""

    def read_limited(self, name: str, max_bytes: int) -> bytes:
        """The object's bytes; ObjectNotFound if missing, PayloadTooLarge (413) beyond ``max_bytes``,
        refused here before its bytes are read (a store may read up to ``max_bytes`` + 1 first)."""
        info = self.info(name)
        if info is None:
            raise ObjectNotFound(f"{self.uri}/{name} does not exist")
        if info.size > max_bytes:
            raise PayloadTooLarge(f"{self.uri}/{name} has {info.size} bytes; the limit is {max_bytes}")
        data = self.read(name).data
        if len(data) > max_bytes:  # replaced by a larger object since
            raise PayloadTooLarge(f"{self.uri}/{name} has {len(data)} bytes; the limit is {max_bytes}")
        return data


class LocalStore(ObjectStore):
    """Objects as files below a directory. Generations are file modification times in ns."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        self.uri = str(self.root)
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"invalid object name {name!r}")
        return self.root.joinpath(*parts)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        # A process-wide file lock makes check-then-write atomic across publishers.
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read(self, name: str) -> StoredObject:
        path = self._path(name)
        try:
            with open(path, "rb") as handle:
                generation = os.fstat(handle.fileno()).st_mtime_ns
                return StoredObject(handle.read(), generation)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"{self.uri}/{name} does not exist") from None

    def info(self, name: str) -> ObjectInfo | None:
        try:
            stat = self._path(name).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not S_ISREG(stat.st_mode):
            return None  # a directory is a name prefix, not an object (as in Cloud Storage)
        return ObjectInfo(stat.st_size, stat.st_mtime_ns)

    def _check(self, name: str, if_generation_match: int | None) -> None:
        if if_generation_match is None:
            return
        current = self.info(name)
        found = current.generation if current else 0
        if found != if_generation_match:
            raise GenerationMismatch(
                f"{self.uri}/{name}: expected generation {if_generation_match}, found {found}"
            )

    def write(self, name: str, data: bytes, *, if_generation_match: int | None = None,
              progress: Callable[[int], object] | None = None) -> int:
        path = self._path(name)
        with self._exclusive():
            self._check(name, if_generation_match)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
                if progress:
                    progress(len(data))
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            return path.stat().st_mtime_ns

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        with self._exclusive():
            self._check(name, if_generation_match)
            with contextlib.suppress(FileNotFoundError):
                self._path(name).unlink()

    def list(self, prefix: str) -> list[str]:
        if not self.root.exists():
            return []
        names = (
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.is_file() and not path.name.startswith(".")
        )
        return sorted(name for name in names if name.startswith(prefix))


class _CountingReader(io.BytesIO):
    """A file over ``data`` that reports each read to ``progress`` (for upload progress bars)."""

    def __init__(self, data: bytes, progress: Callable[[int], object] | None) -> None:
        super().__init__(data)
        self._progress = progress

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        if self._progress and chunk:
            self._progress(len(chunk))
        return chunk


@functools.lru_cache(maxsize=1)
def _storage_client():
    # Imported here: only gs:// stores pay for the client library.
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    try:
        return storage.Client()
    except DefaultCredentialsError:
        raise StorageUnavailable(
            "no Google Cloud credentials: run `gcloud auth application-default login`, or set "
            "STORAGE_EMULATOR_HOST to use a storage emulator (make dev prints the lines for its own)") from None


def _reset_client_after_fork() -> None:
    # Connections pooled by the parent must not be shared with a forked worker.
    _storage_client.cache_clear()


os.register_at_fork(after_in_child=_reset_client_after_fork)


@contextlib.contextmanager
def _translated_errors(uri: str, missing: str | None = None) -> Iterator[None]:
    """Turn the client library's exceptions into the service's own; ``missing`` says what a 404
    means where it cannot be the object (a write or a listing: the bucket)."""
    from google.api_core import exceptions as gexc
    from requests import exceptions as rexc

    try:
        yield
    except gexc.NotFound:
        raise ObjectNotFound(missing or f"{uri} does not exist") from None
    except gexc.PreconditionFailed:
        raise GenerationMismatch(f"{uri} was changed by somebody else") from None
    except gexc.Forbidden:
        raise ForbiddenSource(f"the service may not read {uri}") from None
    except (gexc.RetryError, gexc.ServerError, gexc.TooManyRequests, rexc.RequestException,
            ConnectionError, TimeoutError) as error:
        raise StorageUnavailable(f"Cloud Storage did not answer for {uri}: {type(error).__name__}") from None


class GcsStore(ObjectStore):
    """Objects in a Cloud Storage bucket, below an optional prefix."""

    def __init__(self, bucket: str, prefix: str = "", *, timeout_seconds: float = 30.0,
                 retry_seconds: float = 10.0, slice_bytes: int = 8 * 2**20, workers: int = 8) -> None:
        self.bucket_name = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.uri = f"gs://{bucket}/{self.prefix}".rstrip("/")
        self.timeout = timeout_seconds
        self.retry_seconds = retry_seconds
        self.slice_bytes = slice_bytes
        self.workers = workers
        self._seeded: Answers = {}

    def seed(self, answers: Answers) -> None:
        """Answer the next read of each name in ``answers`` with its object, or raise its error: what
        the bucket answered a moment ago to a process forked at the start (:mod:`.read_ahead`), which
        imported the client library so that this one did not have to yet. Replaces the answers not
        read yet: ``seed({})`` forgets them."""
        self._seeded = dict(answers)

    def connect(self) -> None:
        _storage_client()
        self.retry  # noqa: B018 - the retry's module, imported now rather than by the first read

    @functools.cached_property
    def retry(self):
        """The client's default retry, for at most ``retry_seconds``: transient errors (connection
        resets, 429, 5xx) are retried with exponential backoff, then reported as 503 so the caller
        can come back later. Built on first use, not with the store, so that the client library
        is imported by the first request to storage: at a cold start that runs beside the
        runtime's import and the snapshot's read (imgclassify.serving.classify_app)."""
        from google.cloud.storage.retry import DEFAULT_RETRY

        return DEFAULT_RETRY.with_timeout(self.retry_seconds)

    def _blob(self, name: str, generation: int | None = None):
        bucket = _storage_client().bucket(self.bucket_name)
        return bucket.blob(self.prefix + name, generation=generation)

    def _uri(self, name: str) -> str:
        return f"gs://{self.bucket_name}/{self.prefix}{name}"

    def _missing_bucket(self) -> str:
        return f"the bucket gs://{self.bucket_name} does not exist"

    def read(self, name: str) -> StoredObject:
        if (seeded := self._seeded.pop(name, None)) is not None:
            if isinstance(seeded, Exception):
                raise seeded
            return seeded
        blob = self._blob(name)
        with _translated_errors(self._uri(name)):
            data = blob.download_as_bytes(retry=self.retry, timeout=self.timeout)
        return StoredObject(data, int(blob.generation or 0))

    def info(self, name: str) -> ObjectInfo | None:
        bucket = _storage_client().bucket(self.bucket_name)
        with _translated_errors(self._uri(name)):
            blob = bucket.get_blob(self.prefix + name, retry=self.retry, timeout=self.timeout)
        if blob is None:
            return None
        return ObjectInfo(int(blob.size), int(blob.generation))

    def read_limited(self, name: str, max_bytes: int) -> bytes:
        """One ranged request for at most ``max_bytes`` + 1 bytes, as stored (an object stored
        gzip-encoded comes as its gzip bytes, never inflated beyond the limit), instead of a
        metadata request and a download: the batch job read each image with two requests, the
        second costing it about 1.4 ms of CPU and a round trip. An object over the limit costs at
        most ``max_bytes`` + 1 bytes of transfer before the 413."""
        from google.api_core.exceptions import RequestRangeNotSatisfiable

        blob = self._blob(name)
        try:
            with _translated_errors(self._uri(name)):
                data = blob.download_as_bytes(start=0, end=max_bytes, raw_download=True, retry=self.retry,
                                              timeout=self.timeout)
        except RequestRangeNotSatisfiable:  # an empty object has no byte 0 for the range to start at
            return b""
        if len(data) > max_bytes:
            raise PayloadTooLarge(f"{self._uri(name)} has more than {max_bytes} bytes; the limit is {max_bytes}")
        return data

    def download(self, name: str) -> bytes:
        """Download in parallel ranged slices, all pinned to one generation, into one buffer."""
        info = self.info(name)
        if info is None:
            raise ObjectNotFound(f"{self._uri(name)} does not exist")
        if info.size <= self.slice_bytes:
            blob = self._blob(name, info.generation)
            with _translated_errors(self._uri(name)):
                return blob.download_as_bytes(retry=self.retry, timeout=self.timeout)
        buffer = bytearray(info.size)
        view = memoryview(buffer)

        def fetch(start: int) -> None:
            end = min(start + self.slice_bytes, info.size) - 1
            blob = self._blob(name, info.generation)
            with _translated_errors(self._uri(name)):
                chunk = blob.download_as_bytes(
                    start=start, end=end, checksum=None, retry=self.retry, timeout=self.timeout
                )
            if len(chunk) != end - start + 1:
                raise StorageUnavailable(f"short read of {self._uri(name)} at byte {start}")
            view[start:end + 1] = chunk

        starts = range(0, info.size, self.slice_bytes)
        with ThreadPoolExecutor(max_workers=min(self.workers, len(starts))) as pool:
            for future in [pool.submit(fetch, start) for start in starts]:
                future.result()
        return bytes(buffer)

    def write(self, name: str, data: bytes, *, if_generation_match: int | None = None,
              progress: Callable[[int], object] | None = None) -> int:
        blob = self._blob(name)
        content_type = "application/json" if name.endswith(".json") else "application/octet-stream"
        with _translated_errors(self._uri(name), self._missing_bucket()):
            blob.upload_from_file(
                _CountingReader(data, progress),
                size=len(data),
                content_type=content_type,
                if_generation_match=if_generation_match,
                retry=self.retry,
                timeout=self.timeout,
            )
        return int(blob.generation)

    def delete(self, name: str, *, if_generation_match: int | None = None) -> None:
        with contextlib.suppress(ObjectNotFound), _translated_errors(self._uri(name)):
            self._blob(name).delete(
                if_generation_match=if_generation_match, retry=self.retry, timeout=self.timeout
            )

    def list(self, prefix: str) -> list[str]:
        with _translated_errors(self._uri(prefix), self._missing_bucket()):
            blobs = _storage_client().list_blobs(
                self.bucket_name, prefix=self.prefix + prefix, retry=self.retry, timeout=self.timeout
            )
            names = [blob.name[len(self.prefix):] for blob in blobs]
        return sorted(names)

    def is_empty(self, prefix: str = "") -> bool:
        with _translated_errors(self._uri(prefix), self._missing_bucket()):
            blobs = _storage_client().list_blobs(self.bucket_name, prefix=self.prefix + prefix, max_results=1,
                                                 retry=self.retry, timeout=self.timeout)
            return next(iter(blobs), None) is None


def open_store(location: str, **gcs_options) -> ObjectStore:
    """Open ``gs://bucket[/prefix]`` as a GcsStore, anything else as a LocalStore directory."""
    if location.startswith("gs://"):
        bucket, prefix = split_gs_uri(location)
        return GcsStore(bucket, prefix, **gcs_options)
    return LocalStore(location)
