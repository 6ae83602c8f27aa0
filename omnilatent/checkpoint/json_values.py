"""Type tests for values read from JSON, where ``true`` is an int to Python and ``NaN`` a
float: the checks of state.json (`files`, `rng`, the stateful parts) share them."""

from __future__ import annotations

import math
from typing import Any


def is_int(value: Any) -> bool:
    """A JSON integer (not true or false)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_count(value: Any) -> bool:
    """A JSON integer >= 0."""
    return is_int(value) and value >= 0


def is_number(value: Any, low: float = 0.0) -> bool:
    """A finite JSON number (not true or false) >= `low`."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= low)
