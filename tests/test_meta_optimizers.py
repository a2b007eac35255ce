"""Population meta-optimizers: known optima within a fixed budget, seeds, checkpoints, resume,
parallel fitness."""
import json

import numpy as np
import pytest
import torch

from metaphi.loops.checkpoint import load_checkpoint, save_checkpoint
from metaphi.loops.population import PopulationOptions, population_train
from metaphi.meta import (CMAES, REINFORCE, Categorical, FitnessSpec, Float, Int, OpenAIES,
                          PopulationEvaluator, Space, TaskFitness, centered_ranks,
                          evaluate_fitness, evaluate_population, fitness_task_seeds, phi_vector)
from metaphi.registry import META_OPTIMIZERS
from metaphi.runs import validate_config
from metaphi.runs.population import build_population_optimizer, fitness_spec


def make_optimizer(name, x0=None, space=None, seed=0, steps=100, **options):
    """A population meta-optimizer built through the registry, as a run config builds it."""
    entry = META_OPTIMIZERS.get(name)
    return entry.obj(entry.options.model_validate({"name": name, **options}), x0, space, seed,
                     steps)


def train(optimizer, fn, generations, out, **options):
    return population_train(optimizer, fn, out, PopulationOptions(generations, **options))


def sine_spec(learner="maml", hidden=(40, 40), **learner_options):
    """The fitness of a sinusoid K=10 run config (MAML 1-40-40-1 by default)."""
    return fitness_spec(validate_config({
        "task": {"source": "sinusoid", "k_shot": 10, "n_query": 10},
        "model": {"name": "mlp", "hidden": list(hidden)},
        "learner": {"name": learner, "inner_lr": 0.01, **learner_options},
        "meta_optimizer": {"name": "es"}}))

SHIFT = np.array([1.5, -2.0, 0.5, 3.0, -1.0])


def sphere(x, generation=0):
    return float(((np.asarray(x) - SHIFT) ** 2).sum())


def rosenbrock(x, generation=0):
    x = np.asarray(x)
    return float((1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2)


MIXED = Space({"act": Categorical(["relu", "tanh", "gelu", "elu"]),
               "lr": Float(1e-4, 1.0, log=True), "steps": Int(1, 10)})


def mixed_fn(p, generation=0):
    """Optimum: act='tanh', lr=1e-2, steps=7 (value 0)."""
    return ({"relu": 1.0, "tanh": 0.0, "gelu": 2.0, "elu": 1.5}[p["act"]]
            + (np.log10(p["lr"]) + 2) ** 2 + 0.1 * (p["steps"] - 7) ** 2)


def run(opt, fn, gens):
    for _ in range(gens):
        c = opt.ask()
        opt.tell(c, [fn(x) for x in c])
    return opt


def test_centered_ranks():
    u = centered_ranks(np.array([3.0, 1.0, 2.0, 2.0]))
    assert u.tolist() == [0.5, -0.5, 0.0, 0.0]


def test_openai_es_sphere_within_budget():
    es = run(OpenAIES(x0=np.zeros(5), sigma=0.1, lr=0.1, popsize=20, seed=0), sphere, 200)
    assert sphere(es.center) < 1e-2
    assert es.evaluations == 4000 and es.generation == 200
    # antithetic pairs are symmetric around the mean
    c = es.ask()
    np.testing.assert_allclose((c[0] + c[1]) / 2, es.mean, atol=1e-12)


def test_openai_es_on_a_space():
    space = Space({"lr": Float(1e-4, 1.0, log=True), "x": Float(-2.0, 2.0)})
    fn = lambda p: (np.log10(p["lr"]) + 3) ** 2 + (p["x"] - 1.2) ** 2  # noqa: E731
    es = run(OpenAIES(space=space, sigma=0.05, lr=0.05, popsize=10, seed=1), fn, 150)
    assert es.center["lr"] == pytest.approx(1e-3, rel=0.1)
    assert es.center["x"] == pytest.approx(1.2, abs=0.05)


def test_openai_es_cosine_schedule_and_raw_differences():
    es = OpenAIES(x0=np.zeros(5), sigma=0.1, lr=0.1, popsize=20, seed=0, shaping="none",
                  schedule="cosine", horizon=200, lr_final=0.01, sigma_final=0.01)
    assert es.current_lr == pytest.approx(0.1) and es.current_sigma == pytest.approx(0.1)
    run(es, sphere, 100)
    assert es.current_lr == pytest.approx((0.1 + 0.001) / 2)
    assert es.current_sigma == pytest.approx((0.1 + 0.01) / 2)
    run(es, sphere, 100)
    assert es.current_lr == pytest.approx(0.001) and es.current_sigma == pytest.approx(0.01)
    # annealed steps settle far closer to the optimum than the constant-rate ranked search
    constant = run(OpenAIES(x0=np.zeros(5), sigma=0.1, lr=0.1, popsize=20, seed=0), sphere, 200)
    assert sphere(es.center) < 1e-4 < sphere(constant.center)
    # the antithetic pair of candidates uses the generation's annealed sigma
    c = es.ask()
    np.testing.assert_allclose(np.abs(c[0] - es.mean).max(), np.abs(c[1] - es.mean).max())


def test_openai_es_anchor_stops_the_random_walk_of_unseen_coordinates():
    def f(x):  # only the first two of 40 coordinates matter
        return float((x[0] - 1.0) ** 2 + (x[1] + 0.5) ** 2)

    flat = {}
    for anchor in (0.0, 0.1):
        es = run(OpenAIES(x0=np.zeros(40), sigma=0.1, lr=0.05, popsize=10, seed=0,
                          shaping="none", anchor=anchor), f, 2000)
        np.testing.assert_allclose(es.mean[:2], [1.0, -0.5], atol=0.01)
        flat[anchor] = np.linalg.norm(es.mean[2:])
    assert flat[0.1] < 0.5 * flat[0.0]  # without the anchor the noise walks them away from x0


def test_cmaes_rosenbrock_within_budget():
    cma = run(CMAES(x0=np.zeros(2), sigma=0.5, seed=0), rosenbrock, 150)
    x, f = cma.best
    assert f < 1e-6 and np.allclose(x, [1.0, 1.0], atol=1e-3)


def test_sep_cmaes_learns_per_coordinate_scales():
    # separable ellipsoid, condition 1e4: the diagonal covariance is all there is to learn, so
    # sep-CMA-ES gets there in fewer generations than the full covariance
    def ellipsoid(x):
        x = np.asarray(x)
        return float(np.sum(10 ** (4 * np.arange(len(x)) / (len(x) - 1)) * (x - 1) ** 2))

    sep = run(CMAES(x0=np.zeros(30), sigma=0.5, seed=0, diagonal=True), ellipsoid, 600)
    full = run(CMAES(x0=np.zeros(30), sigma=0.5, seed=0), ellipsoid, 600)
    assert type(sep._cma).__name__ == "SepCMA"
    assert sep.best[1] < 1e-7 < full.best[1]
    np.testing.assert_allclose(sep.best[0], np.ones(30), atol=1e-3)


def rastrigin(x, generation=0):
    x = np.asarray(x)
    return float(10 * len(x) + np.sum(x * x - 10 * np.cos(2 * np.pi * x)))


def run_evals(opt, fn, budget):
    while opt.evaluations < budget:
        c = opt.ask()
        opt.tell(c, [fn(x) for x in c])
    return opt


def test_ipop_restarts_find_the_global_optimum_that_one_search_misses():
    # Rastrigin in 4-D from x0 = 3: a CMA-ES search with a small population ends in a local
    # minimum; IPOP restarts it from x0 with a doubled population each time, at the same
    # budget of fitness evaluations
    one, ipop = [], []
    for seed in range(4):
        make = lambda r: CMAES(x0=np.full(4, 3.0), sigma=2.0, popsize=6, seed=seed,  # noqa: E731
                               restarts=r, restart_at="x0")
        one.append(run_evals(make(0), rastrigin, 20000).best[1])
        es = run_evals(make(9), rastrigin, 20000)
        ipop.append(es.best[1])
        log = es.restart_log
        assert [r["popsize"] for r in log] == [6 * 2 ** (k + 1) for k in range(len(log))]
        assert len(log) >= 3 and all(r["reason"] == "stopped" for r in log)
        assert es.evaluations == sum(len(h) for h in es.history)
    assert min(one) > 0.9  # every single search is stuck in a local minimum
    assert sum(f < 1e-6 for f in ipop) >= 3 and np.mean(ipop) < np.mean(one) / 4


def test_ipop_stall_and_spread_triggers_and_center_restarts():
    # a fitness that x cannot improve: the median of a window's second half is no lower than
    # its first half's, so the search is declared stalled after stall_generations
    noise = lambda x, g: float(np.random.default_rng(g).normal())  # noqa: E731
    # built the way a `metaphi train` config builds it (optimizer: {restarts: 2, ...})
    es = make_optimizer("cmaes", x0=np.zeros(3), seed=0, sigma=0.5, popsize=8, restarts=2,
                        stall_generations=20)
    g = 0
    while len(es.restart_log) < 2 and g < 400:
        c = es.ask()
        es.tell(c, [noise(x, g) for x in c])
        g += 1
    assert [r["reason"] for r in es.restart_log] == ["stalled", "stalled"]
    assert es.restart_log[0]["generation"] >= 20
    assert [r["popsize"] for r in es.restart_log] == [16, 32] and es.popsize == 32
    # at most `restarts` restarts
    for g in range(g, g + 200):
        c = es.ask()
        es.tell(c, [noise(x, g) for x in c])
    assert len(es.restart_log) == 2
    # min_spread: a converging sphere search restarts at its center with the initial sigma
    es = CMAES(x0=np.zeros(5), sigma=0.5, seed=0, diagonal=True, restarts=1, min_spread=1e-3)
    mean_before = None
    for _ in range(300):
        mean_before = np.array(es._cma.mean)
        run(es, sphere, 1)
        if es.restart_log:
            break
    assert es.restart_log[0]["reason"] == "spread" and es.spread < 1e-3
    np.testing.assert_allclose(es._runs[1]["x0"], es.center)  # restarted where it was
    assert sphere(es.center) < 1e-4 and np.linalg.norm(es.center - mean_before) < 1e-2
    c = es.ask()
    assert 0.2 < np.median(np.std(c, axis=0)) < 1.0  # the initial step size again
    with pytest.raises(ValueError, match="restarts must be an integer"):
        CMAES(x0=np.zeros(2), restarts=-1)
    with pytest.raises(ValueError, match="popsize_growth"):
        CMAES(x0=np.zeros(2), popsize_growth=0.5)
    with pytest.raises(ValueError, match="restart_at"):
        CMAES(x0=np.zeros(2), restart_at="random")
    with pytest.raises(ValueError, match="stall_generations"):
        CMAES(x0=np.zeros(2), stall_generations=3)
    with pytest.raises(ValueError, match="min_spread"):
        CMAES(x0=np.zeros(2), min_spread=0.0)


def test_ipop_resume_is_exact_across_restarts(tmp_path):
    make = lambda: CMAES(x0=np.full(4, 3.0), sigma=2.0, popsize=6, seed=1,  # noqa: E731
                         restarts=5, restart_at="x0")
    straight = run(make(), rastrigin, 500)
    assert len(straight.restart_log) >= 2
    part = run(make(), rastrigin, 300)
    assert part.restart_log  # the checkpoint lies after a restart
    save_checkpoint(tmp_path / "s.pt", {"opt": part.state_dict()})
    resumed = make()
    resumed.load_state_dict(load_checkpoint(tmp_path / "s.pt")["opt"])
    assert resumed.popsize == part.popsize and resumed.restart_log == part.restart_log
    run(resumed, rastrigin, 200)
    assert resumed.history == straight.history and resumed.restart_log == straight.restart_log
    np.testing.assert_array_equal(resumed.center, straight.center)
    assert resumed.best[1] == straight.best[1]
    with pytest.raises(ValueError, match="restart settings"):
        CMAES(x0=np.full(4, 3.0), sigma=2.0, popsize=6, seed=1, restarts=4,
              restart_at="x0").load_state_dict(part.state_dict())
    # population_train logs the population size, which grows at each restart
    train(make(), rastrigin, 400, tmp_path / "run", workers=0, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["popsize"] == 6 and rows[-1]["popsize"] > 6
    from metaphi.plots.curves import fitness_curve  # draws the restarts as dotted lines

    assert fitness_curve(tmp_path / "run" / "metrics.jsonl", tmp_path / "c.png").is_file()


def test_cmaes_bounded_space():
    space = Space({"lr": Float(1e-4, 1.0, log=True), "w": Int(8, 256)})
    fn = lambda p: (np.log10(p["lr"]) + 2.5) ** 2 + ((p["w"] - 100) / 50) ** 2  # noqa: E731
    cma = run(CMAES(space=space, sigma=0.2, seed=0), fn, 60)
    best, f = cma.best
    assert best["w"] == pytest.approx(100, abs=3) and best["lr"] == pytest.approx(10 ** -2.5, rel=0.1)


def test_reinforce_bandit_best_arm():
    arms = [0.3, 0.9, 0.5, 0.1, 0.6]  # arm 3 has the lowest expected loss
    space = Space({"arm": Categorical(list(range(5)))})
    rng = np.random.default_rng(123)
    rf = REINFORCE(space, popsize=16, lr=0.1, seed=0)
    for _ in range(80):
        c = rf.ask()
        rf.tell(c, [arms[x["arm"]] + 0.2 * rng.standard_normal() for x in c])
    assert rf.center == {"arm": 3}
    assert rf.probabilities()["arm"]["3"] > 0.8


def test_reinforce_mixed_space_optimum():
    rf = run(REINFORCE(MIXED, popsize=16, lr=0.1, seed=0), mixed_fn, 150)
    c = rf.center
    assert c["act"] == "tanh" and c["steps"] == 7 and abs(np.log10(c["lr"]) + 2) < 0.35
    assert mixed_fn(c) < 0.1


@pytest.mark.parametrize("make, fn", [
    (lambda s: OpenAIES(x0=np.zeros(5), sigma=0.1, lr=0.1, popsize=8, seed=s), sphere),
    (lambda s: CMAES(x0=np.zeros(2), sigma=0.5, seed=s), rosenbrock),
    (lambda s: REINFORCE(MIXED, popsize=8, seed=s), mixed_fn),
])
def test_seed_makes_search_reproducible(make, fn):
    a, b, c = run(make(7), fn, 10), run(make(7), fn, 10), run(make(8), fn, 10)
    assert repr(a.ask()) == repr(b.ask()) and a.best[1] == b.best[1]
    assert repr(a.ask()) != repr(c.ask())


@pytest.mark.parametrize("make, fn", [
    (lambda: OpenAIES(x0=np.zeros(5), sigma=0.1, lr=0.1, popsize=8, seed=3), sphere),
    (lambda: OpenAIES(x0=np.zeros(5), sigma=0.1, lr=0.1, popsize=8, seed=3, shaping="none",
                      schedule="cosine", horizon=12, sigma_final=0.02), sphere),
    (lambda: CMAES(x0=np.zeros(2), sigma=0.5, seed=3), rosenbrock),
    (lambda: CMAES(x0=np.zeros(5), sigma=0.5, seed=3, diagonal=True), sphere),
    (lambda: REINFORCE(MIXED, popsize=8, seed=3), mixed_fn),
])
def test_state_dict_checkpoint_resume_is_exact(tmp_path, make, fn):
    straight = run(make(), fn, 12)
    first = run(make(), fn, 5)
    save_checkpoint(tmp_path / "opt.pt", {"optimizer": first.state_dict()})
    resumed = make()
    resumed.load_state_dict(load_checkpoint(tmp_path / "opt.pt")["optimizer"])  # weights_only
    run(resumed, fn, 7)
    assert repr(resumed.ask()) == repr(straight.ask())
    assert resumed.best[1] == straight.best[1] and repr(resumed.center) == repr(straight.center)


def test_load_state_dict_refuses_other_settings():
    s = OpenAIES(x0=np.zeros(3), popsize=4, seed=0).state_dict()
    with pytest.raises(ValueError, match="seed"):
        OpenAIES(x0=np.zeros(3), popsize=4, seed=1).load_state_dict(s)
    with pytest.raises(ValueError, match="dimension"):
        OpenAIES(x0=np.zeros(4), popsize=4, seed=0).load_state_dict(s)
    with pytest.raises(ValueError, match="cmaes"):
        OpenAIES(x0=np.zeros(3), popsize=4, seed=0).load_state_dict(
            CMAES(x0=np.zeros(3), seed=0).state_dict())
    with pytest.raises(ValueError, match="diagonal"):
        CMAES(x0=np.zeros(3), seed=0).load_state_dict(
            CMAES(x0=np.zeros(3), seed=0, diagonal=True).state_dict())


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="even number"):
        OpenAIES(x0=np.zeros(2), popsize=5)
    with pytest.raises(ValueError, match="use REINFORCE"):
        OpenAIES(space=MIXED)
    with pytest.raises(ValueError, match="needs x0"):
        CMAES()
    with pytest.raises(ValueError, match="one fitness per candidate"):
        es = OpenAIES(x0=np.zeros(2), popsize=4)
        es.tell(es.ask(), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="every candidate's fitness is NaN"):
        es = OpenAIES(x0=np.zeros(2), popsize=2)
        es.tell(es.ask(), [float("nan")] * 2)
    with pytest.raises(ValueError, match="needs horizon"):
        OpenAIES(x0=np.zeros(2), schedule="cosine")
    with pytest.raises(ValueError, match="anchor must be"):
        OpenAIES(x0=np.zeros(2), anchor=-1.0)
    with pytest.raises(ValueError, match="shaping must be"):
        OpenAIES(x0=np.zeros(2), shaping="fitness")
    with pytest.raises(ValueError, match="schedule"):
        OpenAIES(x0=np.zeros(2), popsize=4).load_state_dict(
            OpenAIES(x0=np.zeros(2), popsize=4, schedule="cosine", horizon=5).state_dict())
    with pytest.raises(KeyError, match="unknown meta-optimizer 'pso'"):
        META_OPTIMIZERS.get("pso")


def test_non_finite_fitness_ranks_last():
    es = OpenAIES(x0=np.zeros(2), sigma=0.1, lr=0.1, popsize=4, seed=0)
    c = es.ask()
    es.tell(c, [1.0, float("nan"), 2.0, float("inf")])
    assert np.isfinite(es.mean).all() and es.best[1] == 1.0


def test_spread_is_the_step_size_the_search_takes(tmp_path):
    # OpenAI-ES samples x ± σε: the RMS distance of 1000 pairs from the center is σ·RMS(ε) ≈ σ
    es = OpenAIES(x0=np.zeros(5), sigma=0.1, lr=0.1, popsize=2000, seed=0)
    assert es.spread is None
    run(es, sphere, 1)
    assert es.spread == pytest.approx(0.1, rel=0.05)
    # CMA-ES converging on a sphere shrinks its step size by orders of magnitude
    cma = CMAES(x0=np.zeros(5), sigma=0.5, seed=0, diagonal=True)
    run(cma, sphere, 1)
    first = cma.spread
    assert 0.2 < first < 1.0
    run(cma, sphere, 200)
    assert cma.spread < first / 100
    # logged per generation, and restored by a resume (CMA-ES replays its generations)
    res = train(CMAES(x0=np.zeros(5), sigma=0.5, seed=0), sphere, 4, tmp_path / "a",
                           workers=0, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["spread"] > 0 for r in rows) and len(res.history) == 4
    again = CMAES(x0=np.zeros(5), sigma=0.5, seed=0)
    again.load_state_dict(load_checkpoint(tmp_path / "a" / "checkpoint.pt")["optimizer"])
    assert again.spread == rows[-1]["spread"]
    # the run's fitness curve draws it on a log axis beside the fitness
    from metaphi.plots.curves import fitness_curve

    png = fitness_curve(tmp_path / "a" / "metrics.jsonl", tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # REINFORCE has no search center
    assert REINFORCE(MIXED, seed=0).spread is None


def test_population_train_resume_equals_straight_run(tmp_path):
    make = lambda: OpenAIES(x0=np.zeros(5), sigma=0.1, lr=0.1, popsize=8, seed=0)  # noqa: E731
    straight = train(make(), sphere, 6, tmp_path / "a", workers=0, progress=False)
    train(make(), sphere, 3, tmp_path / "b", workers=0, progress=False)
    resumed = train(make(), sphere, 6, tmp_path / "b", resume=True, workers=0,
                               progress=False)
    assert resumed.best_fitness == straight.best_fitness
    np.testing.assert_array_equal(resumed.center, straight.center)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == list(range(6))
    straight_rows = [json.loads(line) for line in
                     (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["best_fitness"] for r in rows] == [r["best_fitness"] for r in straight_rows]
    assert rows[-1]["evaluations"] == 48
    ck = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ck["generation"] == 6
    with pytest.raises(FileExistsError, match="resume=True"):
        train(make(), sphere, 6, tmp_path / "b", workers=0, progress=False)
    with pytest.raises(ValueError, match="same settings"):
        train(make(), sphere, 9, tmp_path / "b", resume=True, workers=0,
                         progress=False, config={"other": 1})


def noisy_sphere(x, generation=0):
    # the same noisy shift for every candidate of a generation (common random numbers)
    shift = SHIFT + np.random.default_rng(generation).normal(0.0, 0.3, np.shape(x))
    return float(((np.asarray(x) - shift) ** 2).sum())


def test_tail_average_of_the_center_is_the_mean_of_the_centers_and_resumes(tmp_path):
    make = lambda: OpenAIES(x0=np.zeros(5), sigma=0.1, lr=0.05, popsize=8, seed=0)  # noqa: E731
    es, centers = make(), []
    res = train(es, noisy_sphere, 400, tmp_path / "a", workers=0, progress=False,
                           average_from=200,
                           on_generation=lambda row: centers.append(es.center.copy()))
    np.testing.assert_allclose(res.center_average, np.mean(centers[200:], axis=0), rtol=1e-12)
    # noise makes the last center wander around the optimum; the average lies closer to it
    assert np.linalg.norm(res.center_average - SHIFT) < 0.7 * np.linalg.norm(res.center - SHIFT)
    train(make(), noisy_sphere, 300, tmp_path / "b", workers=0, progress=False,
                     average_from=200)
    resumed = train(make(), noisy_sphere, 400, tmp_path / "b", resume=True,
                               workers=0, progress=False, average_from=200)
    np.testing.assert_array_equal(resumed.center_average, res.center_average)
    with pytest.raises(ValueError, match="average_from=200, this run has None"):
        train(make(), noisy_sphere, 500, tmp_path / "b", resume=True, workers=0,
                         progress=False)
    with pytest.raises(ValueError, match="average_from must be a generation"):
        train(make(), sphere, 5, tmp_path / "c", workers=0, progress=False,
                         average_from=5)
    assert train(make(), sphere, 3, tmp_path / "d", workers=0,
                            progress=False).center_average is None


def test_population_run_killed_between_checkpoints_resumes_exactly(tmp_path):
    make = lambda: OpenAIES(x0=np.zeros(5), sigma=0.1, lr=0.1, popsize=8, seed=0)  # noqa: E731
    straight = train(make(), sphere, 6, tmp_path / "a", workers=0, progress=False)

    def crash(row):
        if row["generation"] == 4:
            raise KeyboardInterrupt

    train(make(), sphere, 2, tmp_path / "b", workers=0, progress=False)
    with pytest.raises(KeyboardInterrupt):  # no checkpoint after generation 2: it is replayed
        train(make(), sphere, 6, tmp_path / "b", resume=True, workers=0,
                         progress=False, checkpoint_seconds=1e9, on_generation=crash)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["generation"] == 2
    resumed = train(make(), sphere, 6, tmp_path / "b", resume=True, workers=0,
                               progress=False, checkpoint_seconds=1e9)
    np.testing.assert_array_equal(resumed.center, straight.center)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == list(range(6))


SPEC = sine_spec()  # sinusoid K=10, MAML 1-40-40-1


def test_evaluate_fitness_is_pure_and_uses_the_tasks():
    phi = phi_vector(SPEC.make_learner(None))
    seeds = fitness_task_seeds(0, 0, 5)
    f1 = evaluate_fitness(phi, seeds, SPEC)
    torch.manual_seed(999)
    np.random.seed(999)
    assert evaluate_fitness(phi, seeds, SPEC) == f1  # no dependence on global RNG state
    assert evaluate_fitness(phi, fitness_task_seeds(0, 1, 5), SPEC) != f1
    phi2 = phi.copy()
    phi2[-1] = np.log(0.05)  # a larger inner lr changes the score
    assert evaluate_fitness(phi2, seeds, SPEC) != f1
    with pytest.raises(ValueError, match="the learner needs 1762"):
        evaluate_fitness(phi[:-2], seeds, SPEC)


@pytest.mark.parametrize("learner", ["maml", "anil", "metasgd"])
def test_evaluate_population_equals_one_candidate_at_a_time(learner):
    spec = sine_spec(learner, inner_steps=2)
    base = phi_vector(spec.make_learner(None))
    rng = np.random.default_rng(0)
    phis = [base + 0.05 * rng.standard_normal(base.shape) for _ in range(4)]
    phis[1][-1] = np.log(0.05)  # candidates differ in their inner lr too
    seeds = fitness_task_seeds(0, 3, 6)
    together = evaluate_population(phis, seeds, spec)
    alone = [evaluate_fitness(p, seeds, spec) for p in phis]
    np.testing.assert_allclose(together, alone, rtol=2e-5)
    assert len(set(together)) == 4
    with pytest.raises(ValueError, match="the learner needs"):
        evaluate_population([p[:-2] for p in phis], seeds, spec)


@pytest.mark.parametrize("learner, hidden, closed_form, chunk", [
    ("maml", [40, 40], True, False), ("maml", [40, 40], True, True),
    ("fomaml", [16, 8, 12], True, False), ("anil", [40, 40], False, False)])
def test_one_step_mlp_fitness_in_closed_form(monkeypatch, learner, hidden, closed_form, chunk):
    """One inner SGD step of a ReLU MLP on MSE is scored without autograd (kernel form); the
    numbers equal the autograd episodes, and other learners keep the autograd path. With
    ``chunk`` a small cache budget scores the candidates two at a time, with the same numbers."""
    import metaphi.meta.batched_fitness as fitness_mod

    if chunk:  # 9 tasks x 10 points x width 40 per candidate: 2 candidates per chunk
        monkeypatch.setattr(fitness_mod, "_CHUNK_ELEMENTS", 2 * 9 * 10 * 40)

    spec = sine_spec(learner, hidden)
    base = phi_vector(spec.make_learner(None))
    rng = np.random.default_rng(1)
    phis = [base + 0.1 * rng.standard_normal(base.shape) for _ in range(5)]
    phis[2][-1] = np.log(0.04)
    seeds = fitness_task_seeds(0, 7, 9)
    calls = []
    real = fitness_mod._one_step_mlp_losses
    monkeypatch.setattr(fitness_mod, "_one_step_mlp_losses",
                        lambda *a: calls.append(1) or real(*a))
    together = evaluate_population(phis, seeds, spec)
    assert len(calls) == (0 if not closed_form else 3 if chunk else 1)
    alone = [evaluate_fitness(p, seeds, spec) for p in phis]  # autograd episodes
    np.testing.assert_allclose(together, alone, rtol=2e-5)
    assert len(set(together)) == 5


def test_population_evaluator_uses_the_batched_fitness_in_workers():
    fitness = TaskFitness(SPEC, n_tasks=4, seed=0)
    base = phi_vector(SPEC.make_learner(None))
    phis = [base + 0.01 * i for i in range(5)]
    with PopulationEvaluator(fitness, workers=0) as serial:
        a = serial(phis, 2)
    with PopulationEvaluator(fitness, workers=2) as parallel:
        b = parallel(phis, 2)
    assert a == b
    np.testing.assert_allclose(a, [fitness(p, 2) for p in phis], rtol=2e-5)


def test_task_fitness_more_tasks_later():
    fit = TaskFitness(SPEC, n_tasks=2, seed=0, more_tasks=((3, 5), (6, 9)))
    assert [fit.tasks_at(g) for g in (0, 2, 3, 5, 6, 100)] == [2, 2, 5, 5, 9, 9]
    assert len(fit.task_seeds(4)) == 5
    phi = phi_vector(SPEC.make_learner(None))
    # generation 4 is scored on its 5 tasks: the mean of their per-task fitnesses
    per_task = [evaluate_fitness(phi, [s], SPEC) for s in fit.task_seeds(4)]
    assert fit(phi, 4) == pytest.approx(np.mean(per_task), rel=1e-5)
    for bad in (((3, 5), (3, 9)), ((5, 5), (3, 9)), ((-1, 5),), ((3, 0),)):
        with pytest.raises(ValueError, match="more_tasks|task counts"):
            TaskFitness(SPEC, n_tasks=2, more_tasks=bad)


def test_hyper_fitness_trains_the_configuration():
    base = validate_config({"task": {"source": "sinusoid"}, "learner": {"name": "maml"},
                            "meta_optimizer": {"name": "reinforce"}, "fitness": {
                                "phi": "hyper", "train_steps": 3, "train_meta_batch": 2},
                            "space": {"learner.inner_lr": {"type": "float", "low": 0.01,
                                                           "high": 0.1}}})
    spec = fitness_spec(base)
    untrained_spec = fitness_spec(base.model_copy(update={"fitness": base.fitness.model_copy(
        update={"train_steps": 0})}))
    seeds = fitness_task_seeds(0, 0, 3)
    phi = {"learner.inner_steps": 2, "learner.inner_lr": 0.02, "model.hidden": [20, 20]}
    f = evaluate_fitness(phi, seeds, spec)
    assert np.isfinite(f) and f != evaluate_fitness(phi, seeds, untrained_spec)
    with pytest.raises(Exception, match="dropout"):
        evaluate_fitness({"learner.dropout": 0.1}, seeds, spec)
    with pytest.raises(ValueError, match="phi='hyper' only"):
        FitnessSpec(SPEC.make_learner, SPEC.source, phi="vector", train_steps=5)


def test_parallel_and_serial_fitness_are_identical():
    es = OpenAIES(x0=phi_vector(SPEC.make_learner(None)), sigma=0.02, popsize=4, seed=0)
    cands = es.ask()
    fit = TaskFitness(SPEC, n_tasks=4, seed=0)
    with PopulationEvaluator(fit, workers=0) as serial:
        a = serial(cands, 2)
    with PopulationEvaluator(fit, workers=2) as parallel:
        b = parallel(cands, 2)
    assert a == b and len(set(a)) == 4


def test_batched_fitness_equals_per_task_episodes():
    learner = SPEC.make_learner(None).eval()
    seeds = fitness_task_seeds(0, 0, 6)
    per_task = np.mean([float(learner.episode(SPEC.source.sample(np.random.default_rng(s)))[0])
                        for s in seeds])
    assert evaluate_fitness(phi_vector(learner), seeds, SPEC) == pytest.approx(per_task, rel=1e-5)


def test_population_optimizer_from_config():
    sine = {"task": {"source": "sinusoid"}, "learner": {"name": "maml"}}
    es = build_population_optimizer(validate_config(
        {**sine, "meta_optimizer": {"name": "es", "popsize": 4}}))
    assert es.dim == 1762  # the MAML paper's 1-40-40-1 network and log inner lr
    es = build_population_optimizer(validate_config(
        {**sine, "steps": 7, "meta_optimizer": {"name": "es", "popsize": 4, "schedule": "cosine"}}))
    assert es.horizon == 7  # a cosine schedule anneals over the run's generations
    from metaphi.runs import ConfigError

    with pytest.raises(ConfigError, match=r"meta_optimizer\.momentum: 'reinforce' has no option"):
        validate_config({**sine, "meta_optimizer": {"name": "reinforce", "momentum": 0.9}})
    with pytest.raises(ConfigError, match=r"fitness\.phi: 'hyper' searches config settings"):
        validate_config({**sine, "meta_optimizer": {"name": "es"}, "fitness": {"phi": "hyper"}})
    with pytest.raises(ConfigError, match=r"space entry 'learner.inner_lr'"):
        validate_config({**sine, "meta_optimizer": {"name": "reinforce"},
                         "fitness": {"phi": "hyper"},
                         "space": {"learner.inner_lr": {"type": "float", "low": 1}}})


def test_parallel_fitness_needs_a_picklable_function():
    with pytest.raises(ValueError, match="picklable fitness function"):
        PopulationEvaluator(lambda phi, g: 0.0, workers=2)
