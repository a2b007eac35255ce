"""A learned optimiser as φ against SGD (MAML) and Meta-SGD inner loops, at the same number of
inner steps, and its transfer to a wider network and to another task family.

    python benchmarks/learned_optimizer.py --part sinusoid [--steps 1500] [--tasks 500]
    python benchmarks/learned_optimizer.py --part omniglot [--steps 200] [--tasks 300]

Sinusoid (10-shot, 5 inner steps at meta-training and meta-test, 1-40-40-1 MLP, Adam 1e-3,
10 tasks per outer step): MAML, Meta-SGD and ``learned_opt`` (initialisation + update rule)
are meta-trained for the same number of outer steps; so is ``learned_opt`` with
``learn_init=False`` (φ is the rule alone, from a fixed random initialisation), which is
compared with plain SGD from the same random initialisation, its learning rate the best of a
grid on meta-validation tasks. Transfer: the rule meta-trained on the 40-wide network runs a
1-80-80-1 network from a random initialisation (never seen), and every φ is tested on
quadratics ``y = a (x - b)^2 + c`` (a task family none was meta-trained on).

Omniglot (5-way 1-shot, Conv-4 with 32 filters, 2 inner steps at meta-training and meta-test,
inner lr 0.4, second order, Adam 1e-3, 8 tasks per outer step): MAML, Meta-SGD and
``learned_opt`` for the same number of outer steps (a small budget: the point is the
comparison at equal steps, not the published accuracy).

Budgets are outer steps, not seconds; the seconds reported were measured on a shared machine.
Writes ``learned_optimizer_sinusoid`` (topic sinusoid) or ``learned_optimizer_omniglot``
(topic omniglot).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from metaphi.learners import MAML, LearnedOptimizer, MetaSGD  # noqa: E402
from metaphi.models import conv4, mlp  # noqa: E402
from metaphi.tasks import Task  # noqa: E402
from metaphi.tasks.sinusoid import SinusoidSource  # noqa: E402
from metaphi.tasks.sources import fixed_tasks, sample_tasks  # noqa: E402

SEED = 0
CLIP = 10.0  # meta-gradient norm clipping, for every learner
LR_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)


@dataclass(frozen=True)
class QuadraticSource:
    """y = a (x - b)^2 + c, a ~ U[-0.5, 0.5], b ~ U[-2, 2], c ~ U[-2, 2], x ~ U[-5, 5]: a task
    family none of the learners is meta-trained on (outputs in about the sinusoids' range)."""

    k_shot: int = 10
    n_query: int = 100

    def sample(self, rng: np.random.Generator) -> Task:
        a, b, c = rng.uniform(-0.5, 0.5), rng.uniform(-2, 2), rng.uniform(-2, 2)
        x = rng.uniform(-5, 5, size=(self.k_shot + self.n_query, 1))
        y = np.clip(a * (x - b) ** 2 + c, -6, 6)
        xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
        k = self.k_shot
        return Task(xt[:k], yt[:k], xt[k:], yt[k:], {"a": a, "b": b, "c": c})


def meta_train(learner, source, steps: int, meta_batch: int, lr: float = 1e-3
               ) -> tuple[float, int]:
    """``steps`` outer Adam steps, the meta-gradient's norm clipped at CLIP; a step whose loss
    or meta-gradient is not finite is skipped (φ unchanged), as a run's ``check_finite``
    would stop there. Returns the seconds they took and the steps skipped."""
    opt = torch.optim.Adam(learner.parameters(), lr=lr)
    learner.train()
    t0 = time.perf_counter()
    skipped = 0
    for step in range(steps):
        tasks = sample_tasks(source, SEED, "train", step, meta_batch)
        opt.zero_grad(set_to_none=True)
        stats = learner.meta_backward(tasks)
        params = [p for p in learner.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, CLIP)
        if not (np.isfinite(stats["loss"]) and torch.isfinite(norm)):
            skipped += 1
            continue
        opt.step()
        if step % max(steps // 10, 1) == 0:
            print(f"  step {step}/{steps}", flush=True)
    return time.perf_counter() - t0, skipped


def test(learner, source, n: int, stream: str = "test") -> dict:
    """Mean and 95% CI of the metric over the tasks where it is finite, and how many tasks
    diverged (a non-finite metric)."""
    tasks = list(fixed_tasks(source, SEED, stream, n))
    metrics = torch.cat([learner.eval_episodes(tasks[i:i + 50])[1]
                         for i in range(0, len(tasks), 50)]).double()
    ok = metrics[torch.isfinite(metrics)]
    ci = float(1.96 * ok.std() / len(ok) ** 0.5) if len(ok) > 1 else float("nan")
    return {"mean": float(ok.mean()), "ci95": ci, "diverged": len(metrics) - len(ok)}


def fmt(res: dict, digits: int = 3, scale: float = 1.0) -> str:
    out = f"{scale * res['mean']:.{digits}f} ± {scale * res['ci95']:.{digits}f}"
    return out + (f" ({res['diverged']} tasks diverged)" if res["diverged"] else "")


def random_init_mlp(width: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return mlp(1, (width, width), 1)


def sgd_from(width: int, seed: int, steps: int, val, n_val: int) -> tuple[MAML, float]:
    """Plain SGD from a random initialisation, its step size the best of LR_GRID on ``val``."""
    best = None
    for lr in LR_GRID:
        learner = MAML(random_init_mlp(width, seed), loss="mse", inner_lr=lr, inner_steps=steps)
        mse = test(learner, val, n_val, "val")["mean"]
        if best is None or mse < best[0]:
            best = (mse, lr, learner)
    return best[2], best[1]


def rule_on(width: int, seed: int, steps: int, trained: LearnedOptimizer) -> LearnedOptimizer:
    """The rule (and step size) of ``trained`` running a network it has never seen."""
    learner = LearnedOptimizer(random_init_mlp(width, seed), loss="mse", inner_steps=steps,
                               hidden=trained.update.fc0.out_features, learn_init=False)
    learner.update.load_state_dict(trained.update.state_dict())
    learner.log_lr.data.copy_(trained.log_lr.data)
    return learner


def sinusoid(args: argparse.Namespace) -> None:
    k, steps, mb = 10, 5, 10
    train, val = SinusoidSource(k, 10), SinusoidSource(k, 100)
    test_src, quad = SinusoidSource(k, 100), QuadraticSource(k, 100)
    make = {
        "maml": lambda: MAML(random_init_mlp(40, 1), loss="mse", inner_lr=0.01,
                             inner_steps=steps),
        "metasgd": lambda: MetaSGD(random_init_mlp(40, 1), loss="mse", inner_lr=0.01,
                                   inner_steps=steps),
        "learned_opt": lambda: LearnedOptimizer(random_init_mlp(40, 1), loss="mse",
                                                inner_lr=0.01, inner_steps=steps),
        "learned_opt (rule only)": lambda: LearnedOptimizer(
            random_init_mlp(40, 1), loss="mse", inner_lr=0.01, inner_steps=steps,
            learn_init=False),
    }
    t_all = time.perf_counter()
    learners, seconds = {}, {}
    for name, build in make.items():
        print(name, flush=True)
        learners[name] = build()
        seconds[name] = meta_train(learners[name], train, args.steps, mb)
    sgd40, lr40 = sgd_from(40, 1, steps, val, args.tasks)
    rows = []
    for name, learner in learners.items():
        secs, skipped = seconds[name]
        rows.append([name, fmt(test(learner, test_src, args.tasks)),
                     fmt(test(learner, quad, args.tasks)), args.steps, skipped,
                     round(secs, 1)])
        print(rows[-1], flush=True)
    rows.append([f"SGD from the same random init (lr {lr40}, best of grid)",
                 fmt(test(sgd40, test_src, args.tasks)), fmt(test(sgd40, quad, args.tasks)),
                 0, 0, 0.0])
    # width transfer: the rule meta-trained with the 40-wide network, on an 80-wide one
    rule = learners["learned_opt (rule only)"]
    wide_rows = []
    for width in (40, 80):
        for inner in (steps, 4 * steps):
            sgd, lr = sgd_from(width, 2, inner, val, args.tasks)
            learned = rule_on(width, 2, inner, rule)
            wide_rows.append([f"1-{width}-{width}-1", inner,
                              fmt(test(learned, test_src, args.tasks)),
                              f"{fmt(test(sgd, test_src, args.tasks))} (lr {lr})"])
            print(wide_rows[-1], flush=True)
    notes = (f"Sinusoid tasks, {k}-shot, 100 query points, {args.tasks} meta-test tasks (the "
             "same for every row); ± is the 95% CI. Every learner meta-trained for the same "
             f"{args.steps} outer steps (Adam 1e-3, {mb} tasks per step) with {steps} inner steps "
             "at meta-training and meta-test, inner lr 0.01 (Meta-SGD: initial per-parameter "
             "lr; learned_opt: the rule starts as SGD with it). SGD's step size is the best of "
             f"{list(LR_GRID)} on {args.tasks} meta-validation tasks. Wall seconds were "
             f"measured on a shared, loaded machine. Meta-gradients are clipped at norm {CLIP} "
             "for every learner; an outer step with a non-finite loss or gradient is skipped. "
             "MSE means and CIs are over the tasks where the adapted model's MSE is finite; "
             "tasks where it is not are counted as diverged.")
    write_result(
        "learned_optimizer_sinusoid",
        "A learned inner-loop optimiser vs SGD and Meta-SGD on sinusoids, and its transfer",
        [{"title": f"Post-adaptation MSE after {steps} inner steps: meta-trained on sinusoids, "
                   "tested on sinusoids and on quadratics (not meta-trained on)",
          "columns": ["learner", "sinusoid MSE", "quadratic MSE (transfer)", "outer steps",
                      "steps skipped (not finite)", "train seconds"],
          "rows": rows, "notes": notes},
         {"title": "Width transfer: the rule meta-trained on a 1-40-40-1 MLP (from one fixed "
                   "random init) runs networks from a new random init",
          "columns": ["network", "inner steps", "learned rule MSE", "SGD MSE"],
          "rows": wide_rows,
          "notes": "The rule was meta-trained with 5 inner steps on the 40-wide network; the "
                   "rows with 20 steps and the 80-wide network are outside what it was "
                   "meta-trained on. " + notes}],
        time.perf_counter() - t_all, topic="sinusoid",
        question="Does a meta-learned update rule beat SGD and Meta-SGD inner loops at the "
                 "same number of inner steps, and does it transfer to a wider network and to "
                 "another task family?")


def omniglot(args: argparse.Namespace) -> None:
    from metaphi.data.omniglot import omniglot_sources

    train, _, test_src = omniglot_sources(args.data_dir, n_way=5, k_shot=1, n_query=15)
    steps, mb, width = 2, 8, 32
    make = {
        "maml": lambda: MAML(conv4(5, hidden=width), inner_lr=0.4, inner_steps=steps),
        "metasgd": lambda: MetaSGD(conv4(5, hidden=width), inner_lr=0.4, inner_steps=steps),
        "learned_opt": lambda: LearnedOptimizer(conv4(5, hidden=width), inner_lr=0.4,
                                                inner_steps=steps),
    }
    t_all = time.perf_counter()
    rows = []
    for name, build in make.items():
        print(name, flush=True)
        torch.manual_seed(1)
        learner = build()
        secs, skipped = meta_train(learner, train, args.steps, mb)
        before = time.perf_counter()
        res = test(learner, test_src, args.tasks)
        rows.append([name, fmt(res, 1, 100.0), args.steps, skipped, round(secs, 1),
                     round(time.perf_counter() - before, 1)])
        print(rows[-1], flush=True)
    write_result(
        "learned_optimizer_omniglot",
        "A learned inner-loop optimiser vs SGD and Meta-SGD on Omniglot 5-way 1-shot",
        [{"title": f"Meta-test accuracy (%) after {steps} inner steps, {args.steps} outer steps "
                   "each",
          "columns": ["learner", "accuracy", "outer steps", "steps skipped (not finite)",
                      "train seconds", "test seconds"],
          "rows": rows,
          "notes": f"Omniglot 5-way 1-shot (Vinyals split, rotations as classes), Conv-4 with "
                   f"{width} filters, {steps} inner steps at meta-training and meta-test, inner "
                   f"lr 0.4 (Meta-SGD: initial per-parameter lr; learned_opt: the rule starts "
                   f"as SGD with it), second order, Adam 1e-3, {mb} tasks per outer step, "
                   f"{args.tasks} meta-test tasks (± is the 95% CI). A small budget in outer "
                   "steps, the same for each learner, far from convergence: it compares the "
                   "inner loops, not the published accuracy. Wall seconds were measured on a "
                   "shared, loaded machine (2 cores)."}],
        time.perf_counter() - t_all, topic="omniglot",
        question="At the same number of inner and outer steps, does a meta-learned update rule "
                 "beat SGD and Meta-SGD inner loops on Omniglot?")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("sinusoid", "omniglot"), required=True)
    ap.add_argument("--steps", type=int, help="outer steps per learner (default: sinusoid "
                    "1500, omniglot 200)")
    ap.add_argument("--tasks", type=int, help="meta-test tasks (default: sinusoid 500, "
                    "omniglot 300)")
    ap.add_argument("--data-dir", default=None, help="omniglot: the data folder (default: "
                    "$METAPHI_DATA)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sinus = args.part == "sinusoid"
    args.steps = args.steps or (1500 if sinus else 200)
    args.tasks = args.tasks or (500 if sinus else 300)
    (sinusoid if sinus else omniglot)(args)


if __name__ == "__main__":
    main()
