"""argparse value types shared by the flag modules (`_parser`, `_cost`), which import each
other in one direction only."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def in_range(
    lo: float, hi: float, words: str, *, closed_lo: bool = True, closed_hi: bool = True,
    hint: str = "",
) -> Callable[[str], float]:  # fmt: skip
    """argparse type: a float between `lo` and `hi` (each end included unless `closed_lo` /
    `closed_hi` is False); the error says "must be <words> (got '<text>')" and `hint`."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        above = lo <= v if closed_lo else lo < v
        below = v <= hi if closed_hi else v < hi
        if not (above and below):
            raise argparse.ArgumentTypeError(f"must be {words} (got {text!r}){hint}")
        return v

    return parse
