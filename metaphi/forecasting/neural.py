"""Meta-learner B: a global N-BEATS-style forecaster with per-series fast adaptation.

Each series is a task. Its *support set* is windows (input of length ``L`` -> next ``h`` values)
cut from the series' own history; its *query set* is the window whose target is the last ``h``
values (held out at meta-train time, the unknown future at meta-test time). Every window is
divided by the mean absolute value of its input, so one network serves series of any scale.

Training has two phases, both across many series: (1) plain minibatch training of the global
network on windows (the N-BEATS recipe; cheap and batched), then (2) MAML meta-training with the
core's :class:`metaphi.learners.MAML` (``loss="mae"``) via ``learner.meta_backward(tasks)`` and
Adam, so that a few SGD steps on a series' own windows improve its forecast. The MAML phase
uses an absolute error, like pretraining: a squared error pulled the network toward mean
forecasts and cost 0.6 sMAPE on M3 monthly. At meta-test each series is adapted with the inner
loop on its support windows before forecasting.
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from ..learners import MAML
from ..tasks.task import Task
from .data import SeriesSet


class Block(nn.Module):
    """A generic N-BEATS block: an MLP that emits a backcast and a forecast."""

    def __init__(self, L: int, h: int, width: int, layers: int, backcast: bool = True) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        d = L
        for _ in range(layers):
            mods += [nn.Linear(d, width), nn.ReLU()]
            d = width
        self.mlp = nn.Sequential(*mods)
        # the last block's backcast would feed nothing (and leave unused inner-loop parameters)
        self.backcast = nn.Linear(width, L) if backcast else None
        self.forecast = nn.Linear(width, h)

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        z = self.mlp(x)
        return (self.backcast(z) if self.backcast is not None else None), self.forecast(z)


class NBeats(nn.Module):
    """Doubly residual stack of generic blocks (Oreshkin et al., 2020), small by default."""

    def __init__(self, L: int, h: int, width: int = 128, blocks: int = 3, layers: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(L, h, width, layers, backcast=i < blocks - 1)
                                     for i in range(blocks)])
        self.h = h

    def forward(self, x: Tensor) -> Tensor:
        # Inputs are scaled to mean ~1; centring them on the last value helps the residual stack.
        last = x[..., -1:]
        res = x - last
        out = last.expand(*x.shape[:-1], self.h).clone()
        for b in self.blocks:
            back, fc = b(res)
            out = out + fc
            if back is not None:
                res = res - back
        return out


def window(y: np.ndarray, end: int, L: int, h: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Input ``y[end-h-L : end-h]`` (left-padded with its first value) and target
    ``y[end-h : end]``, both divided by the input's mean absolute value."""
    inp = y[max(0, end - h - L):end - h]
    inp = np.r_[np.full(L - len(inp), inp[0]), inp]
    scale = float(np.mean(np.abs(y[max(0, end - h - L):end - h])))
    scale = scale if scale > 1e-8 else 1.0
    return inp / scale, y[end - h:end] / scale, scale


def forecast_input(y: np.ndarray, L: int) -> tuple[np.ndarray, float]:
    """The last ``L`` values (padded) as a scaled network input, and the scale."""
    inp = y[-L:]
    scale = float(np.mean(np.abs(inp)))
    scale = scale if scale > 1e-8 else 1.0
    inp = np.r_[np.full(L - len(inp), inp[0]), inp]
    return inp / scale, scale


@dataclass
class NeuralConfig:
    lookback: int = 3            # L = lookback * h
    width: int = 128
    blocks: int = 3
    layers: int = 2              # fully connected layers per block
    pretrain_steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    loss: str = "mae"            # pretraining loss: "mae", "smape", "mape" or "mase"
    recent: int = 10             # pretraining windows end within the last `recent * h` points
    max_epochs: float | None = 4.0  # cap pretraining at this many passes over the distinct
                                    # windows (None: no cap, as N-BEATS)
    meta_steps: int = 100
    meta_batch: int = 8
    meta_lr: float = 1e-4        # 3e-4 moved the pretrained network too far (M3 monthly)
    meta_loss: str = "mae"       # inner and outer loss of the MAML phase: "mae" or "mse"
    support: int = 8             # support windows per task
    inner_lr: float = 0.01
    inner_steps: int = 1
    eval_inner_steps: int = 3
    choose_steps: bool = True    # pick the meta-test inner steps on training tasks
    seed: int = 0
    # Ensemble (the N-BEATS recipe): members per (lookback, loss) pair, forecasts combined by
    # their median; empty tuples and bags=1 = a single model with `lookback` and `loss`.
    lookbacks: tuple[int, ...] = ()
    losses: tuple[str, ...] = ()
    bags: int = 1                # members per (lookback, loss) pair, with different seeds
    workers: int = 1             # processes that train ensemble members side by side

    def __post_init__(self) -> None:
        # one place for the checks, so a bad config fails before any member starts training
        for loss in self.losses or (self.loss,):
            if loss not in LOSSES:
                raise ValueError(f"NeuralConfig loss must be one of {LOSSES}, got {loss!r}")
        for L in self.lookbacks or (self.lookback,):
            if L < 1:
                raise ValueError(f"NeuralConfig lookback must be >= 1 (a multiple of h), got {L}")
        if self.meta_loss not in ("mae", "mse"):
            raise ValueError(f"NeuralConfig.meta_loss must be 'mae' or 'mse', got {self.meta_loss!r}")
        if self.bags < 1:
            raise ValueError(f"NeuralConfig.bags must be >= 1, got {self.bags}")
        for k in ("width", "blocks", "layers", "batch_size"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"NeuralConfig.{k} must be >= 1, got {getattr(self, k)}")
        if self.max_epochs is not None and self.max_epochs <= 0:
            raise ValueError(f"NeuralConfig.max_epochs must be > 0 or None, got {self.max_epochs}")
        if self.workers < 1:
            raise ValueError(f"NeuralConfig.workers must be >= 1, got {self.workers}")

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
        return [replace(self, lookback=int(L), loss=loss, lookbacks=(), losses=(), bags=1,
                        seed=self.seed + j) for j, (L, loss, _) in enumerate(grid)]


LOSSES = ("mae", "smape", "mape", "mase")

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
        # divide_no_nan does). Clamping the denominator instead gave the 61 of Tourism's 366
        # monthly series that have zeros a ~100x weight: Tourism test MAPE of the ensemble
        # 22.11 with the clamp, 21.34 without (benchmarks/RESULTS.md).
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
        ends = np.arange(self.h + 1, last_end + 1)
        if len(ends) == 0:
            return None
        # most recent windows first: they say most about the series' near future
        ends = ends[-self.cfg.recent * self.h:]
        pick = rng.choice(ends, size=min(self.cfg.support, len(ends)), replace=False)
        xs, ys = zip(*[window(y, int(e), self.L, self.h)[:2] for e in pick])
        return (torch.tensor(np.stack(xs), dtype=torch.float32),
                torch.tensor(np.stack(ys), dtype=torch.float32))

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
        # Short-series subsets (yearly) have few distinct windows and overfit with many steps
        # (M3 yearly sMAPE 16.5 after 100 steps, 19 after 800), so cap the number of passes.
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


def _fit_member(job: tuple) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    cfg, h, m, train_y, target_y, progress = job
    model = NeuralForecaster(h, cfg, m=m).fit(train_y, progress=progress)
    t0 = time.perf_counter()
    fc = {"NBeats-global": model.forecast(target_y, adapt=False),
          "NBeats-MAML": model.forecast(target_y, adapt=True, progress=progress)}
    model.log["forecast_seconds"] = time.perf_counter() - t0
    model.log["adaptations_rejected"] = model.guarded
    return fc, model.log


def _one_thread() -> None:
    torch.set_num_threads(1)  # the worker processes already fill the cores


def fit_forecast(train: SeriesSet, target: SeriesSet, config: NeuralConfig | None = None,
                 progress: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Meta-train on ``train``'s histories (windows of ``target.h``) and forecast ``target``.

    Returns ``({"NBeats-global": ..., "NBeats-MAML": ...}, log)``: the global network without
    and with per-series adaptation. With an ensemble config (``lookbacks`` / ``losses``) each
    member is trained and adapted on its own (in ``workers`` processes) and every forecast is
    the median over the members.
    """
    from tqdm.auto import tqdm

    cfg = config or NeuralConfig()
    members = cfg.members()
    if len(members) == 1:
        return _fit_member((members[0], target.h, target.m, train.y, target.y, progress))
    t0 = time.perf_counter()
    jobs = [(c, target.h, target.m, train.y, target.y, False) for c in members]
    bar = dict(total=len(jobs), desc=f"neural ensemble h={target.h}", disable=not progress)
    if cfg.workers == 1:
        results = [_fit_member(j) for j in tqdm(jobs, **bar)]
    else:
        with ProcessPoolExecutor(min(cfg.workers, len(jobs)), mp_context=mp.get_context("spawn"),
                                 initializer=_one_thread) as pool:
            results = list(tqdm(pool.map(_fit_member, jobs), **bar))
    fc = {k: np.median(np.stack([r[0][k] for r in results]), axis=0) for k in results[0][0]}
    log = {"members": [{"lookback": c.lookback, "loss": c.loss, "seed": c.seed, **r[1]}
                       for c, r in zip(members, results)],
           "seconds": time.perf_counter() - t0}
    return fc, log
