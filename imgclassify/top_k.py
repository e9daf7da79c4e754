"""The ``top_k`` parameter: its bounds and how a client's value is read.

One rule for the API (query or body), its contract and the batch job's ``--top-k``.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidTopK, shown_value

DEFAULT_TOP_K = 5
MAX_TOP_K = 100


def parse_top_k(value: Any) -> int:
    """``top_k`` as an int in 1..100; strings of digits are accepted (query parameters)."""
    if value is None:
        return DEFAULT_TOP_K
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidTopK(f"top_k must be a whole number from 1 to {MAX_TOP_K}, found {shown_value(value)}")
    if isinstance(value, str) and not (value.isascii() and value.strip().lstrip("+-").isdigit() and len(value) < 20):
        raise InvalidTopK(f"top_k must be a whole number from 1 to {MAX_TOP_K}, found {shown_value(value)}")
    number = int(value)
    if not 1 <= number <= MAX_TOP_K:
        raise InvalidTopK(f"top_k must be from 1 to {MAX_TOP_K}, found {shown_value(number)}")
    return number
