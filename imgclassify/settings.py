"""Configuration from environment variables, read and validated once at start.

Every variable is declared once, in :data:`SETTINGS`: its name, kind, default, range and
meaning. The :class:`Settings` fields take their defaults from there, :meth:`Settings.from_env`
reads them by it, and the README's configuration table is checked against it by a test.
The batch job's variables are declared the same way in :data:`BATCH_SETTINGS`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .top_k import DEFAULT_TOP_K

# The engines of imgclassify.runtime.engines, the first the default (a unit test holds the two equal).
ENGINES = ("onnxruntime", "torch")


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot start with."""


@dataclass(frozen=True)
class Setting:
    """One environment variable: how it is read, its default (in the variable's own unit) and its meaning."""

    env: str
    kind: str                       # "str", "int", "float", "bool", "list" or "choice"
    default: Any
    meaning: str
    field: str | None = None        # the Settings field; None for a variable another library reads
    low: float | None = None
    high: float | None = None
    scale: int = 1                  # field value = variable value * scale (MB -> bytes)
    choices: tuple[str, ...] = ()
    shown_default: str | None = None  # the README's default column where the value is not literal
    check: Callable[[Any], None] | None = None  # a further rule, raising ConfigError

    @property
    def default_text(self) -> str:
        """The default as it is written in the environment (``30`` for 30.0, ``true``, ``a,b``)."""
        if self.kind == "list":
            return ",".join(self.default)
        if self.kind == "bool":
            return str(self.default).lower()
        return f"{self.default:g}" if self.kind == "float" else str(self.default)

    @property
    def readme_default(self) -> str:
        """The default as the README's configuration table shows it."""
        if self.shown_default is not None:
            return self.shown_default
        return f"`{self.default_text}`"

    def field_default(self) -> Any:
        """The default as the Settings field holds it (scaled to the field's unit)."""
        return self.default * self.scale if self.kind in ("int", "float") else self.default

    def read(self, env: Mapping[str, str]) -> Any:
        """This variable's value in ``env`` as the field holds it; the default when unset or empty."""
        raw = env.get(self.env, "").strip()
        value = self._parse(raw) if raw else self.default
        if self.check is not None:
            self.check(value)
        return value * self.scale if self.kind in ("int", "float") else value

    def _parse(self, raw: str) -> Any:
        if self.kind in ("int", "float"):
            try:
                value = int(raw) if self.kind == "int" else float(raw)
            except ValueError:
                what = "a whole number" if self.kind == "int" else "a number"
                raise ConfigError(f"{self.env} must be {what}, found {raw!r}") from None
            if not self.low <= value <= self.high:
                raise ConfigError(f"{self.env} must be between {self.low} and {self.high}, found {value}")
            return value
        if self.kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{self.env} must be true or false, found {raw.lower()!r}")
        if self.kind == "list":
            return tuple(item.strip() for item in raw.split(",") if item.strip()) or self.default
        if self.kind == "choice":
            if raw.lower() not in self.choices:
                raise ConfigError(f"{self.env} must be one of {', '.join(self.choices)}, found {raw.lower()!r}")
            return raw.lower()
        return raw


def _check_store(store: str) -> None:
    if store.startswith("gs://") and not store[5:].strip("/"):
        raise ConfigError(f"MODEL_STORE must name a bucket, found {store!r}")


def _check_schemes(schemes: tuple[str, ...]) -> None:
    schemes = tuple(scheme.lower() for scheme in schemes)
    if not set(schemes) <= {"http", "https"}:
        raise ConfigError(f"URL_FETCH_SCHEMES may hold http and https only, found {','.join(schemes)}")


def _check_networks(networks: tuple[str, ...]) -> None:
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"URL_ALLOWED_NETWORKS holds {network!r}, which is not a network") from None


MB = 2**20
SETTINGS: tuple[Setting, ...] = (
    Setting("MODEL_STORE", "str", ".local/models", "`gs://bucket[/prefix]` or a local directory holding `models/`",
            field="model_store", check=_check_store),
    Setting("DEFAULT_MODEL", "str", None, "model used when a request names none", field="default_model",
            shown_default="catalog's default"),
    Setting("CACHE_BUDGET_MB", "int", 2048, "bytes of loaded models kept warm per instance",
            field="cache_budget_bytes", low=1, high=1_000_000, scale=MB),
    Setting("CATALOG_TTL_SECONDS", "float", 30.0, "how long the catalog is trusted before re-reading; also "
            "`Cache-Control: max-age` of the list", field="catalog_ttl_seconds", low=0.0, high=86_400.0),
    Setting("PRELOAD_DEFAULT_MODEL", "bool", True, "load the default model at start-up (classify)",
            field="preload_default_model"),
    Setting("MODEL_SNAPSHOT_DIR", "str", "model_snapshot", "the bundle's copy of the default model (`make "
            "bundles` writes it), used instead of a download only when its name, version and sha256 match the "
            "catalog's; a relative path is taken from the directory holding `imgclassify/` (in a bundle, beside "
            "`main.py`); see docs/deploy.md", field="model_snapshot_dir"),
    Setting("MAX_REQUEST_MB", "int", 20, "largest request body", field="max_request_bytes", low=1, high=1024,
            scale=MB),
    Setting("MAX_IMAGE_PIXELS", "int", 50_000_000, "largest image, in pixels (decompression-bomb guard)",
            field="max_image_pixels", low=1, high=1_000_000_000),
    Setting("MAX_IMAGES_PER_REQUEST", "int", 32, "most images in one request", field="max_images_per_request",
            low=1, high=1024),
    Setting("MAX_REQUEST_PIXELS", "int", 100_000_000, "most pixels one request may decode, all its images "
            "together (413 `PIXEL_BUDGET_EXCEEDED` beyond)", field="max_request_pixels", low=1,
            high=10_000_000_000),
    Setting("MODEL_LOAD_WAIT_SECONDS", "float", 60.0, "longest wait for another request's load of the same "
            "model (503 `MODEL_LOADING` beyond)", field="model_load_wait_seconds", low=0.1, high=3600.0),
    Setting("ALLOWED_GCS_BUCKETS", "list", (), "comma-separated buckets `gcs_uri` inputs may come from",
            field="allowed_gcs_buckets", shown_default="none"),
    Setting("CORS_ALLOWED_ORIGINS", "list", ("*",), "comma-separated origins allowed to call the API from a "
            "browser", field="cors_allowed_origins"),
    Setting("STORAGE_TIMEOUT_SECONDS", "float", 30.0, "timeout of one storage request",
            field="storage_timeout_seconds", low=0.1, high=600.0),
    Setting("STORAGE_RETRY_SECONDS", "float", 10.0, "how long transient storage errors are retried before a 503",
            field="storage_retry_seconds", low=0.0, high=600.0),
    Setting("DOWNLOAD_SLICE_MB", "int", 8, "size of the parallel ranged reads of model files",
            field="download_slice_bytes", low=1, high=1024, scale=MB),
    Setting("DOWNLOAD_WORKERS", "int", 8, "parallel ranged reads per download", field="download_workers",
            low=1, high=64),
    Setting("ENGINE", "choice", ENGINES[0], "`onnxruntime`, or `torch` (needs torch installed; a model without "
            "the preferred engine's file falls back to the other engine where installed)", field="engine",
            choices=ENGINES),
    Setting("ENGINE_THREADS", "int", 0, "threads of a forward pass that runs alone on the instance (`0`: one "
            "per CPU); one that starts beside another runs on one thread (see docs/performance.md)",
            field="engine_threads", low=0, high=256),
    Setting("ENGINE_SPIN", "bool", True, "let a lone forward pass's threads spin between operators instead of "
            "sleeping (they stop when it returns); the batch job's never spin", field="engine_spin"),
    Setting("GOOGLE_CLOUD_PROJECT", "str", None, "project id used in log trace fields",
            field="google_cloud_project", shown_default="none"),
    Setting("URL_FETCH_ENABLED", "bool", True, "accept `{\"url\": ...}` inputs", field="url_fetch_enabled"),
    Setting("URL_FETCH_SCHEMES", "list", ("https",), "schemes URL inputs may use (`http`, `https`)",
            field="url_fetch_schemes", check=_check_schemes),
    Setting("URL_ALLOWED_NETWORKS", "list", (), "comma-separated CIDRs exempt from the public-address rule "
            "(e.g. an internal image server)", field="url_allowed_networks", shown_default="none",
            check=_check_networks),
    Setting("URL_FETCH_TIMEOUT_SECONDS", "float", 10.0, "time cap of one URL fetch, redirects included",
            field="url_fetch_timeout_seconds", low=0.1, high=120.0),
    Setting("STORAGE_EMULATOR_HOST", "str", None, "storage emulator URL (set by `make dev` and the tests)",
            shown_default="none"),
)

# The batch job's variables (imgclassify.batch.cli): each is also a flag, documented in docs/batch.md.
BATCH_SETTINGS: tuple[Setting, ...] = (
    Setting("BATCH_TOP_K", "int", DEFAULT_TOP_K, "labels per image, 1-100"),
    Setting("BATCH_SIZE", "int", 16, "images per forward pass"),
    Setting("BATCH_DOWNLOAD_CONCURRENCY", "int", 8, "threads that download, decode and preprocess ahead of the model"),
    Setting("BATCH_CHUNK_SIZE", "int", 64, "images per output object, the unit of resumption"),
    Setting("BATCH_LOG_SECONDS", "float", 30.0, "seconds between progress log lines when not on a terminal"),
    Setting("BATCH_FEATURES", "bool", False, "write each image's penultimate features instead of its labels "
            "(the input of `publish train --features`)"),
)

_BY_FIELD = {setting.field: setting for setting in SETTINGS if setting.field}


def declared(env_name: str, table: tuple[Setting, ...] = SETTINGS + BATCH_SETTINGS) -> Setting:
    """The declaration of ``env_name``."""
    return next(setting for setting in table if setting.env == env_name)


def _default(name: str) -> Any:
    value = _BY_FIELD[name].field_default()
    return field(default_factory=lambda: value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Settings:
    """Validated service configuration. Build it with :meth:`from_env`; defaults come from :data:`SETTINGS`."""

    model_store: str = _default("model_store")
    default_model: str | None = _default("default_model")
    cache_budget_bytes: int = _default("cache_budget_bytes")
    catalog_ttl_seconds: float = _default("catalog_ttl_seconds")
    preload_default_model: bool = _default("preload_default_model")
    model_snapshot_dir: str = _default("model_snapshot_dir")
    max_request_bytes: int = _default("max_request_bytes")
    max_image_pixels: int = _default("max_image_pixels")
    max_images_per_request: int = _default("max_images_per_request")
    max_request_pixels: int = _default("max_request_pixels")
    model_load_wait_seconds: float = _default("model_load_wait_seconds")
    allowed_gcs_buckets: tuple[str, ...] = _default("allowed_gcs_buckets")
    cors_allowed_origins: tuple[str, ...] = _default("cors_allowed_origins")
    storage_timeout_seconds: float = _default("storage_timeout_seconds")
    storage_retry_seconds: float = _default("storage_retry_seconds")
    download_slice_bytes: int = _default("download_slice_bytes")
    download_workers: int = _default("download_workers")
    engine: str = _default("engine")
    engine_threads: int = _default("engine_threads")
    engine_spin: bool = _default("engine_spin")
    google_cloud_project: str | None = _default("google_cloud_project")
    url_fetch_enabled: bool = _default("url_fetch_enabled")
    url_fetch_schemes: tuple[str, ...] = _default("url_fetch_schemes")
    url_allowed_networks: tuple[str, ...] = _default("url_allowed_networks")
    url_fetch_timeout_seconds: float = _default("url_fetch_timeout_seconds")

    def gcs_options(self) -> dict:
        """Keyword arguments for a GcsStore that follows these settings."""
        return {
            "timeout_seconds": self.storage_timeout_seconds,
            "retry_seconds": self.storage_retry_seconds,
            "slice_bytes": self.download_slice_bytes,
            "workers": self.download_workers,
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``env`` (default ``os.environ``); raise ConfigError if any is bad."""
        env = os.environ if env is None else env
        values = {setting.field: setting.read(env) for setting in SETTINGS if setting.field}
        values["url_fetch_schemes"] = tuple(scheme.lower() for scheme in values["url_fetch_schemes"])
        return cls(**values)
