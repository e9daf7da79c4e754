"""Running models: engines, the ONNX rules, a loaded model, the warm cache, the registry, scores.

Modules: :mod:`.engines` (ONNX Runtime, and torch for side-by-side checks, behind one
interface), :mod:`.onnx_rules` (what an ONNX file must be to be served), :mod:`.architectures`
(torch modules from a manifest's architecture, for the torch engine and the publisher),
:mod:`.models` (a verified, loaded model), :mod:`.cache` (the LRU of loaded models, one load
per key), :mod:`.registry` (catalog view + cache: what classify can serve), :mod:`.scores`
(softmax and top-k).

Import rule: :mod:`imgclassify.store`, :mod:`imgclassify.imaging` and the ground. No web
framework. torch, torchvision and timm only in the torch engine's code paths
(:mod:`.engines`' torch engine, :mod:`.architectures`), imported when that engine runs.
"""
