"""OpenAI-ES meta-learns MAML's initialisation and inner learning rate on sinusoid regression,
compared with gradient MAML given the same wall-time budget.

φ = the 1-40-40-1 MLP's initial weights (1761 numbers; other widths with ``--hidden``) and
log(inner_lr) (starting at 0.01);
K = 10 support points, 1 inner SGD step. ES fitness = mean post-adaptation query MSE on
``--fitness-tasks`` tasks drawn fresh each generation and shared by all candidates of that
generation (common random numbers). Gradient MAML: second-order, outer Adam lr 1e-3,
meta-batch 25. Both start from the same initial weights and are scored on the same 1000
meta-test tasks (mean MSE with a 95% confidence interval).

    python benchmarks/es_sinusoid.py --budget-seconds 360
    python benchmarks/es_sinusoid.py --generations 20000 --schedule cosine --shaping none

With ``--generations`` ES runs that many generations (annealed over them with ``--schedule
cosine``) and gradient MAML then gets the wall time ES took, unless ``--maml-seconds`` says
otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from metaphi.loops.checkpoint import load_checkpoint  # noqa: E402
from metaphi.loops.population import CHECKPOINT, PopulationOptions, population_train  # noqa: E402
from metaphi.meta import CMAES, OpenAIES, TaskFitness, load_phi_vector, phi_vector  # noqa: E402
from metaphi.meta.fitness import FitnessSpec  # noqa: E402
from metaphi.runs import validate_config  # noqa: E402
from metaphi.runs.population import fitness_spec  # noqa: E402
from metaphi.tasks import fixed_tasks, sample_tasks  # noqa: E402


def make_spec(hidden: list[int], seed: int) -> FitnessSpec:
    """The fitness spec of both methods: sinusoid K=10 with 10 queries, MAML on a
    1-hidden-1 MLP, inner lr 0.01, 1 inner step; ``spec.make_learner(None)`` builds the learner
    with its initial weights from ``seed`` (the run config's seed)."""
    return fitness_spec(validate_config({
        "task": {"source": "sinusoid", "k_shot": 10, "n_query": 10},
        "model": {"name": "mlp", "hidden": list(hidden)},
        "learner": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
        "meta_optimizer": {"name": "cmaes"}, "seed": seed}))


def meta_test(learner, family, seed: int, n: int) -> tuple[float, float]:
    """Mean query MSE after adaptation over ``n`` fixed meta-test tasks, and its 95% CI half-width."""
    losses, _ = learner.eval_episodes(list(fixed_tasks(family, seed, "test", n)))
    losses = losses.double().numpy()
    return float(losses.mean()), float(1.96 * losses.std(ddof=1) / math.sqrt(n))


def train_maml(spec: FitnessSpec, budget: float, meta_batch: int, outer_lr: float,
               average_tail: float = 0.0):
    """Second-order MAML with Adam for ``budget`` seconds, from the spec's initial weights, on
    meta-train tasks drawn with the spec's seed. With ``average_tail`` > 0 also the mean of φ
    over the steps in the last ``average_tail`` of the budget (None otherwise)."""
    learner = spec.make_learner(None)
    family, seed = spec.train_source or spec.source, spec.seed
    opt = torch.optim.Adam(learner.parameters(), lr=outer_lr)
    learner.train()
    t0, step, curve = time.perf_counter(), 0, []
    avg, n_avg = None, 0
    while time.perf_counter() - t0 < budget:
        tasks = sample_tasks(family, seed, "train", step, meta_batch)
        opt.zero_grad()
        logs = learner.meta_backward(tasks)
        opt.step()
        if average_tail > 0 and time.perf_counter() - t0 >= (1 - average_tail) * budget:
            with torch.no_grad():
                v = phi_vector(learner)
            avg, n_avg = (v if avg is None else avg + v), n_avg + 1
        if step % 100 == 0:
            curve.append([step, round(time.perf_counter() - t0, 2), logs["loss"]])
        step += 1
    return learner, step, time.perf_counter() - t0, curve, (None if avg is None else avg / n_avg)


def parse_more_tasks(items: list[str]) -> tuple[tuple[int, ...], ...]:
    """``--more-tasks`` values (``GEN:N`` strings) as TaskFitness's ``more_tasks`` pairs."""
    return tuple(tuple(int(v) for v in item.split(":")) for item in items)


def restart_point(work: Path, hidden: list[int]) -> dict:
    """The final center of the sep-CMA-ES search checkpointed in ``work`` and what it cost
    (generations, fitness evaluations, task episodes, seconds), with the cost of the searches
    it restarted in turn added in (``searches``: each of them, the first one first; a restart
    of n searches scores on task stream ``seed + n``, which none of them saw)."""
    state = load_checkpoint(work / CHECKPOINT)
    cfg = state["config"]
    if cfg.get("optimizer") != "sepcma" or cfg.get("hidden", [40, 40]) != hidden:
        raise ValueError(f"{work} holds a {cfg.get('optimizer')} search of the MLP with hidden "
                         f"{cfg.get('hidden', [40, 40])}; --restart-from needs a sepcma search "
                         f"with --hidden {' '.join(map(str, hidden))}")
    # a search that restarted an earlier one started at that one's center
    earlier = restart_point(Path(cfg["restart_from"]), hidden) if cfg.get("restart_from") else None
    spec = make_spec(hidden, cfg["seed"])
    x0 = phi_vector(spec.make_learner(None)) if earlier is None else earlier["center"]
    es = CMAES(x0=x0, sigma=cfg["sigma"], popsize=cfg["popsize"], seed=cfg["seed"],
               diagonal=True, restarts=cfg.get("restarts", 0),
               stall_generations=cfg.get("stall_generations"))
    es.load_state_dict(state["optimizer"])
    fit = TaskFitness(spec, n_tasks=cfg["fitness_tasks"], seed=cfg["seed"],
                      more_tasks=parse_more_tasks(cfg["more_tasks"]))
    # each generation's population (it grew where that search restarted itself) x its tasks
    episodes = sum(len(h) * fit.tasks_at(g) for g, h in enumerate(es.history))
    point = {"center": np.asarray(es.center), "generations": int(state["generation"]),
             "evaluations": es.evaluations, "episodes": episodes,
             "seconds": float(state["seconds"]), "spread": es.spread,
             "searches": [{"work": str(work), "generations": int(state["generation"]),
                           "popsize": cfg["popsize"], "sigma": cfg["sigma"]}]}
    if earlier is not None:  # count the earlier searches' cost too
        for k in ("generations", "evaluations", "episodes", "seconds"):
            point[k] += earlier[k]
        point["searches"] = earlier["searches"] + point["searches"]
    return point


def preset_maml_mse() -> float | None:
    """Meta-test MSE of the sinusoid-maml-10shot preset from the committed sinusoid benchmark."""
    path = Path(__file__).resolve().parent / "results" / "sinusoid.json"
    try:
        return float(json.loads(path.read_text())["runs"]["sinusoid-maml-10shot"]["meta_test"]["mean"])
    except (OSError, KeyError, ValueError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-seconds", type=float, default=360.0,
                    help="wall-time budget of each method's meta-training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--optimizer", choices=["es", "sepcma"], default="es",
                    help="OpenAI-ES, or sep-CMA-ES (CMAES(diagonal=True): a step size per "
                         "coordinate, adapted; --sigma is its initial step, --es-lr unused)")
    ap.add_argument("--hidden", type=int, nargs="+", default=[40, 40], metavar="WIDTH",
                    help="hidden layer widths of the MLP whose initialisation is meta-learned "
                         "(both methods; default 40 40, the MAML paper's network)")
    ap.add_argument("--popsize", type=int, default=50)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--es-lr", type=float, default=0.02)
    ap.add_argument("--fitness-tasks", type=int, default=25)
    ap.add_argument("--more-tasks", action="append", default=[], metavar="GEN:N",
                    help="from generation GEN on, score on N tasks (repeatable): more tasks "
                         "lower the noise floor the search settles at late in a run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of this process (with --workers 1 the whole population "
                         "is scored here, and 2 threads beat 2 worker processes on 2 cores)")
    ap.add_argument("--generations", type=int, default=None,
                    help="run ES for this many generations instead of --budget-seconds")
    ap.add_argument("--schedule", choices=["constant", "cosine"], default="constant")
    ap.add_argument("--shaping", choices=["ranks", "none"], default="ranks")
    ap.add_argument("--sigma-final", type=float, default=None)
    ap.add_argument("--lr-final", type=float, default=0.0)
    ap.add_argument("--maml-seconds", type=float, default=None,
                    help="gradient MAML's wall-time budget (default: the time ES took)")
    ap.add_argument("--test-tasks", type=int, default=1000)
    ap.add_argument("--average-from", type=int, default=None, metavar="GEN",
                    help="deploy the mean of the ES centers of generations >= GEN (Polyak-"
                         "Ruppert tail averaging; needs --generations), and give gradient MAML "
                         "the same: the mean of its φ over the same final fraction of its run. "
                         "The last φ of each is reported beside it")
    ap.add_argument("--restart-from", default=None, metavar="DIR",
                    help="restart sep-CMA-ES at the final center of the search checkpointed in "
                         "DIR (its --work folder), with the initial --sigma and a fresh task "
                         "stream; budgets are reported as totals of both searches")
    ap.add_argument("--restarts", type=int, default=0, metavar="N",
                    help="sep-CMA-ES restarts itself up to N times when a search stalls, with the "
                         "initial --sigma and a doubled population (IPOP; CMAES(restarts=N)), at "
                         "the stalled search's center")
    ap.add_argument("--stall-generations", type=int, default=None, metavar="W",
                    help="a search has stalled when the median fitness of its last W/2 "
                         "generations is no lower than that of the W/2 before (with --restarts)")
    ap.add_argument("--name", default="es_sinusoid")
    ap.add_argument("--work", default=None, metavar="DIR",
                    help="keep the ES checkpoint in DIR and resume from it: a search longer than "
                         "one sitting continues exactly where it was stopped (same command)")
    args = ap.parse_args()
    if args.schedule == "cosine" and args.generations is None:
        ap.error("--schedule cosine anneals over a known number of generations: give --generations")
    if args.average_from is not None and not (args.generations and 0 <= args.average_from < args.generations):
        ap.error("--average-from GEN needs --generations N with 0 <= GEN < N")
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()

    if min(args.hidden) < 1:
        ap.error(f"--hidden takes positive layer widths, got {args.hidden}")
    spec = make_spec(args.hidden, args.seed)  # sinusoid K=10, MAML 1-40-40-1, inner lr 0.01, 1 step
    prev = None
    if args.restart_from:
        if args.optimizer != "sepcma":
            ap.error("--restart-from restarts a sep-CMA-ES search: give --optimizer sepcma")
        try:
            prev = restart_point(Path(args.restart_from), args.hidden)
        except (OSError, ValueError) as e:
            ap.error(str(e))
    try:
        more = parse_more_tasks(args.more_tasks)
        # a restart scores on tasks no earlier search saw (the next seed's task stream)
        fitness = TaskFitness(spec, n_tasks=args.fitness_tasks, more_tasks=more,
                              seed=args.seed + (0 if prev is None else len(prev["searches"])))
    except ValueError as e:
        ap.error(f"--more-tasks takes GEN:N pairs, e.g. 20000:100 ({e})")
    family = spec.source
    base = spec.make_learner(None)
    init_mse, init_ci = meta_test(base, family, args.seed, args.test_tasks)

    # ES ----------------------------------------------------------------------------------
    if args.restarts and (args.optimizer != "sepcma" or args.stall_generations is None):
        ap.error("--restarts restarts a stalled sep-CMA-ES search: give --optimizer sepcma and "
                 "--stall-generations W")
    if args.optimizer == "sepcma":
        es = CMAES(x0=phi_vector(base) if prev is None else prev["center"], sigma=args.sigma,
                   popsize=args.popsize, seed=args.seed, diagonal=True, restarts=args.restarts,
                   stall_generations=args.stall_generations if args.restarts else None)
    else:
        es = OpenAIES(x0=phi_vector(base), sigma=args.sigma, lr=args.es_lr, popsize=args.popsize,
                      seed=args.seed, shaping=args.shaping, schedule=args.schedule,
                      horizon=args.generations, lr_final=args.lr_final,
                      sigma_final=args.sigma_final)
    # everything that shapes the search: a resume with other settings is refused (the number
    # of generations only where a schedule anneals over it; else a resume may extend the run)
    search = {k: getattr(args, k) for k in ("name", "optimizer", "popsize", "sigma", "es_lr",
                                            "fitness_tasks", "more_tasks", "seed", "schedule",
                                            "shaping", "sigma_final", "lr_final", "average_from")}
    if args.restart_from:
        search["restart_from"] = args.restart_from
    if args.restarts:  # only when set, so that earlier --work checkpoints still resume
        search |= {"restarts": args.restarts, "stall_generations": args.stall_generations}
    if args.schedule != "constant":
        search["generations"] = args.generations
    if args.hidden != [40, 40]:  # only when set, so that earlier --work checkpoints still resume
        search["hidden"] = args.hidden
    with tempfile.TemporaryDirectory() as d:
        res = population_train(es, fitness, args.work or d, PopulationOptions(
            args.generations or 10**7, resume=args.work is not None, workers=args.workers,
            progress=args.generations is not None,
            max_seconds=None if args.generations else args.budget_seconds,
            config=search, average_from=args.average_from))

    def scored(phi: np.ndarray):
        learner = spec.make_learner(None)
        load_phi_vector(learner, phi)
        return (learner, *meta_test(learner, family, args.seed, args.test_tasks))

    es_learner, es_mse, es_ci = scored(res.center)
    last = {"es": (es_learner, es_mse, es_ci)}
    if args.average_from is not None:  # the deployed φ: the tail average (rule fixed up front)
        es_learner, es_mse, es_ci = scored(res.center_average)

    # gradient MAML ------------------------------------------------------------------------
    maml_budget = args.maml_seconds or (res.seconds if args.generations else args.budget_seconds)
    tail = 0.0 if args.average_from is None else 1 - args.average_from / args.generations
    maml, steps, maml_s, curve, maml_avg = train_maml(spec, maml_budget, 25, 1e-3,
                                                      average_tail=tail)
    maml_mse, maml_ci = meta_test(maml, family, args.seed, args.test_tasks)
    if maml_avg is not None:
        last["maml"] = (maml, maml_mse, maml_ci)
        maml, maml_mse, maml_ci = scored(maml_avg)

    ratio = es_mse / maml_mse
    met = ratio <= 1.10
    preset = preset_maml_mse() if args.hidden == [40, 40] else None
    preset_note = ("" if preset is None else
                   f" Against the sinusoid-maml-10shot preset's own meta-test MSE in the sinusoid "
                   f"table ({preset:.3f}, 30000 outer steps) the ratio is {es_mse / preset:.2f}.")
    # task episodes: each generation's population (it grows where the search restarted) times
    # the tasks it was scored on
    episodes = sum(h.get("popsize", args.popsize) * fitness.tasks_at(h["generation"])
                   for h in res.history)
    es_name = ("sep-CMA-ES" if args.optimizer == "sepcma" else "OpenAI-ES") + " (init + inner lr)"
    es_cells = [f"{res.evaluations} fitness evals ({res.generations} gens)", episodes,
                round(res.seconds, 1)]
    if prev is not None:  # totals: the search it restarts, then the restart
        gens = " + ".join(str(p["generations"]) for p in prev["searches"])
        es_cells = [f"{prev['evaluations'] + res.evaluations} fitness evals ({gens}"
                    f" + {res.generations} gens after a restart)", prev["episodes"] + episodes,
                    round(prev["seconds"] + res.seconds, 1)]
    maml_cells = [f"{steps} outer steps", steps * 25, round(maml_s, 1)]
    avg_tag = (f", mean of φ over the last {100 * tail:.0f}% of the run" if tail else "")
    rows = [
        ["initial weights (no meta-training)", "-", "-", "-", 0.01, f"{init_mse:.3f} ± {init_ci:.3f}"],
        [es_name + avg_tag, *es_cells, round(es_learner.inner_lr, 4), f"{es_mse:.3f} ± {es_ci:.3f}"],
        ["gradient MAML (2nd order)" + avg_tag, *maml_cells, round(maml.inner_lr, 4),
         f"{maml_mse:.3f} ± {maml_ci:.3f}"],
    ]
    if tail:
        (el, em, ec), (ml, mm, mc) = last["es"], last["maml"]
        rows += [[es_name + ", last φ", *es_cells, round(el.inner_lr, 4), f"{em:.3f} ± {ec:.3f}"],
                 ["gradient MAML (2nd order), last φ", *maml_cells, round(ml.inner_lr, 4),
                  f"{mm:.3f} ± {mc:.3f}"]]
    deployed = " (its tail average)" if args.average_from is not None else ""
    if args.optimizer == "sepcma":
        opt_desc = (f"sep-CMA-ES (cmaes.SepCMA via CMAES(diagonal=True)): popsize {args.popsize}, "
                    f"initial sigma {args.sigma}, per-coordinate step sizes adapted by the "
                    f"library, φ deployed = the search mean{deployed}; "
                    + ("" if prev is None else
                       f"restarted at the final center of the search in {args.restart_from} "
                       + ("" if len(prev["searches"]) == 1 else
                          f"(itself the last of {len(prev['searches'])} searches, each restarted at the "
                          f"last one's center: {prev['searches']}) ")
                       + f"({prev['generations']} generations in all, {prev['seconds']:.0f} s; its "
                       f"candidates' spread had fallen to {prev['spread']:.2g}) with the step "
                       f"size reset to {args.sigma}, scoring tasks that search never saw; ")
                    + ("" if not args.restarts else
                       f"IPOP restarts (at most {args.restarts}, at a stalled search's center "
                       f"with sigma {args.sigma} and twice the population; stalled = the median "
                       f"fitness of the last {args.stall_generations // 2} generations no lower "
                       f"than that of the {args.stall_generations // 2} before): "
                       f"{getattr(es, 'restart_log', [])}; "))
    else:
        opt_desc = (f"ES: popsize {args.popsize} (antithetic), sigma {args.sigma}"
                    + (f" -> {args.sigma_final}" if args.sigma_final else "")
                    + f", Adam lr {args.es_lr}"
                    + (f" -> {args.es_lr * args.lr_final:g} (cosine over {args.generations} "
                       "generations)" if args.schedule == "cosine" else "")
                    + f", {'rank' if args.shaping == 'ranks' else 'no'} fitness shaping, "
                    f"φ deployed = the ES mean{deployed}; ")
    equal = abs(maml_s - res.seconds) <= 0.05 * res.seconds
    net = "-".join(map(str, [1, *args.hidden, 1]))
    table = {"title": ("Sinusoid 10-shot, 1 inner step: ES vs gradient MAML"
                       + (f", MLP {net} ({phi_vector(base).size} numbers in φ)"
                          if args.hidden != [40, 40] else "")
                       + (" at equal wall time" if equal else "")),
             "columns": ["method", "budget used", "task episodes", "wall s", "inner lr",
                         f"meta-test MSE ± 95% CI ({args.test_tasks} tasks)"],
             "rows": rows,
             "notes": (f"ES/MAML MSE ratio = {ratio:.2f}; the target (ES within 10% of gradient "
                       f"MAML, ratio <= 1.10) is {'met' if met else 'NOT met'}. "
                       + (f"Both sides deploy the tail average of φ (Polyak-Ruppert; ES: the "
                          f"centers of generations >= {args.average_from}, MAML: its φ after "
                          f"{100 * (1 - tail):.0f}% of its wall time), a rule fixed before the "
                          f"run; with the last φ of each the ratio is "
                          f"{last['es'][1] / last['maml'][1]:.2f}. " if tail else "")
                       + opt_desc
                       + f"{args.fitness_tasks} fitness tasks per generation (shared by the "
                       "generation)" + "".join(f", {n} from generation {g} on"
                                               for g, n in fitness.more_tasks)
                       + f", {args.workers} worker process(es), {args.threads} torch "
                       "thread(s)." + preset_note)}
    write_result(args.name, "ES meta-learns MAML's initialisation and inner lr (sinusoid)"
                 + (f", MLP {net}" if args.hidden != [40, 40] else ""),
                 [table], time.perf_counter() - t_all, topic="population-search",
                 notes=("Both methods start from the same initial weights (seed "
                        f"{args.seed}); gradient MAML gets {maml_budget:.0f} s of wall time "
                        f"(ES took {res.seconds:.0f} s) on this 2-core CPU machine, run alone. "
                        "ES scores each worker's share of the population in one call "
                        "(metaphi.meta.evaluate_population; for this one-step ReLU MLP in closed "
                        "form, without autograd or per-task weight copies)."),
                 es={"mse": es_mse, "ci95": es_ci, "evaluations": res.evaluations,
                     "generations": res.generations, "seconds": res.seconds,
                     "inner_lr": es_learner.inner_lr, "average_from": args.average_from,
                     "final_spread": es.spread,
                     "restarts": getattr(es, "restart_log", None),
                     "restart_of": None if prev is None else {
                         k: prev[k] for k in ("generations", "evaluations", "episodes", "seconds",
                                              "spread", "searches")}
                         | {"work": args.restart_from, "chain": len(prev["searches"])},
                     "last_mse": last["es"][1] if tail else es_mse,
                     "weight_norm": {"start": float(np.linalg.norm(phi_vector(base)[:-1])),
                                     "end": float(np.linalg.norm(np.asarray(res.center)[:-1]))},
                     "curve": [[h["generation"], h["mean_fitness"]] for h in res.history[::10]]},
                 maml={"mse": maml_mse, "ci95": maml_ci, "steps": steps, "seconds": maml_s,
                       "last_mse": last["maml"][1] if tail else maml_mse, "curve": curve},
                 ratio=ratio, target_met=met)
    print(f"ES {es_mse:.3f}±{es_ci:.3f} ({res.evaluations} evals, {res.seconds:.0f}s, "
          f"lr {es_learner.inner_lr:.4f}) | MAML {maml_mse:.3f}±{maml_ci:.3f} ({steps} steps) | "
          f"ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
