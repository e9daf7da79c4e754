"""Structured JSON logs that Cloud Logging parses (severity, httpRequest, trace)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={"fields": {...}}`` adds top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of each record, not at creation."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(level: str = "INFO") -> None:
    """Send the package's logs to stdout as JSON lines (idempotent)."""
    logger = logging.getLogger("imgclassify")
    if any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        return
    handler = _StdoutHandler()
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def trace_fields(headers: Mapping[str, str], project: str | None) -> dict[str, str]:
    """Cloud Logging trace keys from ``X-Cloud-Trace-Context`` or W3C ``traceparent``."""
    trace_id = span_id = None
    cloud = headers.get("X-Cloud-Trace-Context", "")
    parent = headers.get("traceparent", "")
    if cloud:
        trace_id, _, rest = cloud.partition("/")
        span_id = rest.split(";")[0] or None
    elif parent.count("-") == 3:
        _, trace_id, span_id, _ = parent.split("-")
    if not trace_id or not trace_id.isalnum():
        return {}
    fields = {"logging.googleapis.com/trace": f"projects/{project}/traces/{trace_id}" if project else trace_id}
    if span_id and span_id.isalnum():
        fields["logging.googleapis.com/spanId"] = span_id
    return fields
