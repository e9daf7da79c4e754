"""Progress of a task: a bar on a terminal, a JSON log line now and then elsewhere."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__package__)  # "imgclassify.batch" in every part, and under python -m


class Progress:
    """A tqdm bar on a terminal; elsewhere (Cloud Run) a JSON log line every ``every_seconds``."""

    def __init__(self, total: int, done: int, fields: dict, every_seconds: float, stream=None) -> None:
        from tqdm import tqdm

        stream = stream or sys.stderr
        self.interactive = stream.isatty()
        self.bar = tqdm(total=total, initial=done, unit="img", file=stream, disable=not self.interactive,
                        dynamic_ncols=True)
        self.total, self.done, self.fields, self.every_seconds = total, done, fields, every_seconds
        self.processed = self.errors = 0
        self.started = self.logged = time.monotonic()

    def update(self, images: int, errors: int) -> None:
        self.done += images
        self.processed += images
        self.errors += errors
        self.bar.update(images)
        if not self.interactive and time.monotonic() - self.logged >= self.every_seconds:
            self.log()

    def rate(self) -> float:
        return self.processed / max(time.monotonic() - self.started, 1e-9)

    def log(self) -> None:
        self.logged = time.monotonic()
        rate = self.rate()
        log.info("%d of %d images done", self.done, self.total, extra={"fields": {
            **self.fields, "event": "progress", "images_done": self.done, "images_total": self.total,
            "errors": self.errors, "images_per_second": round(rate, 2),
            "eta_seconds": round((self.total - self.done) / rate) if rate else None}})

    def close(self) -> None:
        self.bar.close()
