"""The page's pure modules, run in the browser as the page loads them (no bundler, no Node).

The API client gets a scripted fetch here, to pin its retry rule exactly; the browser tests in
test_web_page.py and test_web_failures.py exercise it against the real services.
"""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Page

from devstack.gateway import BAD_KEY_MESSAGE, NO_KEY_MESSAGE, Refusal

pytestmark = pytest.mark.integration


def run_module_code(page: Page, body: str):
    """Evaluate ``body`` (an async function body that may ``await load("x.js")``) in the page."""
    return page.evaluate(
        "async (body) => {"
        "  const load = (name) => import(new URL(`js/${name}`, location.href).href);"
        "  return await (Object.getPrototypeOf(async function () {}).constructor)('load', body)(load);"
        "}", body)


@pytest.fixture
def blank_page(stack, browser) -> Page:
    """The router's web/ origin, without the page's CSP (which forbids evaluating strings)."""
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    page.goto(stack.url + "/icon.svg")
    yield page
    context.close()


def test_format_preferences_addresses_and_sizes(blank_page):
    result = run_module_code(blank_page, """
        const format = await load("format.js");
        const preferences = await load("preferences.js");
        const inputs = await load("inputs.js");
        const downscale = await load("downscale.js");
        const models = [{name: "a", input_size: [3, 224, 224]}, {name: "b", input_size: [3, 260, 300]}];
        return {
          percents: [format.percent(0.3671), format.percent(0.0004), format.percent(0), format.percent(1)],
          durations: [format.duration(48.4), format.duration(1234)],
          sizes: [format.byteSize(812), format.byteSize(38702), format.byteSize(4_100_000)],
          kept: preferences.pickModel(models, "b", "a"),
          gone: preferences.pickModel(models, "retired", "a"),
          fresh: preferences.pickModel(models, null, "a"),
          noDefault: preferences.pickModel(models, null, "zzz"),
          addresses: ["gs://bucket/photos/cat.jpg", "gs://bucket/", "gs://b", "https://example.com/c.jpg",
                      "HTTP://example.com/c.jpg", "ftp://example.com/c.jpg", "cat.jpg", " "]
                       .map((text) => inputs.parseAddress(text)?.kind ?? null),
          shortSide: downscale.uploadShortSide(models),
          noSizes: downscale.uploadShortSide([{name: "x"}]),
          scaled: [downscale.scaledSize(4032, 3024, 520), downscale.scaledSize(3024, 4032, 520),
                   downscale.scaledSize(451, 300, 520)],
        };
    """)
    assert result["percents"] == ["36.7%", "<0.1%", "0.0%", "100.0%"]
    assert result["durations"] == ["48 ms", "1.2 s"]
    assert result["sizes"] == ["812 bytes", "39 kB", "4.1 MB"]
    assert result["kept"] == {"name": "b", "fellBack": False}
    assert result["gone"] == {"name": "a", "fellBack": True}
    assert result["fresh"] == {"name": "a", "fellBack": False}
    assert result["noDefault"] == {"name": "a", "fellBack": False}
    assert result["addresses"] == ["gcs", None, None, "url", "url", None, None, None]
    assert result["shortSide"] == 600  # 2 × the largest side of any model input
    assert result["noSizes"] == 0
    assert result["scaled"] == [{"width": 693, "height": 520}, {"width": 520, "height": 693},
                                {"width": 451, "height": 300}]


def test_the_compare_verdict_gives_untrained_models_no_vote_and_the_caption_reads_plainly(blank_page):
    result = run_module_code(blank_page, """
        const {summarizeComparison} = await load("views/compare.js");
        const {describeUpload} = await load("views/result.js");
        const answer = (label, score, total, random_init = false) => ({state: "done", elapsedMs: total, response: {
          model: {name: "m", version: "1", random_init}, timing_ms: {total},
          results: [{predictions: [{label, score, index: 0}]}]}});
        const verdict = (entries) => summarizeComparison(new Map(entries));
        return {
          agreeing: verdict([["a", answer("tabby", 0.5, 20)], ["b", answer("tabby", 0.6, 10)],
                             ["noise", answer("goldfish", 0.01, 5, true)]]),
          plain: verdict([["a", answer("tabby", 0.5, 20)], ["b", answer("tabby", 0.6, 10)]]),
          onlyUntrained: verdict([["noise", answer("goldfish", 0.01, 5, true)]]),
          caption: describeUpload({kind: "file", file: {size: 21000}},
                                  {resized: false, width: 500, height: 375, bytes: 21000}),
        };
    """)
    assert result["agreeing"] == ("All 2 trained models that answered put tabby first. One untrained model was not "
                                  "counted. Fastest on the server: b (10 ms).")
    assert result["plain"] == "All 2 models that answered put tabby first. Fastest on the server: b (10 ms)."
    assert result["onlyUntrained"] == "Only untrained models answered: their labels are random."
    assert result["caption"] == "500 × 375, 21 kB, sent unchanged"


def test_the_compare_grid_puts_each_twin_after_its_source_and_compares_their_answers(blank_page):
    result = run_module_code(blank_page, """
        const {groupTwins, twinVerdict} = await load("views/compare.js");
        const twinOf = (source) => ({precision: "int8", quantized_from: {name: source, version: "1"}});
        const model = (name, source) => ({name, version: "1", ...(source ? twinOf(source) : {})});
        const answer = (label, score, inference) => ({state: "done", elapsedMs: 30, response: {
          model: {name: "m", version: "1", random_init: false}, timing_ms: {total: 20, inference},
          results: [{predictions: [{label, score, index: 0}]}]}});
        const groups = groupTwins([model("a"), model("b"), model("orphan_int8", "gone"), model("a_int8", "a"),
                                   model("b_int8", "b"), model("a_int8_v2", "a")]);
        return {
          groups: groups.map((group) => group.map((m) => m.name)),
          same: twinVerdict("a", answer("tabby", 0.43, 10), "a_int8", answer("tabby", 0.41, 4.6)),
          differ: twinVerdict("a", answer("tabby", 0.43, 10), "a_int8", answer("tiger cat", 0.36, 5)),
          pending: twinVerdict("a", answer("tabby", 0.43, 10), "a_int8", {state: "pending"}),
        };
    """)
    assert result["groups"] == [["a", "a_int8", "a_int8_v2"], ["b", "b_int8"], ["orphan_int8"]]
    assert result["same"] == "a_int8 puts tabby first, as a does; inference 5 ms against 10 ms (0.46×)."
    assert result["differ"] == ("a_int8 puts tiger cat (36.0%) first, a tabby (43.0%); "
                                "inference 5 ms against 10 ms (0.50×).")
    assert result["pending"] == ""


def test_the_api_client_retries_503_and_unreachable_as_told_and_never_a_spent_quota(blank_page):
    result = run_module_code(blank_page, """
        const {ApiClient, parseRetryAfter} = await load("api.js");
        function scripted(answers) {
          const calls = [];
          const fetch = async (url, init) => {
            calls.push({url, method: init.method, key: init.headers["x-api-key"] ?? null});
            const next = answers.shift();
            if (next === "offline") throw new TypeError("Failed to fetch");
            return new Response(JSON.stringify(next.body), {status: next.status, headers: next.headers ?? {}});
          };
          return {fetch, calls};
        }
        const waits = [];
        const sleep = async (ms) => { waits.push(ms); };
        const ok = {status: 200, body: {model: {name: "m", version: "1"}, results: [{predictions: []}]}};
        const busy = (retryAfter) => ({status: 503, headers: retryAfter ? {"Retry-After": retryAfter} : {},
                                       body: {error: {code: "STORAGE_UNAVAILABLE", message: "later", status: 503}}});
        const outcome = async (client, request) => {
          try { await client.classify(request); return "ok"; } catch (error) { return `${error.status} ${error.code}`; }
        };
        const image = {blob: new Blob(["x"], {type: "image/jpeg"})};

        const warming = scripted([busy("5"), busy("120"), "offline", ok]);
        const notices = [];
        const client = new ApiClient({apiBase: "https://api.example", apiKey: "k", fetch: warming.fetch, sleep});
        const onRetry = (n) => notices.push([n.attempt, n.delaySeconds, n.error.code]);
        const first = await outcome(client, {model: "m", image, onRetry});
        const retryWaits = waits.splice(0);

        const down = scripted([busy(null), busy(null), busy(null), busy(null)]);
        const second = await outcome(new ApiClient({fetch: down.fetch, sleep}), {model: "m", image});
        const backoffWaits = waits.splice(0);

        const quota = scripted([{status: 429, body: {code: 429, message: "RESOURCE_EXHAUSTED"}}]);
        const third = await outcome(new ApiClient({fetch: quota.fetch, sleep}), {model: "m", image});

        const unknown = scripted([{status: 404, body: {error: {code: "UNKNOWN_MODEL", message: "no", status: 404}}}]);
        const fourth = await outcome(new ApiClient({fetch: unknown.fetch, sleep}), {model: "m", image});

        const now = Date.parse("2030-01-01T00:00:00Z");
        return {first, notices, retryWaits, firstCall: warming.calls[0], calls: warming.calls.length,
                second, backoffWaits, third, quotaCalls: quota.calls.length, fourth, waitsAfter: waits.length,
                retryAfter: [parseRetryAfter("7"), parseRetryAfter("Tue, 01 Jan 2030 00:00:09 GMT", now),
                             parseRetryAfter("soon"), parseRetryAfter(null)]};
    """)
    assert result["first"] == "ok"
    assert result["notices"] == [[1, 5, "STORAGE_UNAVAILABLE"], [2, 30, "STORAGE_UNAVAILABLE"], [3, 8, "NETWORK_ERROR"]]
    assert result["retryWaits"] == [5000, 30000, 8000]  # Retry-After, capped at 30 s; else 2, 4, 8 s
    assert result["firstCall"] == {"url": "https://api.example/v1/models/m:classify?top_k=5", "method": "POST",
                                   "key": "k"}
    assert result["calls"] == 4
    assert result["second"] == "503 STORAGE_UNAVAILABLE"
    assert result["backoffWaits"] == [2000, 4000, 8000]
    assert result["third"] == "429 QUOTA_EXCEEDED"
    assert result["quotaCalls"] == 1
    assert result["fourth"] == "404 UNKNOWN_MODEL"
    assert result["waitsAfter"] == 0
    assert result["retryAfter"] == [7, 9, None, None]


def test_every_error_code_reads_as_a_sentence_without_codes_or_jargon(blank_page):
    sentences = run_module_code(blank_page, """
        const {explainError, retrySentence} = await load("messages.js");
        const cases = [
          [{status: 415, code: "UNSUPPORTED_IMAGE_FORMAT", message: "m"}, {source: "file"}],
          [{status: 415, code: "UNSUPPORTED_IMAGE_FORMAT", message: "m"}, {source: "gcs"}],
          [{status: 422, code: "UNDECODABLE_IMAGE", message: "m"}, {}],
          [{status: 413, code: "PAYLOAD_TOO_LARGE", message: "m"}, {source: "file"}],
          [{status: 413, code: "IMAGE_TOO_LARGE", message: "m"}, {}],
          [{status: 429, code: "QUOTA_EXCEEDED", message: "m"}, {}],
          [{status: 503, code: "STORAGE_UNAVAILABLE", message: "m"}, {}],
          [{status: 503, code: "BACKEND_UNAVAILABLE", message: "m"}, {}],
          [{status: 0, code: "NETWORK_ERROR", message: "m"}, {}],
          [{status: 404, code: "UNKNOWN_MODEL", message: "m"}, {model: "resnet50"}],
          [{status: 403, code: "FORBIDDEN_SOURCE", message: "m"}, {source: "gcs"}],
          [{status: 403, code: "FORBIDDEN_SOURCE", message: "m"}, {source: "url"}],
          [{status: 422, code: "URL_FETCH_FAILED", message: "m"}, {source: "url"}],
          [{status: 404, code: "OBJECT_NOT_FOUND", message: "m"}, {source: "gcs"}],
          [{status: 401, code: "HTTP_401", message: "m"}, {}],
          [{status: 500, code: "INTEGRITY_ERROR", message: "m"}, {model: "lite0"}],
          [{status: 500, code: "INTERNAL", message: "m"}, {}],
          [{status: 400, code: "INVALID_TOP_K", message: "m"}, {}],
          [{status: 418, code: "HTTP_418", message: "m"}, {}],
        ];
        return [...cases.map(([error, context]) => explainError(error, context).sentence),
                retrySentence({attempt: 1, maxRetries: 3, delaySeconds: 5, error: {status: 503}}),
                retrySentence({attempt: 2, maxRetries: 3, delaySeconds: 1, error: {status: 0}})];
    """)
    assert sentences[0] == ("This file is not an image the service can read. "
                            "Choose a JPEG, PNG, WebP, GIF, BMP or TIFF photo.")
    assert sentences[5].startswith("Too many requests: the quota")
    assert sentences[6].startswith("The service is unavailable right now")
    assert sentences[9].startswith("The model “resnet50” is no longer available.")
    assert sentences[-2] == ("The service is warming up or briefly unavailable. Trying again in 5 seconds "
                             "(attempt 1 of 3)…")
    assert sentences[-1] == "The service could not be reached. Trying again in 1 second (attempt 2 of 3)…"
    for sentence in sentences:
        assert sentence[0].isupper() and sentence.endswith((".", "…")), sentence
        assert "_" not in sentence and "HTTP" not in sentence, sentence  # no codes in what a person reads


def test_the_gateways_own_refusals_read_as_key_refused_or_quota_spent(blank_page):
    # ESPv2's bodies as devstack/gateway.py writes them (the same as the deployed gateway's).
    bodies = [Refusal(401, NO_KEY_MESSAGE), Refusal(400, BAD_KEY_MESSAGE),
              Refusal(403, "PERMISSION_DENIED: Referer blocked."), Refusal(429, "RESOURCE_EXHAUSTED: Quota exceeded"),
              Refusal(400, "INVALID_ARGUMENT: something else")]
    codes = run_module_code(blank_page, """
        const {ApiError} = await load("api.js");
        const bodies = BODIES;
        const codes = [];
        for (const [status, body] of bodies) {
          const headers = {"Content-Type": "application/json"};
          codes.push((await ApiError.fromResponse(new Response(body, {status, headers}))).code);
        }
        return codes;
    """.replace("BODIES", json.dumps([[refusal.status, refusal.body().decode()] for refusal in bodies])))
    assert codes == ["API_KEY_REFUSED", "API_KEY_REFUSED", "API_KEY_REFUSED", "QUOTA_EXCEEDED", "HTTP_400"]


def test_an_int8_twin_shows_its_precision_and_measured_agreement_and_an_fp32_model_its_precision(blank_page):
    result = run_module_code(blank_page, """
        const {agreementText, modelOptionLabel, renderModelDetails} = await load("views/models.js");
        const twin = {name: "lite_int8", version: "1", input_size: [3, 224, 224], precision: "int8",
                      quantized_from: {name: "lite", version: "2"},
                      agreement: {held_out_crops: 320, top1_agreement: 0.9781, top5_overlap: 0.9125,
                                  max_probability_difference: 0.31}};
        const judged = {...twin, agreement: {held_out_crops: 640, judged_crops: 571, top1_agreement: 0.9831,
                                             top1_agreement_all: 0.9047, top5_overlap: 0.9125,
                                             max_probability_difference: 0.31}};
        const fp32 = {name: "lite", version: "2", input_size: [3, 224, 224]};
        const facts = (model) => {
          const container = document.createElement("div");
          renderModelDetails(container, model);
          return Object.fromEntries([...container.querySelectorAll(".fact")]
            .map((fact) => [fact.querySelector("dt").textContent, fact.querySelector("dd").textContent]));
        };
        return {twinLabel: modelOptionLabel(twin), fp32Label: modelOptionLabel(fp32), twin: facts(twin),
                fp32: facts(fp32), none: agreementText(fp32), judged: agreementText(judged)};
    """)
    assert result["twinLabel"] == "lite_int8 (v1, int8)"
    assert result["fp32Label"] == "lite (v2)"
    assert result["twin"]["Precision"] == "int8"
    assert result["twin"]["Agreement"] == ("top-1 same as lite@2 on 97.8% of 320 held-out crops, "
                                           "top-5 overlap 91.3%")
    assert result["judged"] == ("top-1 same as lite@2 on 98.3% of 571 judged held-out crops (90.5% of all 640), "
                                "top-5 overlap 91.3%")
    assert result["fp32"]["Precision"] == "fp32"
    assert "Agreement" not in result["fp32"] and result["none"] is None
