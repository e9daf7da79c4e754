"""Smoke check of a running imgclassify service, the way its users meet it.

    python3 scripts/smoke.py URL [--key KEY] [--origin ORIGIN] [--referrer REFERER] [--model NAME] [--wait SECONDS]
    python3 scripts/smoke.py --terraform-outputs terraform-outputs.json --wait 600

Checks, in order:

1. ``GET /v1/models`` lists models and names a default;
2. ``POST /v1/models/MODEL:classify`` with a photo of a cat (scikit-image's ``chelsea``,
   CC0, 300x200, in scripts/data/) puts a domestic cat first (ImageNet classes 281-285);
3. ``POST /v1/models/MODEL:embed`` with the same photo gives one unit-length embedding of the
   announced ``dimensions``;
4. a request without the API key is refused (401 or 403) -- skipped when no key is given,
   as against a local stack started without LOCAL_API_KEY (API Gateway always checks);
5. a CORS preflight for ``POST /v1/classify`` from ORIGIN, the web page's origin, is
   answered with that origin (or ``*``), the method and the ``X-Api-Key`` header allowed;
6. an unknown model is a JSON 404 ``UNKNOWN_MODEL``, from both functions.

Exit status 0 when every check passes (or is skipped), 1 otherwise. With ``--wait`` the failed
checks are retried until they pass or the time is up: a new gateway, config or key can take
minutes to work. Standard library only, so Cloud Build runs it in a bare Python image
(cloudbuild.yaml, step ``smoke``) and ``make smoke URL=... KEY=...`` from anywhere;
tests/stack/test_smoke.py runs the same command against the local stack.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PHOTO = Path(__file__).resolve().parent / "data" / "chelsea.jpg"
# ImageNet's domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_INDICES = range(281, 286)
UNKNOWN_MODEL = "smoke-check-no-such-model"
# The origin of the web page as this stack deploys it (infra/terraform/main.tf, site_origin).
DEFAULT_ORIGIN = "https://storage.googleapis.com"
REQUEST_TIMEOUT_SECONDS = 120  # a cold classify instance loads its model first
RETRY_PAUSE_SECONDS = 15


class CheckFailed(Exception):
    """A check saw something a user of the service would not expect."""


class Skipped(Exception):
    """A check that does not apply to this target."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        try:
            return json.loads(self.body)
        except ValueError:
            raise CheckFailed(f"status {self.status}, body is not JSON: {self.body[:200]!r}") from None


@dataclass
class Target:
    url: str
    key: str | None
    origin: str
    model: str | None
    # Sent as Referer with the key: what the page sends (strict-origin-when-cross-origin: its
    # origin and "/"), so that a key restricted to the page's referrers passes as the page does.
    referrer: str | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                with_key: bool = True) -> Response:
        """Send one request; an HTTP error status is a response like any other."""
        headers = dict(headers or {})
        if with_key and self.key:
            headers["X-Api-Key"] = self.key
        if self.referrer:
            headers.setdefault("Referer", self.referrer)
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as answer:
                return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read())
        except urllib.error.HTTPError as error:
            return Response(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise CheckFailed(f"{method} {path}: {getattr(error, 'reason', error)}") from None


def expect_status(response: Response, expected: int, what: str) -> None:
    if response.status != expected:
        raise CheckFailed(f"{what}: expected {expected}, got {response.status}: {response.body[:300]!r}")


def check_list_models(target: Target) -> str:
    response = target.request("GET", "/v1/models")
    expect_status(response, 200, "GET /v1/models")
    listing = response.json()
    names = [model.get("name") for model in listing.get("models", [])]
    if not names:
        raise CheckFailed("GET /v1/models lists no models: publish some (docs/deploy.md, step 4)")
    default = listing.get("default_model")
    if default not in names:
        raise CheckFailed(f"the default model {default!r} is not among the listed {names}")
    if target.model is None:
        target.model = default
    elif target.model not in names:
        raise CheckFailed(f"--model {target.model!r} is not among the listed {names}")
    return f"{len(names)} models ({', '.join(names)}), default {default}"


def check_classify_photo(target: Target) -> str:
    if target.model is None:
        raise CheckFailed("no model to classify with: listing the models failed")
    path = f"/v1/models/{urllib.parse.quote(target.model)}:classify"
    response = target.request("POST", path, PHOTO.read_bytes(), {"Content-Type": "image/jpeg"})
    expect_status(response, 200, f"POST {path}")
    answer = response.json()
    try:
        top = answer["results"][0]["predictions"][0]
        label, index, score = top["label"], int(top["index"]), float(top["score"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise CheckFailed(f"POST {path}: no top prediction in {str(answer)[:300]}") from None
    if index not in CAT_INDICES:
        raise CheckFailed(f"{target.model} sees {label!r} (class {index}) in a photo of a cat")
    return f"{target.model}@{answer['model']['version']}: {label} ({score:.0%})"


def check_embed_photo(target: Target) -> str:
    if target.model is None:
        raise CheckFailed("no model to embed with: listing the models failed")
    path = f"/v1/models/{urllib.parse.quote(target.model)}:embed"
    response = target.request("POST", path, PHOTO.read_bytes(), {"Content-Type": "image/jpeg"})
    if response.status == 400 and b"EMBEDDINGS_UNAVAILABLE" in response.body:
        raise CheckFailed(f"POST {path}: {target.model} has no feature output; run "
                          f"`python -m imgclassify.publish migrate {target.model}`")
    expect_status(response, 200, f"POST {path}")
    answer = response.json()
    try:
        embedding, dimensions = [float(value) for value in answer["results"][0]["embedding"]], answer["dimensions"]
    except (KeyError, IndexError, TypeError, ValueError):
        raise CheckFailed(f"POST {path}: no embedding in {str(answer)[:300]}") from None
    length = sum(value * value for value in embedding) ** 0.5
    if len(embedding) != dimensions or abs(length - 1) > 1e-3:
        raise CheckFailed(f"POST {path}: {len(embedding)} values (dimensions {dimensions}), length {length:.4f}")
    return f"{target.model}@{answer['model']['version']}: {dimensions} unit-length features"


def check_key_required(target: Target) -> str:
    if not target.key:
        raise Skipped("no key given (the local router checks keys only with LOCAL_API_KEY; API Gateway always does)")
    response = target.request("GET", "/v1/models", with_key=False)
    if response.status not in (401, 403):
        raise CheckFailed(f"GET /v1/models without a key: expected 401 or 403, got {response.status}")
    return f"without a key: {response.status}"


def check_cors_preflight(target: Target) -> str:
    response = target.request("OPTIONS", "/v1/classify", with_key=False, headers={
        "Origin": target.origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key",
    })
    if response.status not in (200, 204):
        raise CheckFailed(f"preflight from {target.origin}: status {response.status}")
    allowed_origin = response.headers.get("access-control-allow-origin")
    if allowed_origin not in (target.origin, "*"):
        raise CheckFailed(f"preflight from {target.origin}: Access-Control-Allow-Origin is {allowed_origin!r}")
    methods = response.headers.get("access-control-allow-methods", "").upper()
    allowed_headers = response.headers.get("access-control-allow-headers", "").lower()
    if "POST" not in methods or "x-api-key" not in allowed_headers:
        raise CheckFailed(f"preflight from {target.origin}: methods {methods!r}, headers {allowed_headers!r}")
    return f"{target.origin} may POST with X-Api-Key"


def check_unknown_model(target: Target) -> str:
    for method, path, body, headers in (
            ("GET", f"/v1/models/{UNKNOWN_MODEL}", None, {}),
            ("POST", f"/v1/models/{UNKNOWN_MODEL}:classify", PHOTO.read_bytes(), {"Content-Type": "image/jpeg"})):
        response = target.request(method, path, body, headers)
        expect_status(response, 404, f"{method} {path}")
        if not response.headers.get("content-type", "").startswith("application/json"):
            raise CheckFailed(f"{method} {path}: Content-Type {response.headers.get('content-type')!r}")
        error = response.json().get("error", {})
        if error.get("code") != "UNKNOWN_MODEL" or error.get("status") != 404:
            raise CheckFailed(f"{method} {path}: error body {error}")
    return "404 UNKNOWN_MODEL from list_models and classify"


CHECKS: list[tuple[str, Callable[[Target], str]]] = [
    ("list models", check_list_models),
    ("classify a cat", check_classify_photo),
    ("embed a cat", check_embed_photo),
    ("key required", check_key_required),
    ("CORS preflight", check_cors_preflight),
    ("unknown model", check_unknown_model),
]


def run(target: Target, wait_seconds: float, out=print) -> bool:
    """Run every check, retrying the failed ones until ``wait_seconds`` have passed."""
    deadline = time.monotonic() + wait_seconds
    pending = list(CHECKS)
    attempt = 1
    while True:
        failures: list[tuple[str, Callable[[Target], str], str]] = []
        for name, check in pending:
            try:
                out(f"PASS {name}: {check(target)}")
            except Skipped as skipped:
                out(f"SKIP {name}: {skipped}")
            except CheckFailed as failed:
                failures.append((name, check, str(failed)))
        if not failures:
            return True
        if time.monotonic() + RETRY_PAUSE_SECONDS > deadline:
            for name, _, reason in failures:
                out(f"FAIL {name}: {reason}")
            return False
        for name, _, reason in failures:
            out(f"retry {name} (attempt {attempt} failed: {reason})")
        attempt += 1
        time.sleep(RETRY_PAUSE_SECONDS)
        pending = [(name, check) for name, check, _ in failures]


def target_from_terraform_outputs(path: Path, model: str | None) -> Target:
    """The deployed stack, from ``terraform output -json``: gateway URL, key, the page's origin.

    The origin is the first of the allowed CORS origins (the page's own unless the operator
    serves it elsewhere), or the page bucket's when any origin is allowed; the referrer is what
    the page on that origin sends (its origin and "/").
    """
    outputs = {name: item["value"] for name, item in json.loads(path.read_text()).items()}
    site = urllib.parse.urlsplit(outputs["site_url"])
    origins = [origin for origin in outputs.get("cors_allowed_origins", []) if origin != "*"]
    origin = origins[0] if origins else f"{site.scheme}://{site.netloc}"
    return Target(outputs["gateway_url"].rstrip("/"), outputs["api_key"], origin, model, referrer=origin + "/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="base URL of the API, e.g. https://GATEWAY_HOST or http://127.0.0.1:8080")
    parser.add_argument("--key", help="API key, sent as X-Api-Key; without one, the no-key check is skipped")
    parser.add_argument("--origin", default=DEFAULT_ORIGIN, help=f"the web page's origin (default {DEFAULT_ORIGIN})")
    parser.add_argument("--model", help="model to classify the cat with (default: the service's default model)")
    parser.add_argument("--referrer", help="Referer to send, as the page does (e.g. https://storage.googleapis.com/); "
                                           "needed when the key is restricted to the page's referrers")
    parser.add_argument("--terraform-outputs", type=Path,
                        help="`terraform output -json` of the stack: URL, key and origin from there")
    parser.add_argument("--wait", type=float, default=0, help="retry failed checks for up to this many seconds")
    args = parser.parse_args(argv)
    if args.terraform_outputs:
        target = target_from_terraform_outputs(args.terraform_outputs, args.model)
    elif args.url:
        target = Target(args.url.rstrip("/"), args.key, args.origin, args.model, referrer=args.referrer)
    else:
        parser.error("give the API's URL, or --terraform-outputs")
    print(f"smoke check of {target.url}")
    return 0 if run(target, args.wait) else 1


if __name__ == "__main__":
    sys.exit(main())
