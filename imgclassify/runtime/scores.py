"""Scores, top-k and embeddings: what a model's output rows become in an answer."""

from __future__ import annotations

import numpy as np


def scores(outputs: np.ndarray, kind: str = "logits") -> np.ndarray:
    """Probabilities from a model's output rows: softmax of logits; probabilities pass through."""
    outputs = np.asarray(outputs, dtype=np.float32)
    if kind == "probabilities":
        return outputs
    shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def top_k(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> list[list[dict]]:
    """The ``k`` most likely labels of each row, most likely first (ties: lower index first)."""
    k = min(k, probabilities.shape[1])
    rows = []
    for row in np.asarray(probabilities):
        best = np.argsort(-row, kind="stable")[:k]  # stable: equal scores keep index order
        rows.append([{"label": labels[index], "index": int(index), "score": round(float(row[index]), 6)}
                     for index in best])
    return rows


def l2_normalised(rows: np.ndarray) -> np.ndarray:
    """Each row divided by its Euclidean length (float32); an all-zero row stays zero."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)
