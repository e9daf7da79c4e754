"""A cold start's first reads of the bucket, made by a forked process while the app's imports run.

Before it serves, a classify instance reads the catalog and its default model's manifest. Those
two reads need the official client (google-cloud-storage, with google-auth and requests), whose
import took 166-185 ms of CPU, nearly all of it holding the GIL: the start's threads could not
overlap it with the other imports, so it was the longest stretch of the start's serial work. Here
a process forked before the app's imports makes the two reads, client import included, on another
CPU, and sends back what the bucket answered. The parent's store then answers each of those reads
once from that (:meth:`GcsStore.seed <imgclassify.store.objects.GcsStore.seed>`): the same bytes
and generation, or the same error, that a read of its own would have met a moment earlier. The
worker creates its own client after the fork (:meth:`ObjectStore.connect`). Lite0 from a bundle's
snapshot, 9 starts of each in turns on 2 vCPUs: first answer 854 -> 730 ms (median).

Only where it can gain: a Cloud Storage store, at least two CPUs, a bundle's snapshot to serve
from (without one, the parent downloads the model and needs the client itself), and no other
thread running (a fork copies only the calling thread: a lock another one holds stays held).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import select
import signal
import threading
import time

from imgclassify.settings import Settings

from .catalog import MANIFEST_FILENAME
from .catalog_view import CatalogView
from .objects import Answers, GcsStore, ObjectStore, StoredObject, open_store
from .snapshot import snapshot_directory

log = logging.getLogger(__name__)


class _Recording:
    """The one method of a store a CatalogView's resolution and manifest reads use, recording each
    first answer."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.answers: Answers = {}

    def read(self, name: str) -> StoredObject:
        try:
            found = self.store.read(name)
        except Exception as error:
            self.answers.setdefault(name, error)
            raise
        self.answers.setdefault(name, found)
        return found


def default_model_reads(store: ObjectStore, default_model: str | None) -> Answers:
    """Read what resolving the default model and reading its manifest read, as a classify
    instance's preload does; return each read's answer. Failures are answers too."""
    recording = _Recording(store)
    view = CatalogView(recording, catalog_ttl_seconds=math.inf, default_model=default_model)  # type: ignore[arg-type]
    try:
        view.manifest(*view.resolve(None))
    except Exception:  # noqa: BLE001, S110 - recorded: the parent's own reads meet it again
        pass
    return recording.answers


class ReadAhead:
    """A forked process making :func:`default_model_reads` for the parent's store."""

    def __init__(self, pid: int, answers_fd: int, wait_seconds: float) -> None:
        self.pid, self.answers_fd, self.wait_seconds = pid, answers_fd, wait_seconds

    @classmethod
    def start(cls, settings: Settings) -> ReadAhead | None:
        """Fork the process for an instance over ``settings`` that preloads its default model; None
        where it cannot gain (see the module's docstring)."""
        store = open_store(settings.model_store, **settings.gcs_options())
        if (not settings.preload_default_model or not isinstance(store, GcsStore)
                or len(os.sched_getaffinity(0)) < 2 or threading.active_count() > 1
                or not (snapshot_directory(settings.model_snapshot_dir) / MANIFEST_FILENAME).is_file()):
            return None
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            status = 1
            try:
                os.close(read_end)
                with open(write_end, "wb") as out:
                    out.write(pickle.dumps(default_model_reads(store, settings.default_model)))
                status = 0
            finally:
                os._exit(status)  # no atexit handler, no flush of buffers copied from the parent
        os.close(write_end)
        return cls(pid, read_end, store.timeout + store.retry_seconds)

    def answers(self) -> Answers:
        """Wait for the process's answers (at most its store's timeout and retry time, then it is
        killed); empty if it failed."""
        deadline = time.monotonic() + self.wait_seconds
        chunks = []
        try:
            with open(self.answers_fd, "rb") as answers:
                while select.select([answers], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    chunk = answers.read1(1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
                else:
                    os.kill(self.pid, signal.SIGKILL)
                    log.warning("the start's read-ahead gave no answer in %.0f s", self.wait_seconds)
                    return {}
        finally:
            _, status = os.waitpid(self.pid, 0)
        try:
            if status != 0:
                raise ChildProcessError(f"it exited with wait status {status}")
            return pickle.loads(b"".join(chunks))  # noqa: S301 - our own child, over our own pipe
        except Exception as error:  # noqa: BLE001 - the reads are made again, here
            log.warning("the start's read-ahead failed (%s); reading the bucket here", error)
            return {}

    @staticmethod
    def forget(store: ObjectStore) -> None:
        """Drop the answers ``store`` was given and the start did not read: a manifest read at the start
        must not answer a read minutes later."""
        if isinstance(store, GcsStore):
            store.seed({})

    def hand_to(self, store: ObjectStore) -> float:
        """Give ``store`` the answers (:meth:`GcsStore.seed`); return the milliseconds waited."""
        started = time.perf_counter()
        answers = self.answers()
        if isinstance(store, GcsStore):
            store.seed(answers)
        return round((time.perf_counter() - started) * 1000, 1)
