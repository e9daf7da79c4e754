"""Labels files: one label per non-empty line, as many as the model has classes, whatever the source."""

from __future__ import annotations

from imgclassify.errors import InvalidRequest


def read_labels(path: str, expected: int | None = None) -> tuple[str, ...]:
    """The labels of a UTF-8 text file, one per non-empty line; exactly ``expected`` of them if given.

    A count that does not match the model's classes is refused: serving the scores under
    shifted or invented labels would be wrong without any error.
    """
    with open(path, encoding="utf-8") as handle:
        labels = tuple(line.strip() for line in handle if line.strip())
    if not labels:
        raise InvalidRequest(f"{path} holds no labels")
    if expected is not None and len(labels) != expected:
        raise InvalidRequest(f"{path} holds {len(labels)} labels; the model has {expected} classes")
    return labels
