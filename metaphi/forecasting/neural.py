"""Meta-learner B: a global N-BEATS-style forecaster with per-series fast adaptation.

Each series is a task. Its *support set* is windows (input of length ``L`` -> next ``h`` values)
cut from the series' own history; its *query set* is the window whose target is the last ``h``
values (held out at meta-train time, the unknown future at meta-test time). Every window is
divided by the mean absolute value of its input, so one network serves series of any scale.

Training has two phases, both across many series: (1) plain minibatch training of the global
network on windows (the N-BEATS recipe; cheap and batched), then (2) MAML meta-training with the
core's :class:`metaphi.learners.MAML` (``loss="mae"``) via ``learner.meta_backward(tasks)`` and
Adam, so that a few SGD steps on a series' own windows improve its forecast. The MAML phase
uses an absolute error, like pretraining (a squared error pulls the network toward mean
forecasts). At meta-test each series is adapted with the inner loop on its support windows
before forecasting.
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Annotated, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from ..learners import MAML
from ..models.nbeats import NBeats
from ..tasks.task import Task
from .config import Settings
from .data import SeriesSet


def window(y: np.ndarray, end: int, L: int, h: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Input ``y[end-h-L : end-h]`` (left-padded with its first value) and target
    ``y[end-h : end]``, both divided by the input's mean absolute value."""
    inp = y[max(0, end - h - L):end - h]
    inp = np.r_[np.full(L - len(inp), inp[0]), inp]
    scale = float(np.mean(np.abs(y[max(0, end - h - L):end - h])))
    scale = scale if scale > 1e-8 else 1.0
    return inp / scale, y[end - h:end] / scale, scale


def support_windows(y: np.ndarray, last_end: int, L: int, h: int, k: int, recent: int,
                    rng: np.random.Generator, fill: bool = False
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """A series' support set: ``k`` scaled windows (see :func:`window`) whose targets end at
    most ``last_end``, drawn without replacement among the ``recent * h`` most recent ends
    (they say most about the series' near future); None when no window fits. Fewer than ``k``
    when fewer fit, or, with ``fill``, ``k`` drawn with replacement (equal-sized tasks)."""
    ends = np.arange(h + 1, last_end + 1)[-recent * h:]
    if len(ends) == 0:
        return None
    short = len(ends) < k
    pick = rng.choice(ends, size=k if fill else min(k, len(ends)), replace=fill and short)
    xs, ys = zip(*[window(y, int(e), L, h)[:2] for e in pick])
    return np.stack(xs), np.stack(ys)


def forecast_input(y: np.ndarray, L: int) -> tuple[np.ndarray, float]:
    """The last ``L`` values (padded) as a scaled network input, and the scale."""
    inp = y[-L:]
    scale = float(np.mean(np.abs(inp)))
    scale = scale if scale > 1e-8 else 1.0
    inp = np.r_[np.full(L - len(inp), inp[0]), inp]
    return inp / scale, scale


LOSSES = ("mae", "smape", "mape", "mase")
Loss = Literal["mae", "smape", "mape", "mase"]


class NeuralConfig(Settings):
    """Settings of the neural forecaster (one network, or an ensemble of members). A bad value
    is a :class:`metaphi.runs.config.ConfigError` naming the field, raised before any member
    starts training."""

    title: ClassVar[str] = "neural forecaster settings"

    lookback: int = Field(3, ge=1, description="input length L = lookback * h")
    width: int = Field(128, ge=1)
    blocks: int = Field(3, ge=1)
    layers: int = Field(2, ge=1, description="fully connected layers per block")
    pretrain_steps: int = Field(1000, ge=0)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    loss: Loss = Field("mae", description="pretraining loss")
    recent: int = Field(10, ge=1, description="pretraining windows end within the last "
                        "recent * h points")
    max_epochs: float | None = Field(4.0, gt=0, description="cap pretraining at this many "
                                     "passes over the distinct windows (None: no cap, as N-BEATS)")
    meta_steps: int = Field(100, ge=0)
    meta_batch: int = Field(8, ge=1)
    meta_lr: float = Field(1e-4, gt=0, description="small: the MAML phase fine-tunes a "
                           "pretrained network")
    meta_loss: Literal["mae", "mse"] = Field("mae", description="inner and outer loss of the "
                                             "MAML phase")
    support: int = Field(8, ge=1, description="support windows per task")
    inner_lr: float = Field(0.01, gt=0)
    inner_steps: int = Field(1, ge=1)
    eval_inner_steps: int = Field(3, ge=0)
    choose_steps: bool = Field(True, description="pick the meta-test inner steps on training "
                               "tasks")
    seed: int = Field(0, ge=0)
    # Ensemble (the N-BEATS recipe): members per (lookback, loss) pair, forecasts combined by
    # their median; empty tuples and bags=1 = a single model with `lookback` and `loss`.
    lookbacks: tuple[Annotated[int, Field(ge=1)], ...] = ()
    losses: tuple[Loss, ...] = ()
    bags: int = Field(1, ge=1, description="members per (lookback, loss) pair, different seeds")
    workers: int = Field(1, ge=1, description="processes that train members side by side")

    @classmethod
    def nbeats_ensemble(cls, losses: tuple[str, ...] = ("smape", "mape", "mase"), bags: int = 1,
                        workers: int | None = None, **kw) -> "NeuralConfig":
        """The N-BEATS paper's ensemble recipe, one model per setting: lookbacks of 2..7
        horizons x ``losses`` (sMAPE, MAPE and MASE: 18 members) x ``bags`` seeds, trained on
        all cores by default."""
        return cls(lookbacks=(2, 3, 4, 5, 6, 7), losses=tuple(losses), bags=bags,
                   workers=workers or os.cpu_count() or 1, **kw)

    @classmethod
    def nbeats_g(cls, subset: str, bags: int = 10, workers: int | None = None,
                 **kw) -> "NeuralConfig":
        """N-BEATS-G's published training settings for a built-in subset (``"tourism-monthly"``,
        ``"m3-yearly"``...; :data:`NBEATS_G`): 30 generic blocks of 512 units, batch 1024, the
        subset's iterations and history window, no epoch cap, the ensemble of lookbacks 2..7 x
        the losses x ``bags`` seeds (the paper's 10). Our networks see windows scaled by their
        mean absolute input, and pretraining uses a cosine learning-rate schedule."""
        if subset not in NBEATS_G:
            raise ValueError(f"no published N-BEATS-G settings for {subset!r}; known: "
                             f"{sorted(NBEATS_G)}")
        settings = {"width": 512, "blocks": 30, "batch_size": 1024, "lr": 1e-3,
                    "max_epochs": None, **NBEATS_G[subset], **kw}
        losses = settings.pop("losses")
        return cls.nbeats_ensemble(losses=losses, bags=bags, workers=workers, **settings)

    def members(self) -> list["NeuralConfig"]:
        """The single-model configs of the ensemble's members (just this one if no ensemble)."""
        if not self.lookbacks and not self.losses and self.bags == 1:
            return [self]
        grid = itertools.product(self.lookbacks or (self.lookback,), self.losses or (self.loss,),
                                 range(self.bags))
        return [self.updated(lookback=int(L), loss=loss, lookbacks=(), losses=(), bags=1,
                             seed=self.seed + j) for j, (L, loss, _) in enumerate(grid)]


# N-BEATS-G's per-subset settings from the authors' experiment configs (ServiceNow/N-BEATS,
# experiments/{m3,tourism}/generic.gin): training iterations, the history window that training
# windows end in (in horizons: our `recent`), layers per block, and the ensemble's losses.
NBEATS_G: dict[str, dict] = {
    "tourism-yearly": {"pretrain_steps": 30, "recent": 5, "layers": 2, "losses": ("mape",)},
    "tourism-quarterly": {"pretrain_steps": 100, "recent": 10, "layers": 2, "losses": ("mape",)},
    "tourism-monthly": {"pretrain_steps": 100, "recent": 20, "layers": 2, "losses": ("mape",)},
    **{f"m3-{s}": {"pretrain_steps": it, "recent": r, "layers": 4,
                   "losses": ("mase", "mape", "smape")}
       for s, it, r in (("yearly", 20, 20), ("quarterly", 250, 20), ("monthly", 10000, 20),
                        ("other", 250, 10))},
}


def window_loss(kind: str, pred: Tensor, y: Tensor, x: Tensor, m: int) -> Tensor:
    """Mean training loss of scaled windows: MAE, sMAPE or MAPE (as fractions), or MASE, whose
    scale is the input window's mean absolute lag-``m`` difference (lag 1 where the window is
    too short)."""
    err = (pred - y).abs()
    if kind == "mae":
        return err.mean()
    if kind == "smape":
        return (2 * err / (pred.abs() + y.abs()).clamp_min(1e-6)).mean()
    if kind == "mape":
        # APE is undefined at a zero target, so those points are left out (as N-BEATS'
        # divide_no_nan does): a clamped denominator would give them a huge weight.
        a = y.abs()
        return (err * torch.where(a > 1e-2, 1 / a.clamp_min(1e-2), torch.zeros_like(a))).mean()
    lag = m if x.shape[-1] > m else 1
    # inputs are scaled to mean 1, so 0.01 bounds the weight of an almost flat window
    scale = (x[..., lag:] - x[..., :-lag]).abs().mean(-1, keepdim=True).clamp_min(1e-2)
    return (err / scale).mean()


class NeuralForecaster:
    """Global network + MAML inner loop for one horizon ``h`` (one frequency subset);
    ``m`` is the season length (used by the MASE loss)."""

    def __init__(self, h: int, config: NeuralConfig | None = None, m: int = 1) -> None:
        self.cfg = config or NeuralConfig()
        if self.cfg.lookbacks or self.cfg.losses or self.cfg.bags != 1:
            raise ValueError("NeuralForecaster is one model; fit an ensemble config "
                             "(lookbacks/losses) with fit_forecast, or use config.members()")
        self.h, self.m = h, int(m)
        self.L = self.cfg.lookback * h
        torch.manual_seed(self.cfg.seed)
        self.net = NBeats(self.L, h, self.cfg.width, self.cfg.blocks, self.cfg.layers)
        self.learner = MAML(self.net, loss=self.cfg.meta_loss, inner_lr=self.cfg.inner_lr,
                            inner_steps=self.cfg.inner_steps,
                            eval_inner_steps=self.cfg.eval_inner_steps)
        self.log: dict[str, float] = {}
        self.eval_steps = self.cfg.eval_inner_steps
        self.guarded = 0  # series whose adaptation was rejected by the guard in _predict

    # tasks -----------------------------------------------------------------------------------
    def _support(self, y: np.ndarray, last_end: int, rng: np.random.Generator) -> tuple[Tensor, Tensor] | None:
        sup = support_windows(y, last_end, self.L, self.h, self.cfg.support, self.cfg.recent, rng)
        if sup is None:
            return None
        return (torch.tensor(sup[0], dtype=torch.float32),
                torch.tensor(sup[1], dtype=torch.float32))

    def train_task(self, y: np.ndarray, rng: np.random.Generator) -> Task | None:
        """Meta-train task: support from ``y[:-h]``, query = the last ``h`` values of ``y``."""
        sup = self._support(y, len(y) - self.h, rng)
        if sup is None:
            return None
        qx, qy, _ = window(y, len(y), self.L, self.h)
        return Task(sup[0], sup[1], torch.tensor(qx[None], dtype=torch.float32),
                    torch.tensor(qy[None], dtype=torch.float32))

    # training --------------------------------------------------------------------------------
    def fit(self, histories: list[np.ndarray], progress: bool = True) -> "NeuralForecaster":
        """Pretrain on windows of all ``histories``, then MAML meta-train on them as tasks."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed)
        torch.manual_seed(cfg.seed)
        usable = [np.asarray(y, dtype=float) for y in histories if len(y) > self.h]
        if not usable:
            raise ValueError(f"no training series longer than the horizon {self.h}")
        t0 = time.perf_counter()
        lens = np.array([len(y) for y in usable])
        # Subsets of short series (yearly) have few distinct windows and overfit with many
        # steps, so the number of passes over them is capped.
        n_windows = int(np.sum(np.minimum(cfg.recent * self.h, lens - self.h)))
        steps = cfg.pretrain_steps if cfg.max_epochs is None else int(
            min(cfg.pretrain_steps, np.ceil(cfg.max_epochs * n_windows / cfg.batch_size)))
        self.log["pretrain_steps"] = steps
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
        loss = torch.zeros(())
        for step in tqdm(range(steps), desc=f"pretrain h={self.h}",
                         disable=not progress, mininterval=2):
            idx = rng.integers(0, len(usable), cfg.batch_size)
            lo = np.maximum(self.h + 1, lens[idx] - cfg.recent * self.h + 1)
            ends = rng.integers(lo, lens[idx] + 1)
            xs, ys = zip(*[window(usable[i], int(e), self.L, self.h)[:2] for i, e in zip(idx, ends)])
            x = torch.tensor(np.stack(xs), dtype=torch.float32)
            yt = torch.tensor(np.stack(ys), dtype=torch.float32)
            loss = window_loss(cfg.loss, self.net(x), yt, x, self.m)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            opt.step()
            sched.step()
        self.log["pretrain_seconds"] = time.perf_counter() - t0
        self.log["pretrain_last_loss"] = float(loss.detach())
        t1 = time.perf_counter()
        meta_opt = torch.optim.Adam(self.learner.parameters(), lr=cfg.meta_lr)
        losses = []
        # a meta-train task needs a support window before its query: 2h + 1 values at least
        taskable = [y for y in usable if len(y) >= 2 * self.h + 1]
        meta_steps = cfg.meta_steps if taskable else 0
        self.log["meta_train_series"] = len(taskable)
        for step in tqdm(range(meta_steps), desc=f"MAML h={self.h}", disable=not progress,
                         mininterval=2):
            tasks = []
            while len(tasks) < cfg.meta_batch:
                t = self.train_task(taskable[int(rng.integers(len(taskable)))], rng)
                if t is not None:
                    tasks.append(t)
            meta_opt.zero_grad()
            stats = self.learner.meta_backward(tasks)
            nn.utils.clip_grad_norm_(self.learner.parameters(), 1.0)
            meta_opt.step()
            losses.append(stats["loss"])
        self.log["meta_seconds"] = time.perf_counter() - t1
        if losses:
            k = max(1, len(losses) // 5)
            self.log["meta_loss_first"] = float(np.mean(losses[:k]))
            self.log["meta_loss_last"] = float(np.mean(losses[-k:]))
        if cfg.choose_steps:
            self.eval_steps = self.choose_eval_steps(usable, rng)
            self.guarded = 0
        self.log["eval_steps"] = self.eval_steps
        return self

    # forecasting -----------------------------------------------------------------------------
    def _predict(self, x: Tensor, sup: tuple[Tensor, Tensor] | None, steps: int) -> Tensor:
        """Forecast ``x`` after ``steps`` inner-loop steps on ``sup`` (none: the global model).

        Guard: if adaptation does not lower the support loss (or produces non-finite values, as
        a too-large inner step on a steep series can), the global forecast is used instead.
        """
        with torch.no_grad():
            base = self.net(x)
        if sup is None or steps == 0:
            return base
        fast = self.learner.adapt(sup[0], sup[1], create_graph=False, steps=steps)
        with torch.no_grad():
            before = float(self.learner.loss_fn(self.net(sup[0]), sup[1]))
            after = float(self.learner.loss_fn(fast(sup[0]), sup[1]))
            pred = fast(x)
        if not (np.isfinite(after) and after <= before and torch.isfinite(pred).all()):
            self.guarded += 1
            return base
        return pred

    def choose_eval_steps(self, histories: list[np.ndarray], rng: np.random.Generator,
                          candidates: tuple[int, ...] = (0, 1, 2, 3, 5), n: int = 200) -> int:
        """Meta-validation of the number of inner steps at meta-test time: the step count with
        the lowest mean absolute query error on up to ``n`` training tasks (0 = no adaptation)."""
        tasks = []
        for i in rng.permutation(len(histories))[: 3 * n]:
            t = self.train_task(histories[int(i)], rng)
            if t is not None:
                tasks.append(t)
            if len(tasks) >= n:
                break
        if not tasks:
            return 0
        errs = {}
        for k in candidates:
            errs[k] = float(np.mean([float((self._predict(t.query_x, (t.support_x, t.support_y), k)
                                            - t.query_y).abs().mean()) for t in tasks]))
        self.log["eval_steps_errors"] = errs  # type: ignore[assignment]
        return min(errs, key=errs.get)

    def forecasts(self, histories: list[np.ndarray], progress: bool = False
                  ) -> dict[str, np.ndarray]:
        """The global forecast and the adapted one, as the output columns name them."""
        return {"NBeats-global": self.forecast(histories, adapt=False),
                "NBeats-MAML": self.forecast(histories, adapt=True, progress=progress)}

    def forecast(self, histories: list[np.ndarray], adapt: bool = True, seed: int | None = None,
                 progress: bool = False) -> np.ndarray:
        """``(n, h)`` forecasts of the next ``h`` values of each history; with ``adapt`` each
        series first gets the inner loop on its own support windows (when it has any)."""
        from tqdm.auto import tqdm

        rng = np.random.default_rng(self.cfg.seed + 1 if seed is None else seed)
        out = np.empty((len(histories), self.h))
        self.net.eval()
        for i, y in enumerate(tqdm(histories, desc="forecast", disable=not progress,
                                   mininterval=2)):
            y = np.asarray(y, dtype=float)
            x, scale = forecast_input(y, self.L)
            xt = torch.tensor(x[None], dtype=torch.float32)
            sup = self._support(y, len(y), rng) if adapt and self.eval_steps > 0 else None
            pred = self._predict(xt, sup, self.eval_steps)
            f = pred.detach().numpy()[0] * scale
            if not np.isfinite(f).all():
                f = np.full(self.h, y[-1])  # never hand a non-finite forecast downstream
            if np.all(y >= 0):
                f = np.maximum(f, 0.0)  # nonnegative data (counts, sales) stays nonnegative
            out[i] = f
        self.net.train()
        return out


def _fit_member(job: tuple) -> tuple[dict[str, np.ndarray], dict, dict[str, Tensor], int]:
    """Train one member; its forecasts of ``target_y`` (if given), log, weights and the inner
    steps it chose."""
    cfg, h, m, train_y, target_y, progress = job
    model = NeuralForecaster(h, cfg, m=m).fit(train_y, progress=progress)
    fc = {}
    if target_y is not None:
        t0 = time.perf_counter()
        fc = model.forecasts(target_y, progress=progress)
        model.log["forecast_seconds"] = time.perf_counter() - t0
        model.log["adaptations_rejected"] = model.guarded
    return fc, model.log, model.net.state_dict(), model.eval_steps


def _one_thread() -> None:
    torch.set_num_threads(1)  # the worker processes already fill the cores


class NeuralEnsemble:
    """Fitted neural forecasters of one horizon ``h`` (one member, or an ensemble whose forecast
    is the median over its members), as :func:`fit_neural` returns and a saved model holds."""

    def __init__(self, members: list[NeuralForecaster]) -> None:
        if not members:
            raise ValueError("a neural ensemble needs at least one member")
        self.members = members
        self.h, self.m = members[0].h, members[0].m

    def forecast(self, histories: list[np.ndarray]) -> dict[str, np.ndarray]:
        """``{"NBeats-global": (n, h), "NBeats-MAML": (n, h)}``: the median over the members of
        the global forecast and of the forecast after per-series adaptation."""
        outs = [mem.forecasts(histories) for mem in self.members]
        if len(outs) == 1:
            return outs[0]
        return {k: np.median(np.stack([o[k] for o in outs]), axis=0) for k in outs[0]}

    def state(self) -> tuple[dict[str, Tensor], dict]:
        """Weights (``member<i>.<name>``) and the settings to rebuild the members."""
        tensors = {f"member{i}.{k}": v.detach().contiguous()
                   for i, mem in enumerate(self.members) for k, v in mem.net.state_dict().items()}
        meta = {"h": self.h, "m": self.m,
                "members": [{"config": mem.cfg.model_dump(mode="json"),
                             "eval_steps": int(mem.eval_steps)} for mem in self.members]}
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], meta: dict) -> "NeuralEnsemble":
        members = []
        for i, info in enumerate(meta["members"]):
            mem = NeuralForecaster(int(meta["h"]), NeuralConfig(**info["config"]),
                                   m=int(meta["m"]))
            prefix = f"member{i}."
            mem.net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                                     if k.startswith(prefix)})
            mem.eval_steps = int(info["eval_steps"])
            members.append(mem)
        return cls(members)


def fit_neural(train_y: list[np.ndarray], h: int, m: int, config: NeuralConfig | None = None,
               target_y: list[np.ndarray] | None = None, progress: bool = True
               ) -> tuple[NeuralEnsemble, dict[str, np.ndarray], dict]:
    """Meta-train on the histories ``train_y`` (windows of horizon ``h``, season length ``m``).

    Returns ``(ensemble, forecasts of target_y or {}, log)``. With an ensemble config
    (``lookbacks`` / ``losses`` / ``bags``) each member is trained and adapted on its own (in
    ``workers`` processes, which also forecast ``target_y``) and every forecast is the median
    over the members.
    """
    from tqdm.auto import tqdm

    cfg = config or NeuralConfig()
    members = cfg.members()
    t0 = time.perf_counter()
    jobs = [(c, h, m, train_y, target_y, progress and len(members) == 1) for c in members]
    bar = dict(total=len(jobs), desc=f"neural ensemble h={h}",
               disable=not progress or len(jobs) == 1)
    if cfg.workers == 1 or len(jobs) == 1:
        results = [_fit_member(j) for j in tqdm(jobs, **bar)]
    else:
        with ProcessPoolExecutor(min(cfg.workers, len(jobs)), mp_context=mp.get_context("spawn"),
                                 initializer=_one_thread) as pool:
            results = list(tqdm(pool.map(_fit_member, jobs), **bar))
    fitted = []
    for c, (_, _, state, steps) in zip(members, results):
        mem = NeuralForecaster(h, c, m=m)
        mem.net.load_state_dict(state)
        mem.eval_steps = steps
        fitted.append(mem)
    fc = {}
    if target_y is not None:
        fc = (results[0][0] if len(results) == 1 else
              {k: np.median(np.stack([r[0][k] for r in results]), axis=0) for k in results[0][0]})
    if len(members) == 1:
        return NeuralEnsemble(fitted), fc, results[0][1]
    log = {"members": [{"lookback": c.lookback, "loss": c.loss, "seed": c.seed, **r[1]}
                       for c, r in zip(members, results)],
           "seconds": time.perf_counter() - t0}
    return NeuralEnsemble(fitted), fc, log


def fit_forecast(train: SeriesSet, target: SeriesSet, config: NeuralConfig | None = None,
                 progress: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Meta-train on ``train``'s histories (windows of ``target.h``) and forecast ``target``:
    ``({"NBeats-global": ..., "NBeats-MAML": ...}, log)``, the global network without and with
    per-series adaptation (see :func:`fit_neural`)."""
    _, fc, log = fit_neural(train.y, target.h, target.m, config, target.y, progress)
    return fc, log
