"""One progress bar for a whole forecasting run, with the ETA of all its stages together.

The bar counts estimated milliseconds of wall time: each stage adds its estimate when the run
is planned (base forecasts and features from a per-method cost table, FFORMA from its trees, the
neural forecaster from its steps) and advances by it as the work is done. tqdm divides what is
left by the rate measured so far, so a machine faster or slower than the estimates still gets
a right ETA; the postfix names the stage running now.
"""
from __future__ import annotations


class Progress:
    """``Progress(enabled)``; ``add(ms)`` grows the total, ``stage(name)`` names the running
    stage, ``progress(ms)`` (calling it) advances; ``close()`` ends the bar."""

    def __init__(self, enabled: bool = True, desc: str = "forecast") -> None:
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.bar = tqdm(total=0.0, desc=desc, disable=not enabled, mininterval=1.0,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}"
                                   "{postfix}]")
        self.total = 0.0

    def add(self, ms: float) -> None:
        self.total += max(float(ms), 0.0)
        self.bar.total = max(self.total, 1e-9)
        self.bar.refresh()

    def stage(self, name: str) -> None:
        self.bar.set_postfix_str(name, refresh=True)

    def __call__(self, ms: float) -> None:
        self.bar.update(min(max(float(ms), 0.0), max(self.total - self.bar.n, 0.0)))

    def finish(self) -> None:
        """Mark everything done (estimates that were too high leave a gap)."""
        self.bar.update(max(self.total - self.bar.n, 0.0))

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.finish()
        self.close()


def fforma_ms(n_rows: int, n_methods: int, n_models: int = 5, n_estimators: int = 400,
              parallel: int = 1) -> float:
    """Estimated wall milliseconds of FFORMA's boosters (one tree per method and round)."""
    return n_models * n_estimators * n_methods * (2.0 + 6e-5 * n_rows) / max(parallel, 1)


def neural_ms(n_members: int, pretrain_steps: int, meta_steps: int, batch_size: int,
              n_forecast: int, workers: int = 1) -> float:
    """Estimated wall milliseconds of the neural forecaster's training and forecasts."""
    per = pretrain_steps * (2.0 + batch_size * 0.04) + meta_steps * 60.0 + n_forecast * 2.0
    return n_members * per / max(min(workers, n_members), 1)
