"""How numbers are written in reports: one formatter for percentages, plain numbers and bootstrap
intervals, shared by the recovery report and the study reports.

    pct(0.912)                          # "91.2%"
    num(1.1234, 3)                      # "1.123"
    diff_ci({"difference": 0.012, "ci_low": -0.003, "ci_high": 0.027})  # "+1.20 [-0.30, +2.70]"
"""

from __future__ import annotations

import math


def missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct(x: float | None, digits: int = 1, sign: str = "%") -> str:
    """A fraction as a percentage: 0.912 -> "91.2%" ("n/a" when missing)."""
    return "n/a" if missing(x) else f"{100 * x:.{digits}f}{sign}"  # type: ignore[operator]


def num(x: float | None, digits: int = 3) -> str:
    return "n/a" if missing(x) else f"{x:.{digits}f}"


def diff_ci(c: dict | None, scale: float = 100.0, digits: int = 2) -> str:
    """ "difference [low, high]" of one bootstrap result: in points (scale 100) or raw (scale 1)."""
    if not c:
        return "—"
    low, high = c.get("ci_low"), c.get("ci_high")
    interval = "(no CI)" if low is None or high is None else f"[{scale * low:+.{digits}f}, {scale * high:+.{digits}f}]"
    return f"{scale * c['difference']:+.{digits}f} {interval}"


def value_ci(value: float, low: float, high: float, scale: float = 1.0, digits: int = 1) -> str:
    """ "value [low, high]" of an estimate and its interval (no sign)."""
    return f"{scale * value:.{digits}f} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"
