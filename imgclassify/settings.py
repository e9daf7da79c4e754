"""Configuration from environment variables, read and validated once at start.

Every variable is documented in the README's configuration table; keep the two in step.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

# The engines of imgclassify.runtime.engines, the first the default (a unit test holds the two equal).
ENGINES = ("onnxruntime", "torch")


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot start with."""


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float, kind: type = float):
    """``env[name]`` as ``kind`` (int or float) within ``low..high``, or ``default`` if unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, found {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, found {value}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return _number(env, name, default, low, high, int)


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    return _number(env, name, default, low, high, float)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, found {raw!r}")


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


@dataclass(frozen=True)
class Settings:
    """Validated service configuration. Build it with :meth:`from_env`."""

    model_store: str = ".local/models"
    default_model: str | None = None
    cache_budget_bytes: int = 2048 * 2**20
    catalog_ttl_seconds: float = 30.0
    preload_default_model: bool = True
    max_request_bytes: int = 20 * 2**20
    max_image_pixels: int = 50_000_000
    max_images_per_request: int = 32
    max_request_pixels: int = 100_000_000
    model_load_wait_seconds: float = 60.0
    allowed_gcs_buckets: tuple[str, ...] = field(default_factory=tuple)
    cors_allowed_origins: tuple[str, ...] = ("*",)
    storage_timeout_seconds: float = 30.0
    storage_retry_seconds: float = 10.0
    download_slice_bytes: int = 8 * 2**20
    download_workers: int = 8
    engine: str = "onnxruntime"
    engine_threads: int = 1            # 0: one per CPU the process may use
    google_cloud_project: str | None = None
    url_fetch_enabled: bool = True
    url_fetch_schemes: tuple[str, ...] = ("https",)
    url_allowed_networks: tuple[str, ...] = field(default_factory=tuple)
    url_fetch_timeout_seconds: float = 10.0

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
        store = env.get("MODEL_STORE", "").strip() or cls.model_store
        if store.startswith("gs://") and not store[5:].strip("/"):
            raise ConfigError(f"MODEL_STORE must name a bucket, found {store!r}")
        engine = env.get("ENGINE", "").strip().lower() or cls.engine
        if engine not in ENGINES:
            raise ConfigError(f"ENGINE must be one of {', '.join(ENGINES)}, found {engine!r}")
        schemes = tuple(scheme.lower() for scheme in _list(env, "URL_FETCH_SCHEMES")) or ("https",)
        if not set(schemes) <= {"http", "https"}:
            raise ConfigError(f"URL_FETCH_SCHEMES may hold http and https only, found {','.join(schemes)}")
        networks = _list(env, "URL_ALLOWED_NETWORKS")
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(f"URL_ALLOWED_NETWORKS holds {network!r}, which is not a network") from None
        return cls(
            model_store=store,
            default_model=env.get("DEFAULT_MODEL", "").strip() or None,
            cache_budget_bytes=_int(env, "CACHE_BUDGET_MB", 2048, 1, 1_000_000) * 2**20,
            catalog_ttl_seconds=_float(env, "CATALOG_TTL_SECONDS", 30.0, 0.0, 86_400.0),
            preload_default_model=_bool(env, "PRELOAD_DEFAULT_MODEL", True),
            max_request_bytes=_int(env, "MAX_REQUEST_MB", 20, 1, 1024) * 2**20,
            max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", 50_000_000, 1, 1_000_000_000),
            max_images_per_request=_int(env, "MAX_IMAGES_PER_REQUEST", 32, 1, 1024),
            max_request_pixels=_int(env, "MAX_REQUEST_PIXELS", 100_000_000, 1, 10_000_000_000),
            model_load_wait_seconds=_float(env, "MODEL_LOAD_WAIT_SECONDS", 60.0, 0.1, 3600.0),
            allowed_gcs_buckets=_list(env, "ALLOWED_GCS_BUCKETS"),
            cors_allowed_origins=_list(env, "CORS_ALLOWED_ORIGINS") or ("*",),
            storage_timeout_seconds=_float(env, "STORAGE_TIMEOUT_SECONDS", 30.0, 0.1, 600.0),
            storage_retry_seconds=_float(env, "STORAGE_RETRY_SECONDS", 10.0, 0.0, 600.0),
            download_slice_bytes=_int(env, "DOWNLOAD_SLICE_MB", 8, 1, 1024) * 2**20,
            download_workers=_int(env, "DOWNLOAD_WORKERS", 8, 1, 64),
            engine=engine,
            engine_threads=_int(env, "ENGINE_THREADS", 1, 0, 256),
            google_cloud_project=env.get("GOOGLE_CLOUD_PROJECT", "").strip() or None,
            url_fetch_enabled=_bool(env, "URL_FETCH_ENABLED", True),
            url_fetch_schemes=schemes,
            url_allowed_networks=networks,
            url_fetch_timeout_seconds=_float(env, "URL_FETCH_TIMEOUT_SECONDS", 10.0, 0.1, 120.0),
        )
