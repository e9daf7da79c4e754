"""The page when things go wrong, and in its production shape, against a stack of its own.

The stack: a bucket with Lite0, Lite1 and an untrained model; CATALOG_TTL_SECONDS=0 (a removed
model is unknown at once); MAX_REQUEST_MB=1; no preloading (the first request is a cold
start); the classify function reaches storage through a proxy the test can take down (a real
503 STORAGE_UNAVAILABLE). The page is also served from a second origin with its own config.js,
as in production where the page and the API Gateway live apart, and behind a second router
that checks keys and quotas as API Gateway does (LOCAL_API_KEY).
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect
from werkzeug.middleware.shared_data import SharedDataMiddleware
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from devstack.processes import free_port
from devstack.stack import LocalStack
from imgclassify.publish.catalog_writes import remove
from imgclassify.publish.cli import main as publish_cli
from imgclassify.publish.sources import publish_bundled
from imgclassify.store.objects import GcsStore
from tests.support.counting_proxy import CountingProxy
from tests.support.onnx_graphs import colour_classifier, serialized
from tests.support.photos import cat_jpeg
from tests.web.browser import ANSWER_TIMEOUT_MS, top_label, write_file

pytestmark = pytest.mark.integration

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
CAT = re.compile("cat", re.IGNORECASE)
API_KEY = "test-key-123"


def publish_untrained(bucket: str, name: str) -> None:
    publish_cli(["--store", f"gs://{bucket}", "torchvision", "mobilenet_v3_small", "--random-init", "--name", name,
                 "--description", "MobileNetV3-Small with random weights, for tests"])


class PageServer:
    """Serves web/ on its own 127.0.0.1 origin, with a config.js naming ``api_base`` and ``api_key``
    (what the deploy pipeline writes from Terraform outputs)."""

    def __init__(self, api_key: str) -> None:
        self.port = free_port()
        self.api_base = ""
        self.api_key = api_key
        self.files = SharedDataMiddleware(Response("not found", 404), {"/": str(WEB_DIR)})
        self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __call__(self, environ, start_response):
        path = Request(environ).path
        if path == "/config.js":
            config = json.dumps({"apiBase": self.api_base, "apiKey": self.api_key})
            return Response(f"window.IMGCLASSIFY_CONFIG = {config};\n", mimetype="text/javascript")(
                environ, start_response)
        if path == "/":
            environ["PATH_INFO"] = "/index.html"
        return self.files(environ, start_response)

    def start(self) -> PageServer:
        self.server = make_server("127.0.0.1", self.port, self, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class EdgeStack:
    url: str                 # the router: API and the page, same origin
    bucket: str
    storage_proxy: CountingProxy
    cross_origin_page: str   # the page on another origin, configured with apiBase and apiKey
    local: LocalStack        # its functions, for a second router that checks keys and quotas


@pytest.fixture(scope="module")
def edge(emulator, tmp_path_factory) -> Iterator[EdgeStack]:
    bucket = f"web-edge-{uuid.uuid4().hex[:10]}"
    emulator.create_bucket(bucket)
    publish_bundled(GcsStore(bucket), ["efficientnet_lite0", "efficientnet_lite1"], log=lambda _: None)
    publish_untrained(bucket, "smoke")

    proxy = CountingProxy(emulator.url)
    proxy.up()
    page_server = PageServer(API_KEY)
    stack = LocalStack(bucket=bucket, emulator=emulator, log_dir=tmp_path_factory.mktemp("edge-logs"), extra_env={
        "CATALOG_TTL_SECONDS": "0", "MAX_REQUEST_MB": "1", "PRELOAD_DEFAULT_MODEL": "false",
        "CORS_ALLOWED_ORIGINS": page_server.url})
    try:
        stack.start_function("list_models")
        stack.start_function("classify", env={"STORAGE_EMULATOR_HOST": proxy.url, "STORAGE_RETRY_SECONDS": "1",
                                              "STORAGE_TIMEOUT_SECONDS": "2"})
        stack.start_router()
        page_server.api_base = stack.url
        page_server.start()
        yield EdgeStack(stack.url, bucket, proxy, page_server.url, stack)
    finally:
        if page_server.server is not None:
            page_server.stop()
        stack.stop()
        proxy.down()


def model_select(page: Page):
    return page.get_by_label("Model", exact=True)


def test_an_untrained_model_carries_its_badge_and_a_first_request_reads_as_a_cold_start(edge, open_page, tmp_path):
    page = open_page(edge.url)
    expect(model_select(page).locator("option", has_text="smoke")).to_have_text("smoke (v1, untrained)")
    model_select(page).select_option("smoke")
    details = page.locator("#model-details")
    expect(details.locator(".badge", has_text="untrained")).to_be_visible()
    expect(details).to_contain_text("its labels mean nothing")

    page.locator("#file-input").set_input_files(write_file(tmp_path, "chelsea.jpg", cat_jpeg()))
    result = page.locator("#result")
    expect(result.locator(".answer-model")).to_have_text("smoke", timeout=ANSWER_TIMEOUT_MS)
    expect(result.locator(".answered-by .badge")).to_have_text("untrained")
    expect(result).to_contain_text("This model is untrained: these labels are random.")
    expect(result.locator(".timing-line .badge")).to_have_text("cold start")
    result.get_by_text("Timing details").click()
    expect(result.locator(".timing-details")).to_contain_text(re.compile(r"Loading the model\s*[\d.]+ m?s"))


def test_storage_down_reads_as_warming_up_and_the_page_retries_by_itself(edge, open_page, tmp_path):
    page = open_page(edge.url)
    model_select(page).select_option("efficientnet_lite1")  # never loaded: it needs storage
    edge.storage_proxy.down()
    try:
        page.locator("#file-input").set_input_files(write_file(tmp_path, "chelsea.jpg", cat_jpeg()))
        expect(page.locator("#result")).to_contain_text(
            re.compile(r"The service is warming up or briefly unavailable\. Trying again in \d+ seconds? "
                       r"\(attempt 1 of 3\)"), timeout=ANSWER_TIMEOUT_MS)
    finally:
        edge.storage_proxy.up()
    expect(top_label(page)).to_contain_text(CAT, timeout=ANSWER_TIMEOUT_MS)  # no click: the retry did it
    expect(page.locator("#error")).to_be_empty()


def test_a_model_removed_after_the_list_was_loaded_reads_as_unknown_and_the_list_refreshes(edge, open_page, tmp_path):
    publish_untrained(edge.bucket, "retired")
    page = open_page(edge.url)
    model_select(page).select_option("retired")
    remove(GcsStore(edge.bucket), "retired", "1")

    page.locator("#file-input").set_input_files(write_file(tmp_path, "chelsea.jpg", cat_jpeg()))
    expect(page.get_by_role("alert")).to_contain_text(
        "The model “retired” is no longer available. The list of models has been refreshed: choose another one.",
        timeout=ANSWER_TIMEOUT_MS)
    expect(model_select(page).locator("option", has_text="retired")).to_have_count(0)
    expect(model_select(page)).to_have_value("efficientnet_lite0")
    expect(page.locator("#model-note")).to_have_text(
        "The model retired is no longer available; efficientnet_lite0 is selected instead.")


def test_the_picker_shows_the_version_that_answered_when_the_latest_is_removed_meanwhile(edge, open_page, tmp_path):
    model_file, labels_file = tmp_path / "colours.onnx", tmp_path / "labels.txt"
    model_file.write_bytes(serialized(colour_classifier(3)))
    labels_file.write_text("red\ngreen\nblue\n")
    for _ in range(2):
        publish_cli(["--store", f"gs://{edge.bucket}", "onnx", str(model_file), "--labels", str(labels_file),
                     "--name", "versioned", "--crop-size", "32"])
    try:
        page = open_page(edge.url)
        option = model_select(page).locator("option", has_text="versioned")
        expect(option).to_have_text("versioned (v2)")
        model_select(page).select_option("versioned")
        remove(GcsStore(edge.bucket), "versioned", "2")

        page.locator("#file-input").set_input_files(write_file(tmp_path, "chelsea.jpg", cat_jpeg()))

        expect(page.locator("#result .answer-version")).to_have_text("version 1", timeout=ANSWER_TIMEOUT_MS)
        expect(option).to_have_text("versioned (v1)")
        expect(model_select(page)).to_have_value("versioned")
    finally:
        remove(GcsStore(edge.bucket), "versioned", "1")


def test_a_file_over_the_request_limit_reads_as_too_large(edge, open_page, tmp_path):
    page = open_page(edge.url)
    # 2 MB that no browser can decode (so nothing shrinks it) against MAX_REQUEST_MB=1.
    huge = write_file(tmp_path, "scan.jpg", os.urandom(2 * 2**20))
    page.locator("#file-input").set_input_files(huge)
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("This file is too large to send. Choose a smaller photo.", timeout=ANSWER_TIMEOUT_MS)
    expect(alert).to_contain_text("PAYLOAD_TOO_LARGE")


def test_a_spent_gateway_quota_reads_as_quota_exceeded_and_is_not_retried(edge, open_page, tmp_path):
    # The local gateway (LOCAL_API_KEY) with one classify request a minute: the second is ESPv2's 429.
    keyed = edge.local.behind_gateway(API_KEY, {"classify_requests_per_minute": 1})
    try:
        page = open_page(keyed.url)
        calls = []
        page.on("request", lambda request: calls.append(request.url) if ":classify" in request.url else None)
        page.locator("#file-input").set_input_files(write_file(tmp_path, "chelsea.jpg", cat_jpeg()))
        expect(top_label(page)).to_contain_text(CAT, timeout=ANSWER_TIMEOUT_MS)

        page.locator("#file-input").set_input_files(write_file(tmp_path, "again.jpg", cat_jpeg()))
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("Too many requests: the quota for this service has been used up for now. "
                                      "Wait a minute, then try again.")
        expect(alert).to_contain_text("RESOURCE_EXHAUSTED: Quota exceeded for quota metric 'classify requests'")
        expect(alert.get_by_role("button", name="Try again")).to_be_visible()
        page.wait_for_timeout(2500)  # longer than the first automatic retry would wait
        assert len(calls) == 2
    finally:
        keyed.stop()


def test_a_key_the_gateway_does_not_know_reads_as_key_refused(edge, browser):
    # The page's config holds an old key; the local gateway (LOCAL_API_KEY) answers ESPv2's 400.
    keyed = edge.local.behind_gateway(API_KEY)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.route("**/config.js", lambda route: route.fulfill(
            content_type="text/javascript", body='window.IMGCLASSIFY_CONFIG = {"apiBase": "", "apiKey": "old-key"};'))
        listing = []
        page.on("request", lambda request: listing.append(request) if request.url.endswith("/v1/models") else None)
        page.goto(keyed.url)
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("The service did not accept this page's API key. Whoever deployed the page "
                                      "needs to check its configuration.")
        expect(alert).to_contain_text("API key not valid. Please pass a valid API key.")
        assert [request.headers["x-api-key"] for request in listing] == ["old-key"]  # not retried
    finally:
        context.close()
        keyed.stop()


def test_the_page_on_another_origin_uses_the_api_base_and_key_from_config_js(edge, open_page, tmp_path):
    page = open_page(edge.cross_origin_page)
    api_requests = []
    page.on("request", lambda request: api_requests.append(request) if "/v1/" in request.url else None)
    expect(page.locator("#api-origin")).to_have_text(f"API: {edge.url}")

    page.locator("#file-input").set_input_files(write_file(tmp_path, "chelsea.jpg", cat_jpeg()))
    expect(top_label(page)).to_contain_text(CAT, timeout=ANSWER_TIMEOUT_MS)
    classify = [request for request in api_requests if ":classify" in request.url and request.method == "POST"]
    assert classify and classify[0].url.startswith(f"{edge.url}/v1/models/efficientnet_lite0:classify")
    assert classify[0].headers["x-api-key"] == API_KEY
    assert classify[0].all_headers()["origin"] == edge.cross_origin_page  # a real cross-origin call (CORS)
    # strict-origin-when-cross-origin: the page's origin as Referer, which a key restricted to
    # the page's referrers (api_key_allowed_referrers' default) needs; never its path.
    assert classify[0].all_headers()["referer"] == edge.cross_origin_page + "/"

    page.reload()  # the model list, too, came from the API's origin with the key
    expect(model_select(page)).to_be_enabled()
    listing = [request for request in api_requests
               if request.url == f"{edge.url}/v1/models" and request.method == "GET"]
    assert listing and listing[-1].headers["x-api-key"] == API_KEY


def test_on_another_origin_a_refused_key_reads_as_unreachable_because_the_refusal_has_no_cors(edge, browser):
    # As deployed: the page on its own origin, the gateway on another. The preflight passes (the
    # function answers it, with CORS headers); the gateway's 400 for the key carries none, so the
    # browser hides it from the page, which can only say the service could not be reached.
    keyed = edge.local.behind_gateway(API_KEY)
    context = browser.new_context()
    try:
        page = context.new_page()
        config = json.dumps({"apiBase": keyed.url, "apiKey": "old-key"})
        page.route("**/config.js", lambda route: route.fulfill(
            content_type="text/javascript", body=f"window.IMGCLASSIFY_CONFIG = {config};"))
        failed = []
        page.on("requestfailed", lambda request: failed.append(request) if request.url.startswith(keyed.url) else None)
        page.goto(edge.cross_origin_page)
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("The service could not be reached, even after several tries.", timeout=60_000)
        assert failed and {request.headers["x-api-key"] for request in failed} == {"old-key"}
        # What the browser hid: the gateway's refusal, without CORS headers, for the page's origin.
        refusal = requests.get(f"{keyed.url}/v1/models", headers={"x-api-key": "old-key",
                                                                  "Origin": edge.cross_origin_page}, timeout=30)
        assert refusal.status_code == 400 and "access-control-allow-origin" not in refusal.headers
    finally:
        context.close()
        keyed.stop()
