"""The server stack alone: a functions-framework function that reads a request's body and answers
a small JSON object, with no model. ``make bench`` serves it beside the service and measures its
lone p50 and its CPU per request: what any classifier served this way pays on this machine before
it decodes a pixel, from which :func:`bench.serving.bounds` derives the best ratio a server on this
stack could reach. Not part of the product.
"""

import functions_framework


@functions_framework.http
def answer(request):
    return {"bytes": len(request.get_data())}
