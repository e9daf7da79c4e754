import dataclasses
import os
from pathlib import Path

import pytest

from imgclassify.runtime.engines import EngineOptions
from imgclassify.settings import BATCH_SETTINGS, SETTINGS, ConfigError, Settings

REPO = Path(__file__).resolve().parents[2]


def test_defaults_apply_when_the_environment_is_empty():
    settings = Settings.from_env({})

    assert settings.model_store == ".local/models"
    assert settings.cache_budget_bytes == 2048 * 2**20
    assert settings.cors_allowed_origins == ("*",)
    assert settings.allowed_gcs_buckets == ()
    assert settings.preload_default_model is True
    assert EngineOptions.from_settings(settings) == EngineOptions("onnxruntime", 0, True)  # a lone forward: every CPU


def test_every_variable_is_read_and_converted():
    settings = Settings.from_env({
        "MODEL_STORE": "gs://weights/prefix", "DEFAULT_MODEL": "efficientnet_lite1", "CACHE_BUDGET_MB": "512",
        "CATALOG_TTL_SECONDS": "2.5", "PRELOAD_DEFAULT_MODEL": "false", "MAX_REQUEST_MB": "5",
        "MAX_IMAGE_PIXELS": "1000", "MAX_IMAGES_PER_REQUEST": "4", "ALLOWED_GCS_BUCKETS": "a, b,,",
        "CORS_ALLOWED_ORIGINS": "https://x.example", "ENGINE": "Torch", "ENGINE_THREADS": "2",
        "DOWNLOAD_SLICE_MB": "16",
    })

    assert settings.model_store == "gs://weights/prefix"
    assert settings.default_model == "efficientnet_lite1"
    assert settings.cache_budget_bytes == 512 * 2**20
    assert settings.catalog_ttl_seconds == 2.5
    assert settings.preload_default_model is False
    assert settings.max_request_bytes == 5 * 2**20
    assert settings.max_image_pixels == 1000
    assert settings.max_images_per_request == 4
    assert settings.allowed_gcs_buckets == ("a", "b")
    assert settings.cors_allowed_origins == ("https://x.example",)
    assert EngineOptions.from_settings(settings) == EngineOptions("torch", 2)
    assert settings.download_slice_bytes == 16 * 2**20


@pytest.mark.parametrize("name, value", [
    ("CACHE_BUDGET_MB", "lots"), ("CACHE_BUDGET_MB", "0"), ("MAX_IMAGES_PER_REQUEST", "-1"),
    ("CATALOG_TTL_SECONDS", "soon"), ("PRELOAD_DEFAULT_MODEL", "maybe"), ("MODEL_STORE", "gs://"),
    ("ENGINE", "tensorflow"), ("ENGINE_THREADS", "-1"), ("ENGINE_THREADS", "two"),
])
def test_bad_values_stop_the_start_with_a_message_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name.split("_")[0]):
        Settings.from_env({name: value})


def test_zero_engine_threads_means_one_per_cpu_this_process_may_use():
    per_cpu = EngineOptions.from_settings(Settings.from_env({"ENGINE_THREADS": "0"}))
    assert per_cpu.intra_op_threads() == len(os.sched_getaffinity(0))
    assert EngineOptions.from_settings(Settings.from_env({})).intra_op_threads() == len(os.sched_getaffinity(0))
    assert EngineOptions.from_settings(Settings.from_env({"ENGINE_THREADS": "3"})).intra_op_threads() == 3


def test_the_engine_setting_offers_exactly_the_engines_the_runtime_has():
    from imgclassify import settings
    from imgclassify.runtime import engines

    assert settings.ENGINES == engines.ENGINES
    assert Settings().engine == engines.DEFAULT_ENGINE == engines.ENGINES[0]


def readme_table(path: Path, heading: str, columns: int) -> list[list[str]]:
    """The rows of the first table after ``heading`` in a Markdown file, as lists of cells."""
    text = path.read_text().split(heading, 1)[1]
    rows = []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) == columns and not set(cells[0]) <= {"-"}:
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # after the header


def test_the_readme_configuration_table_is_the_declared_settings_in_order():
    rows = readme_table(REPO / "README.md", "## Configuration", 3)

    assert rows == [[f"`{setting.env}`", setting.readme_default, setting.meaning] for setting in SETTINGS]


def test_every_settings_field_is_declared_once_and_takes_its_default_from_the_declaration():
    declared_fields = [setting.field for setting in SETTINGS if setting.field]
    assert len(declared_fields) == len(set(declared_fields))
    assert declared_fields == [item.name for item in dataclasses.fields(Settings)]
    defaults = Settings()
    for setting in SETTINGS:
        if setting.field:
            assert getattr(defaults, setting.field) == setting.field_default() == \
                getattr(Settings.from_env({}), setting.field), setting.env


def test_the_batch_docs_give_the_declared_defaults_and_the_cli_uses_them():
    from imgclassify.batch.cli import parse_args

    rows = {row[1].strip("`"): row[2] for row in readme_table(REPO / "docs" / "batch.md", "| flag |", 4)}
    options = parse_args(["in", "out"], {})
    for setting in BATCH_SETTINGS:
        assert rows[setting.env] == setting.default_text, setting.env
    assert (options.top_k, options.batch_size, options.download_concurrency, options.chunk_size,
            options.log_every_seconds, options.features) == tuple(setting.default for setting in BATCH_SETTINGS)


def test_the_engines_defaults_are_the_settings_defaults():
    from imgclassify.runtime.engines import EngineOptions

    assert EngineOptions() == EngineOptions.from_settings(Settings())
