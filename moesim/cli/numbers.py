"""argparse types for numeric flags: each refuses what the flag cannot mean, naming the bound.

`type=positive_int` (or `int_in(1, 4096)`, `finite_positive_float`, `float_in(...)`) makes
argparse refuse `--repeats 0`, `--timeout-s nan` or `--seed -1` at parse time; argparse names
the flag (`argument --repeats: must be an integer >= 1, got 0`) and exits with status 2, as it
does for any flag it cannot read. Integers may be written in scientific notation when they are
whole (`--tokens 1e6`); floats must be finite (NaN and infinity are never a meaningful count,
size, time or rate). Upper bounds are the caller's, each with its reason next to it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from fractions import Fraction

__all__ = [
    "MAX_SEED",
    "int_in",
    "float_in",
    "positive_int",
    "non_negative_int",
    "seed_int",
    "finite_positive_float",
    "non_negative_float",
]

# numpy's generators take any non-negative integer as a seed; int64 is what a seed is stored as
# in results and metadata.
MAX_SEED = 2**63 - 1


def _show(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _bounds(low: float | None, high: float | None, low_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_show(low)}, {_show(high)}]"
    if low is not None:
        return f"{'>' if low_open else '>='} {_show(low)}"
    return f"<= {_show(high)}" if high is not None else "finite"


def _read_int(text: str) -> int | None:
    """`text` as an exact integer (`12`, `1_000`, `1e6`), None when it is not a whole number."""
    try:
        return int(text.strip().replace("_", ""), 10)
    except ValueError:
        pass
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        return None
    # a finite value below 1e30 (a larger exponent is no count anyone means)
    if not number.is_finite() or number.adjusted() > 30 or number != number.to_integral_value():
        return None
    return int(number)


def int_in(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high] (either bound may be None)."""

    def parse(text: str) -> int:
        value = _read_int(text)
        bounds = _bounds(low, high, False)
        if value is None:
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {text!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {text}")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(low: float | None = None, high: float | None = None, *,
             low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] ((low, high] with `low_open`)."""

    def parse(text: str) -> float:
        bounds = _bounds(low, high, low_open)
        try:
            value = float(text.strip().replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {bounds}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}, got {text}")
        below = low is not None and (value <= low if low_open else value < low)
        if below or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a number {bounds}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_in(1)
non_negative_int = int_in(0)
seed_int = int_in(0, MAX_SEED)
finite_positive_float = float_in(0.0, low_open=True)
non_negative_float = float_in(0.0)


# Limits of the live harness's flags (also `moesim calibrate live`'s). Ranks are processes
# spawned on this host: 1024 is several times the cores of the largest servers.
MAX_NPROC = 1024
# Timed or untimed passes: a million passes of even the smallest layer is hours.
MAX_REPEATS = 1_000_000
# A week: the limit bounds a hung rank's wait, so it must be finite (inf would wait forever).
MAX_TIMEOUT_S = 7 * 24 * 3600.0


def parse_scale(text: str) -> float:
    """A scale written as a fraction (1/32) or a decimal (0.03125), in (0, 1]."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"cannot read scale {text!r}; write 1/32 or 0.03125"
        ) from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"scale {text} must be in (0, 1]")
    return value
