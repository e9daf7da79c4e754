"""Publishing models into a store: catalog writes, model sources, ONNX export and surgery, training, the CLI.

Run it with ``python -m imgclassify.publish --help``.

Import rule: :mod:`imgclassify.runtime` and below. With the torch engine, the only home of
torch, torchvision, timm, onnx and scikit-learn; nothing here is deployed with the functions.
"""
