"""The publisher's refusals: a publish or remove that cannot go ahead.

They are not API errors (the functions never raise them) and stand outside
:class:`imgclassify.errors.ServiceError`'s hierarchy; the CLI prints each as one ``error:``
line with exit status 1. ``code`` and ``status`` say what kind of refusal it is.
"""

from __future__ import annotations


class PublishError(Exception):
    """A publish or remove that cannot go ahead."""

    status = 409
    code = "PUBLISH_CONFLICT"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class VersionExists(PublishError):
    """Versions are immutable: the version is published already."""

    code = "VERSION_EXISTS"


class InvalidWeights(PublishError):
    """A checkpoint that holds no state dict, or one that does not fit the architecture."""

    status = 400
    code = "INVALID_WEIGHTS"


class InvalidModelFile(PublishError):
    """A model file (ONNX) the publisher refuses: wrong shape, foreign operators, external data, too large."""

    status = 400
    code = "INVALID_MODEL_FILE"


class ExportMismatch(PublishError):
    """The exported ONNX graph does not give the torch model's answers on real photos."""

    code = "EXPORT_MISMATCH"


class InvalidTrainingSet(PublishError):
    """A labelled set that cannot train a classifier (``publish train``); nothing is published."""

    status = 400
    code = "INVALID_TRAINING_SET"


class AgreementTooLow(PublishError):
    """An int8 twin whose top-1 agrees with its source's on too few held-out photos."""

    code = "AGREEMENT_TOO_LOW"
