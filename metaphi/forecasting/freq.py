"""Frequencies: pandas offset aliases (``MS``, ``QS-DEC``, ``W-SUN``, ``h``, ``15min`` ...), the
season length each implies, and the check that a series' timestamps step at that frequency.

Any alias pandas (and so statsforecast) accepts is taken, deprecated spellings included (``M``,
``Q``, ``A``, ``H``, ``T``). The season length is the number of steps in the frequency's natural
cycle, as statsforecast's documentation uses it: a year for yearly, quarterly and monthly data (1,
4, 12), 52 weeks, a week of days (7; 5 business days), a day of hours or minutes (24, 1440), a
minute of seconds (60); a multiple such as ``2MS`` or ``15min`` divides the cycle (6, 96), and
where it does not divide it the season length is 1.

Timestamps are compared at the frequency's period, so month-start and month-end dates are both
monthly data whatever the anchor of the alias; the anchor of the data itself is kept for the
timestamps of forecasts beyond the end.
"""
from __future__ import annotations

import warnings

import numpy as np

# (offset base class name, period code or None, steps per natural cycle)
_KINDS: list[tuple[str, str | None, int]] = [
    ("YearOffset", "Y", 1),
    ("QuarterOffset", "Q", 4),
    ("SemiMonthOffset", None, 24),
    ("MonthOffset", "M", 12),
    ("_CustomBusinessMonth", None, 12),
    ("Week", "W", 52),
    ("CustomBusinessDay", None, 5),
    ("BusinessHour", None, 8),
    ("BusinessDay", "B", 5),
    ("Day", "D", 7),
    ("Hour", "h", 24),
    ("Minute", "min", 1440),
    ("Second", "s", 60),
    ("Milli", "ms", 1),
    ("Micro", "us", 1),
    ("Nano", "ns", 1),
]


def to_offset(freq: str):
    """The pandas offset of an alias, or a ValueError that names ``--freq``."""
    from pandas.tseries.frequencies import to_offset as _to_offset

    if not isinstance(freq, str) or not freq.strip():
        raise ValueError(f"--freq: give a pandas offset alias such as MS, QS-DEC, W-SUN or h, "
                         f"got {freq!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated spellings still work
            return _to_offset(freq.strip())
    except (ValueError, TypeError):
        raise ValueError(f"--freq: {freq!r} is not a pandas offset alias; use one such as Y, "
                         "QS, MS, W-SUN, D, B, h or 15min") from None


def _kind(offset) -> tuple[str | None, int]:
    names = {c.__name__ for c in type(offset).__mro__}
    for cls, code, cycle in _KINDS:
        if cls in names:
            if code == "W":
                code = offset.name  # W-SUN: weeks ending on the alias' weekday
            return code, cycle
    return None, 1


def season_length(freq: str) -> int:
    """Steps per natural cycle of ``freq`` (see the module docstring): ``MS`` -> 12,
    ``QS-DEC`` -> 4, ``W-SUN`` -> 52, ``D`` -> 7, ``h`` -> 24, ``15min`` -> 96, ``YS`` -> 1."""
    offset = to_offset(freq)
    _, cycle = _kind(offset)
    n = abs(int(getattr(offset, "n", 1))) or 1
    return cycle // n if cycle % n == 0 else 1


def canonical(freq: str) -> str:
    """The alias pandas uses today for ``freq`` (``M`` -> ``ME``, ``H`` -> ``h``)."""
    return to_offset(freq).freqstr


def period_ordinals(ds: np.ndarray, freq: str) -> np.ndarray | None:
    """Integer period numbers of datetime ``ds`` at ``freq``'s period (consecutive periods
    differ by 1), or None for offsets without a pandas period (semi-month, custom business)."""
    import pandas as pd

    code, _ = _kind(to_offset(freq))
    if code is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "converting to PeriodArray drops timezone"
        return pd.DatetimeIndex(ds).to_period(code).asi8


def step(freq: str) -> int:
    """Periods per step of ``freq`` (2 for ``2MS``)."""
    return abs(int(getattr(to_offset(freq), "n", 1))) or 1


def infer(ds: np.ndarray) -> str | None:
    """pandas' inferred alias of regularly spaced datetimes (None if they are not)."""
    import pandas as pd

    if len(ds) < 3:
        return None
    try:
        return pd.infer_freq(pd.DatetimeIndex(ds))
    except (TypeError, ValueError):
        return None


def expected_after(prev, freq: str, k: int = 1) -> str:
    """The period ``k`` steps after timestamp ``prev`` at ``freq``, for error messages."""
    import pandas as pd

    code, _ = _kind(to_offset(freq))
    if code is None:
        return str(pd.Timestamp(prev) + k * to_offset(freq))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(pd.Period(pd.Timestamp(prev), freq=code) + k * step(freq))


# The M4 competition's horizons per frequency: FFORMA's holdout length when none is given.
_HORIZONS = {"Y": 6, "Q": 8, "M": 18, "W": 13, "D": 14, "B": 14, "h": 48}


def default_horizon(freq: str) -> int | None:
    """The M4 competition's horizon for ``freq`` (yearly 6, quarterly 8, monthly 18, weekly 13,
    daily 14, hourly 48), or None for other frequencies."""
    code, _ = _kind(to_offset(freq))
    return _HORIZONS.get((code or "").split("-")[0])
