"""Cloud Function ``list_models``: GET /v1/models and GET /v1/models/{name}."""

import functions_framework

from imgclassify.serving.bootstrap import create_http_app

app = create_http_app("list_models")


@functions_framework.http
def list_models(request):
    return app(request)
