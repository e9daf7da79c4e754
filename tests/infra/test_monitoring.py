"""Infrastructure, offline: Monitoring: metrics from the lines the functions really log."""

from __future__ import annotations

import json
import re

import pytest
import requests

from devstack.processes import REPO
from tests.support.infra import (
    TERRAFORM_DIR,
    cloud_logging_entry,
    evaluate_locals,
    extract,
    find_key,
    log_filter_matches,
    render_template,
    resources,
)

BUILT_IN_METRICS = {"run.googleapis.com/request_count", "run.googleapis.com/container/instance_count",
                    "run.googleapis.com/container/memory/utilizations"}


@pytest.fixture(scope="module")
def log_metrics(tmp_path_factory) -> dict:
    """log_metrics.tf's metrics, as Terraform evaluates them (name_prefix: imgclassify)."""
    return evaluate_locals(tmp_path_factory.mktemp("metrics"), "local.log_metrics", {}, sources=("log_metrics.tf",))


@pytest.fixture(scope="module")
def logged_entries(stack) -> list[dict]:
    """The functions' stdout lines after real requests, as Cloud Logging stores them."""
    cat = (REPO / "scripts" / "data" / "chelsea.jpg").read_bytes()
    jpeg = {"Content-Type": "image/jpeg"}
    assert requests.post(stack.url + "/v1/models/efficientnet_lite1:classify", data=cat, headers=jpeg,
                         timeout=120).status_code == 200
    assert requests.get(stack.url + "/v1/models/no-such-model", timeout=60).status_code == 404
    assert requests.post(stack.url + "/v1/classify", data=cat[:600], headers=jpeg, timeout=60).status_code == 422
    assert requests.options(stack.url + "/v1/classify", timeout=60, headers={
        "Origin": "http://allowed.example", "Access-Control-Request-Method": "POST"}).status_code == 204
    entries = []
    for function in ("classify", "list_models"):
        for line in (stack.log_dir / f"{function}.log").read_text().splitlines():
            if line.startswith("{"):
                entries.append(cloud_logging_entry(json.loads(line), f"imgclassify-{function.replace('_', '-')}"))
    return entries


def test_request_metrics_count_every_request_line_and_nothing_else(log_metrics, logged_entries):
    import imgclassify.serving.http

    logger = imgclassify.serving.http.log.name
    request_lines = [entry for entry in logged_entries if entry["jsonPayload"].get("logger") == logger]
    assert len(request_lines) >= 4
    assert [entry for entry in logged_entries if log_filter_matches(log_metrics["requests"]["filter"], entry)] == (
        request_lines)
    timed = [entry for entry in request_lines if entry["httpRequest"]["requestMethod"] != "OPTIONS"]
    latency_filter = log_metrics["request_latency"]["filter"]
    assert [entry for entry in logged_entries if log_filter_matches(latency_filter, entry)] == timed
    for entry in timed:
        assert float(extract(log_metrics["request_latency"]["value"], entry)) == entry["jsonPayload"]["latency_ms"]


def test_request_metric_labels_come_from_fields_the_request_line_has(log_metrics, logged_entries):
    labels = {name: label["extractor"] for name, label in log_metrics["requests"]["labels"].items()}
    seen = []
    for entry in logged_entries:
        if not log_filter_matches(log_metrics["requests"]["filter"], entry):
            continue
        got = {name: extract(extractor, entry) for name, extractor in labels.items()}
        status = entry["httpRequest"]["status"]
        assert got["status"] == str(status) and got["status_class"] == str(status)[0]
        assert got["error_code"] == entry["jsonPayload"].get("error")
        assert got["model"] == entry["jsonPayload"].get("model")
        seen.append(got)
    assert {"status": "200", "status_class": "2", "error_code": None, "model": "efficientnet_lite1"} in seen
    assert {"status": "404", "status_class": "4", "error_code": "UNKNOWN_MODEL", "model": None} in seen
    assert {"status": "422", "status_class": "4", "error_code": "UNDECODABLE_IMAGE", "model": None} in seen
    latency_labels = log_metrics["request_latency"]["labels"]
    assert latency_labels["status_class"]["extractor"] == log_metrics["requests"]["labels"]["status_class"]["extractor"]


def test_cold_start_metric_counts_each_instance_start_with_its_time(log_metrics, logged_entries):
    import imgclassify.serving.bootstrap

    starts = [entry for entry in logged_entries if log_filter_matches(log_metrics["cold_starts"]["filter"], entry)]
    ready = [entry for entry in logged_entries if "startup_ms" in entry["jsonPayload"]]
    assert {entry["resource"]["labels"]["service_name"] for entry in starts} == {
        "imgclassify-classify", "imgclassify-list-models"}, ready
    for entry in starts:
        assert entry["jsonPayload"]["logger"] == imgclassify.serving.bootstrap.log.name
        assert float(extract(log_metrics["cold_starts"]["value"], entry)) == entry["jsonPayload"]["startup_ms"][
            "process_age"] > 0


def test_model_load_metric_counts_each_load_with_its_model_and_time(log_metrics, logged_entries):
    import imgclassify.runtime.cache

    loads = [entry for entry in logged_entries if log_filter_matches(log_metrics["model_loads"]["filter"], entry)]
    cache_logger = imgclassify.runtime.cache.log.name
    cache_lines = [entry for entry in logged_entries if entry["jsonPayload"].get("logger") == cache_logger
                   and entry["jsonPayload"]["message"].startswith("loaded ")]
    assert loads == cache_lines and loads
    models = {extract(log_metrics["model_loads"]["labels"]["model"]["extractor"], entry) for entry in loads}
    assert models <= {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} and models
    for entry in loads:
        milliseconds = float(extract(log_metrics["model_loads"]["value"], entry))
        assert f" in {milliseconds:.0f} ms" in entry["jsonPayload"]["message"] and milliseconds > 0


def test_log_metrics_are_declared_as_the_monitoring_resource_makes_them(log_metrics):
    assert set(log_metrics) == {"requests", "request_latency", "cold_starts", "model_loads"}
    for key, metric in log_metrics.items():
        assert metric["name"].startswith("imgclassify/"), key
        assert (metric["value"] is None) == (metric["value_type"] == "INT64") == (metric["buckets"] is None), key
        assert len(metric["labels"]) <= 10, "Cloud Logging allows 10 labels per metric"
    resource = resources("google_logging_metric")["function"]
    assert resource["for_each"] == "${local.log_metrics}"


def test_dashboard_and_alerts_use_only_metrics_and_labels_that_exist(log_metrics, tmp_path):
    types = {f"logging.googleapis.com/user/{metric['name']}": set(metric["labels"]) for metric in log_metrics.values()}
    dashboard = json.loads(render_template(tmp_path, TERRAFORM_DIR / "dashboard.json.tftpl", {
        "title": "imgclassify image classification",
        "metrics": {key: f"logging.googleapis.com/user/{metric['name']}" for key, metric in log_metrics.items()},
        "run_service_filter": 'resource.type="cloud_run_revision"',
    }))
    assert dashboard["mosaicLayout"]["tiles"]
    queries = list(find_key(dashboard, "timeSeriesFilter")) + [
        side for ratio in find_key(dashboard, "timeSeriesFilterRatio") for side in ratio.values()]
    charted = set()
    for query in queries:
        (metric_type,) = re.findall(r'metric\.type="([^"]+)"', query["filter"])
        charted.add(metric_type)
        check_metric_labels(metric_type, query["filter"], query.get("aggregation", {}).get("groupByFields", []), types)
    assert set(types) <= charted, "every log-based metric is on the dashboard"

    policies = resources("google_monitoring_alert_policy")
    assert set(policies) == {"errors", "latency"}
    conditions = {name: alert_conditions(policy) for name, policy in policies.items()}
    for name, policy in policies.items():
        assert policy["notification_channels"] == "${var.alert_notification_channels}"
        assert policy["depends_on"] == ["${time_sleep.log_metrics_settle}"], "new metrics need time to appear"
        for threshold in conditions[name].values():
            for filter_key, aggregation_key in (("filter", "aggregations"),
                                                ("denominator_filter", "denominator_aggregations")):
                if filter_key not in threshold:
                    continue
                text = re.sub(r"\$\{local\.log_metric_types\.(\w+)\}",
                              lambda found: f"logging.googleapis.com/user/{log_metrics[found.group(1)]['name']}",
                              threshold[filter_key])
                (metric_type,) = re.findall(r'metric\.type="([^"]+)"', text)
                check_metric_labels(metric_type, text, threshold[aggregation_key][0]["group_by_fields"], types)
    (logged, run) = conditions["errors"].values()
    assert logged["filter"] == logged["denominator_filter"] + ' AND metric.label.status_class="5"'
    assert run["filter"] == run["denominator_filter"] + ' AND metric.label.response_code_class="5xx"'
    for ratio in (logged, run):
        assert ratio["threshold_value"] == "${var.alert_5xx_ratio}"
        assert ratio["aggregations"] == ratio["denominator_aggregations"], "a ratio needs the same grouping"
    (latency,) = conditions["latency"].values()
    assert "request_latency" in latency["filter"] and latency["threshold_value"] == "${var.alert_p99_latency_ms}"
    assert latency["aggregations"][0]["cross_series_reducer"] == "REDUCE_PERCENTILE_99"


def alert_conditions(policy: dict) -> dict[str, dict]:
    """An alert policy's condition_threshold blocks by display name, dynamic blocks expanded."""
    found = {condition["display_name"]: condition["condition_threshold"][0]
             for condition in policy.get("conditions", [])}
    for dynamic in policy.get("dynamic", []):
        block = dynamic["conditions"]
        for key, value in block["for_each"].items():
            def expand(item, key=key, value=value):
                if isinstance(item, str):
                    item = item.replace("${conditions.key}", key)
                    return re.sub(r"\$\{conditions\.value\.(\w+)\}", lambda m: value[m.group(1)], item)
                if isinstance(item, list):
                    return [expand(each) for each in item]
                if isinstance(item, dict):
                    return {name: expand(each) for name, each in item.items()}
                return item

            (content,) = expand(block["content"])
            found[content["display_name"]] = content["condition_threshold"][0]
    return found


def check_metric_labels(metric_type: str, text: str, group_by: list[str], types: dict[str, set[str]]) -> None:
    """A metric this stack defines (or Cloud Run's own), and only labels that metric has."""
    if metric_type in BUILT_IN_METRICS:
        return
    assert metric_type in types, f"{metric_type} is not one of the log-based metrics"
    used = set(re.findall(r"metric\.labels?\.(\w+)", text + " " + " ".join(group_by)))
    assert used <= types[metric_type], f"{metric_type} has no label {used - types[metric_type]}"


