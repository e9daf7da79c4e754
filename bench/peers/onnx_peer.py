"""The simplest classifier server a user could write around the same model.onnx: the peer the
benchmark runs side by side with the service (``bench/serving.py``). Not part of the product.

Served two ways: as a functions-framework function (``--target classify``) and as a Flask app
under gunicorn (``onnx_peer:app``). The session is built at import from a file on local disk
(``MODEL_PATH``), with ONNX Runtime's default options; preprocessing is the model's own recipe
(resize the shorter side, centre crop, mean/std from ``MEAN_STD``) written with Pillow and numpy.
"""

import io
import json
import os

import functions_framework
import numpy as np
import onnxruntime
from flask import Flask, request
from PIL import Image

SESSION = onnxruntime.InferenceSession(os.environ["MODEL_PATH"], providers=["CPUExecutionProvider"])
INPUT = SESSION.get_inputs()[0].name
LABELS = json.loads(open(os.environ["LABELS_PATH"]).read())
RESIZE, CROP = int(os.environ.get("RESIZE", 256)), int(os.environ.get("CROP", 224))
MEAN, STD = float(os.environ.get("MEAN", 0.5)), float(os.environ.get("STD", 0.5))


def predict(data: bytes) -> dict:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = RESIZE / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - CROP) // 2, (image.height - CROP) // 2
    image = image.crop((left, top, left + CROP, top + CROP))
    batch = ((np.asarray(image, dtype=np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1)[None]
    logits = SESSION.run(None, {INPUT: batch})[0][0]
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    best = np.argsort(-probabilities)[:5]
    return {"predictions": [{"label": LABELS[i], "score": float(probabilities[i])} for i in best]}


@functions_framework.http
def classify(req):
    return predict(req.get_data())


app = Flask(__name__)


@app.post("/")
def flask_classify():
    return predict(request.get_data())
