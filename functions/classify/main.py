"""Cloud Function ``classify``: POST /v1/classify and POST /v1/models/{name}:classify."""

import functions_framework

from imgclassify.serving.bootstrap import create_http_app

app = create_http_app("classify")


@functions_framework.http
def classify(request):
    return app(request)
