"""Build a torch module from a manifest's architecture and load its weights into it.

The publisher and the torch engine both build networks here (the functions, which serve
ONNX, never import this module). Each library is imported only when asked for: importing
timm or torchvision costs seconds, ``efficientnet_lite_pytorch`` almost nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from imgclassify.errors import ArchitectureUnavailable, IntegrityError
from imgclassify.store.catalog import Architecture


def _efficientnet_lite(builder: str, kwargs: dict[str, Any], pretrained: bool):
    from efficientnet_lite_pytorch import EfficientNet

    if pretrained:
        raise ArchitectureUnavailable("efficientnet_lite_pytorch ships no weights; publish the bundled models")
    return EfficientNet.from_name(builder, **kwargs)


def _torchvision(builder: str, kwargs: dict[str, Any], pretrained: bool):
    from torchvision import models

    return models.get_model(builder, weights=models.get_model_weights(builder).DEFAULT if pretrained else None,
                            **kwargs)


def _timm(builder: str, kwargs: dict[str, Any], pretrained: bool):
    import timm

    return timm.create_model(builder, pretrained=pretrained, **kwargs)


LIBRARIES: dict[str, Callable[[str, dict[str, Any], bool], Any]] = {
    "efficientnet_lite_pytorch": _efficientnet_lite,
    "torchvision": _torchvision,
    "timm": _timm,
}


def construct(architecture: Architecture, *, on_meta_device: bool = False, pretrained: bool = False):
    """Instantiate the network, untrained unless ``pretrained`` (the library's own weights, downloaded);
    on the meta device no memory is allocated or initialised."""
    import torch

    build = LIBRARIES.get(architecture.library)
    if build is None:
        raise ArchitectureUnavailable(
            f"architecture library {architecture.library!r} is not supported "
            f"(supported: {', '.join(sorted(LIBRARIES))})"
        )
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", architecture.builder):
        raise ArchitectureUnavailable(f"invalid builder name {architecture.builder[:100]!r}")
    try:
        if on_meta_device:
            with torch.device("meta"):
                return build(architecture.builder, dict(architecture.kwargs), False)
        return build(architecture.builder, dict(architecture.kwargs), pretrained)
    except ImportError as error:
        raise ArchitectureUnavailable(f"{architecture.library} is not installed here: {error}") from None
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise ArchitectureUnavailable(
            f"cannot build {architecture.library}/{architecture.builder}: {error}"
        ) from None


def build_module(architecture: Architecture, state_dict: dict):
    """Return the network in eval mode holding ``state_dict``'s tensors (no copy where possible)."""
    # Building on the meta device skips random initialisation, which costs as much as the load;
    # assign=True then adopts the downloaded tensors as the parameters themselves.
    module = construct(architecture, on_meta_device=True)
    try:
        module.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as error:
        raise IntegrityError(f"weights do not fit {architecture.library}/{architecture.builder}: {error}") from None
    if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        # Some tensors (non-persistent buffers) are not in the state dict: build for real.
        module = construct(architecture)
        module.load_state_dict(state_dict, strict=True)
    module.eval()
    module.requires_grad_(False)
    return module
