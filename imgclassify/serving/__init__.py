"""The HTTP edge: routes, the contract, request parsing, image sources, the two apps, start-up.

Modules: :mod:`.routes` (the one route table), :mod:`.http` (the werkzeug app both functions
share: routing, CORS, errors as JSON, the request log line), :mod:`.contract` (the OpenAPI
document), :mod:`.inputs` (what a classify request asks for, free of any framework),
:mod:`.request_parsing` (HTTP bodies into those inputs), :mod:`.image_sources` and
:mod:`.url_fetch` (where an image's bytes come from, SSRF-safe), :mod:`.service` and
:mod:`.listing` (the operations, free of any framework), :mod:`.classify_app` and
:mod:`.list_models_app` (the two functions' apps), :mod:`.bootstrap` (an instance's start).

Import rule: :mod:`imgclassify.runtime` and below. The only home of werkzeug (and of
request_parsing's python-multipart and pybase64), and within it only the transport modules
(http, request_parsing, the apps) import it: the operations do not.
``list_models`` imports no runtime or imaging module, so its bundle ships without them.
"""
