"""A run on disk: train, test and reload, with everything a user needs in one folder.

Every run, gradient or population, ends with cross-task testing and writes the same folder:
``DIR/config.yaml`` (resolved config), ``metrics.jsonl`` (per step or generation),
``learning_curve.png``, ``checkpoint.pt`` (latest, atomic), ``best.pt`` (the deployed φ) and
``results.json`` (meta-test mean, 95% CI, tasks, metric, seconds, versions). Launched with
``torchrun``, the run is distributed (:mod:`metaphi.loops.distributed`) and rank 0 writes.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..files import clean_stale_temporaries
from ..learners.base import Learner, eval_mode
from ..loops import distributed
from ..loops.checkpoint import (atomic_write_json, atomic_write_text, load_checkpoint, read_log,
                                save_checkpoint)
from ..loops.evaluate import evaluate
from ..loops.train import CHECKPOINT, METRICS, TrainOptions, meta_train
from ..tasks.sources import Splits, fixed_tasks
from .build import build_learner, build_meta_optimizer, build_sources, resolve_device
from .config import (HOW, ConfigError, RunConfig, apply_overrides, dump_config, fingerprint,
                     read_yaml, saved_fingerprint, validate_config)

BEST = "best.pt"


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in ("metaphi", "torch", "numpy"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


# -- the run folder --------------------------------------------------------------------------------
def check_run_dir(cfg: RunConfig, out: Path, resume: bool) -> None:
    """Check, without writing anything, that ``out`` can take this run: a new (or empty) folder
    that can be created and written, or the same run to resume. Cheap: done before any data is
    loaded."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the run")
    if resume:
        if not (out / "config.yaml").exists():
            raise ConfigError(f"--resume: {out} holds no run (no config.yaml); start it without "
                              "--resume")
        saved = read_run_config(out)
        a, b = saved.model_dump(exclude=set(HOW)), cfg.model_dump(exclude=set(HOW))
        if a != b:
            _check_budget_change(saved, cfg, out, a, b)
        # a damaged checkpoint or log is named now, before the folder's config is rewritten
        read_log(out / METRICS, "generation" if cfg.population else "step", checkpoint_step(out))
    elif (out / CHECKPOINT).exists() or (out / "config.yaml").exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it, or choose "
                          "another --out")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, so the run folder cannot be "
                          "created there; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {existing} is not writable; choose a writable folder")


def prepare_run_dir(cfg: RunConfig, out: Path, resume: bool) -> None:
    """Check that ``out`` can take this run (:func:`check_run_dir`), then write its config.
    Nothing in ``out`` changes before the checks pass; temporary files left by killed writes
    (older than :data:`metaphi.files.STALE_SECONDS`) are removed."""
    check_run_dir(cfg, out, resume)
    try:
        out.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(out)
        atomic_write_text(out / "config.yaml", dump_config(cfg))
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write the run folder ({e}); choose a writable "
                          "folder") from None


def _check_budget_change(saved: RunConfig, cfg: RunConfig, out: Path, a: dict, b: dict) -> None:
    changed = sorted(_diff(a, b))
    done = checkpoint_step(out)
    if (changed == ["steps"] and done <= cfg.steps
            and getattr(cfg.meta_optimizer, "schedule", None) != "cosine"):
        # A new budget: tasks and schedule depend on the step only, so going on from the
        # checkpoint equals a run started with that budget (when the checkpoint's step is a
        # multiple of val_every). A smaller budget, down to the checkpoint, finishes early.
        return
    raise ConfigError(
        f"--resume: the config differs from the one saved in {out / 'config.yaml'} (in "
        f"{', '.join(changed)}); resume with the same preset, seed and overrides (only `steps` "
        f"may change: up, to train a run longer, or down to the last checkpoint's step ({done}),"
        " to finish it early; and not with a cosine schedule, which depends on the total; "
        f"{', '.join(HOW)} may change too)")


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two config dumps differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in sorted(set(a) | set(b))
                for p in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def checkpoint_step(out: Path) -> int:
    """Outer steps (or generations) done at the last checkpoint (0 if there is none)."""
    ck = out / CHECKPOINT
    if not ck.exists():
        return 0
    state = load_checkpoint(ck, map_location="cpu")
    if not isinstance(state, dict) or not {"step", "generation"} & state.keys():
        raise ValueError(f"{ck} is not a metaphi checkpoint (it has no step or generation "
                         "count); restore the file written by `metaphi train`, or train the run "
                         "again")
    return int(state.get("step", state.get("generation", 0)))


def read_run_config(run_dir: Path, overrides: list[str] | None = None,
                    data: dict[str, Any] | None = None) -> RunConfig:
    """The config saved in a run folder (with ``overrides``), or a clear error; ``data``: the
    folder's config.yaml already read (:func:`run_config_data`)."""
    data = run_config_data(run_dir) if data is None else data
    return validate_config(apply_overrides(data, overrides or []), base=run_dir)


def run_config_data(run_dir: Path) -> dict[str, Any]:
    """The config data in a run folder's config.yaml, as written, or a clear error."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        what = "does not exist" if not run_dir.exists() else "is not a run folder (no config.yaml)"
        raise FileNotFoundError(f"{run_dir} {what}; pass the --out folder of `metaphi train`")
    data = read_yaml(cfg_path, "the run folder's config is damaged: restore it from the config "
                     "the run was started with (the preset or file and overrides)")
    if not isinstance(data, dict):
        raise ConfigError(f"{cfg_path} is damaged (not a mapping of config fields)")
    return data


# -- training ----------------------------------------------------------------------------------
@dataclass
class Trained:
    """What meta-training hands to cross-task testing: the deployed learner, the config
    overrides that rebuild it, and the run-kind-specific results."""

    learner: Learner
    overrides: dict[str, Any]
    summary: dict[str, Any]
    steps: int
    seconds: float


def train_run(cfg: RunConfig, out_dir: str | Path, resume: bool = False,
              progress: bool = True) -> dict[str, Any]:
    """Meta-train (gradient or population, as the config's meta-optimizer says), meta-test the
    deployed φ, and write the run folder. Returns the results (also in ``results.json``).

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls this; they join one process
    group, split each meta-batch (or generation) and the evaluations, and only rank 0 writes."""
    out = Path(out_dir)
    ctx, device = distributed.init_from_env(resolve_device(cfg.device))
    try:
        distributed.on_main(ctx, lambda: check_run_dir(cfg, out, resume))  # before any data
        splits = build_sources(cfg)  # fails fast on missing data or impossible task shapes
        if not cfg.population:
            ctx.shard(cfg.meta_batch)  # a meta-batch that does not split over the ranks fails here
        distributed.on_main(ctx, lambda: prepare_run_dir(cfg, out, resume))
        trained = (_population(cfg, out, resume, progress) if cfg.population
                   else _gradient(cfg, splits, out, resume, progress, ctx, device))
        return _finish(cfg, splits, out, trained, progress, ctx, device)
    finally:
        distributed.shutdown(ctx)


def _gradient(cfg: RunConfig, splits: Splits, out: Path, resume: bool, progress: bool,
              ctx: distributed.DistContext, device: torch.device) -> Trained:
    learner = build_learner(cfg).to(device)
    opt, sched = build_meta_optimizer(cfg, learner)
    workers = cfg.loader_workers if cfg.loader_workers is not None else int(device.type == "cuda")
    state = meta_train(learner, splits.train, splits.val, opt, sched, out, TrainOptions(
        steps=cfg.steps, meta_batch=cfg.meta_batch, seed=cfg.seed, val_every=cfg.val_every,
        val_tasks=cfg.val_tasks, checkpoint_every=cfg.checkpoint_every,
        clip_grad_norm=cfg.meta_optimizer.clip_grad_norm, resume=resume, device=device,
        loader_workers=workers, progress=progress, max_seconds=cfg.max_seconds), dist=ctx)
    learner.load_state_dict(state.best_params)
    summary = {"meta_val_best": {"value": state.best_value, "step": state.best_step},
               # trainval runs have no meta-validation: φ is the last step's
               "phi_chosen": "best meta-val" if splits.val is not None else "last step"}
    return Trained(learner, {}, summary, state.step, state.seconds)


def _population(cfg: RunConfig, out: Path, resume: bool, progress: bool) -> Trained:
    from .population import population_meta_train, population_summary

    res, learner, overrides = population_meta_train(cfg, out, resume, progress)
    summary = {**population_summary(res), "phi_chosen": "center",
               "deployed_overrides": overrides}
    return Trained(learner, overrides, summary, res.generations, res.seconds)


def _finish(cfg: RunConfig, splits: Splits, out: Path, trained: Trained, progress: bool,
            ctx: distributed.DistContext, device: torch.device) -> dict[str, Any]:
    """Save the deployed φ, plot, meta-test and write results.json."""
    learner = trained.learner.to(device)
    # the deployed φ's evaluation statistics (a no-op for most learners)
    learner.prepare_eval(splits.train, cfg.seed)
    if ctx.is_main:
        save_checkpoint(out / BEST, {"learner": learner.state_dict(), "steps": trained.steps,
                                     "overrides": trained.overrides,
                                     "fingerprint": fingerprint(cfg)})
        _curve(cfg, learner, out)
    t_test = time.perf_counter()
    test = meta_test(learner, splits, cfg.seed, cfg.test_tasks, device, progress and ctx.is_main,
                     dist=ctx)
    results = {
        "name": cfg.name,
        "kind": "population" if cfg.population else "gradient",
        "metric": learner.metric_name,
        "higher_is_better": learner.higher_is_better,
        "meta_test": test_summary(test),
        **trained.summary,
        "steps": trained.steps,
        "train_seconds": round(trained.seconds, 2),
        "test_seconds": round(time.perf_counter() - t_test, 2),
        "device": str(device),
        "seed": cfg.seed,
        "versions": library_versions(),
    }
    if ctx.enabled:
        results["world_size"] = ctx.world_size
    if ctx.is_main:
        _extra_plots(learner, cfg, splits, out, device)
        _domain_plot(results, out / "by_domain.png", cfg.name)
        atomic_write_json(out / "results.json", results)
    return results


def test_summary(test: dict[str, Any]) -> dict[str, Any]:
    """What results.json keeps of a meta-test: mean, CI, std, tasks, loss, and ``by_domain``
    where the tasks name their domains."""
    out = {k: test[k] for k in ("mean", "ci95", "std", "tasks", "loss")}
    if "by_domain" in test:
        out["by_domain"] = test["by_domain"]
    return out


def _domain_plot(results: dict[str, Any], path: Path, title: str) -> None:
    by = results["meta_test"].get("by_domain")
    if by:
        from ..plots.domains import domain_bars

        domain_bars(by, path, results["metric"], title=f"{title}: meta-test by domain")


def _curve(cfg: RunConfig, learner: Learner, out: Path) -> None:
    from ..plots.curves import fitness_curve, learning_curve

    if cfg.population:
        fitness_curve(out / METRICS, out / "learning_curve.png", title=cfg.name)
    else:
        learning_curve(out / METRICS, out / "learning_curve.png", learner.metric_name,
                       title=cfg.name)


def meta_test(learner: Learner, splits: Splits, seed: int, n_tasks: int, device: torch.device,
              progress: bool = True, dist: distributed.DistContext | None = None) -> dict[str, Any]:
    """Cross-task testing on ``n_tasks`` meta-test tasks drawn with ``seed`` (spread over the
    ranks of ``dist``, with the same result on every rank)."""
    if dist is not None and dist.enabled:
        tasks = distributed.fixed_task_block(splits.test, seed, "test", n_tasks, dist)
        return distributed.evaluate_gathered(learner, tasks, dist, device, progress)
    return evaluate(learner, fixed_tasks(splits.test, seed, "test", n_tasks), device,
                    progress=progress, total=n_tasks)


def _extra_plots(learner: Learner, cfg: RunConfig, splits: Splits, out: Path,
                 device: torch.device) -> None:
    if hasattr(splits.test, "curve"):
        from ..plots.regression import sinusoid_fits

        sinusoid_fits(learner, splits.test, cfg.seed, out / "sinusoid_fits.png", device=device)
    elif cfg.info.kind == "classification" and cfg.info.input == "image":
        from ..plots.episodes import plot_episode

        # The first meta-test episode: support, query, predicted labels, mistakes in red.
        task = next(iter(fixed_tasks(splits.test, cfg.seed, "test", 1)))
        with eval_mode(learner), torch.no_grad():
            model = learner.adapt(task.support_x.to(device), task.support_y.to(device))
            pred = model(task.query_x.to(device)).argmax(-1).cpu()
        plot_episode(task, out / "episode.png", predictions=pred,
                     title=f"{cfg.name}: a meta-test episode")


# -- loading and testing -------------------------------------------------------------------------
@dataclass
class RunStatus:
    """Whether a run folder holds a finished run, and which weights :func:`load_run` takes."""

    finished: bool
    weights: str  # "best.pt" or "checkpoint.pt"
    step: int
    note: str


def run_status(run_dir: str | Path) -> RunStatus:
    """A finished run is evaluated with its deployed φ (``best.pt``); an unfinished one (killed,
    or resumed for more steps and not finished) with its last checkpoint's best meta-validated
    φ, which is said in ``note``."""
    run_dir = Path(run_dir)
    best, ck = run_dir / BEST, run_dir / CHECKPOINT
    done = checkpoint_step(run_dir)
    if best.exists():
        best_steps = int(load_checkpoint(best, expect=("learner",)).get("steps", -1))
        if not ck.exists() or best_steps >= done:
            return RunStatus(True, BEST, best_steps, "")
    if not ck.exists():
        raise FileNotFoundError(f"{run_dir} holds neither best.pt nor checkpoint.pt: the run has "
                                "not saved anything yet")
    return RunStatus(False, CHECKPOINT, done,
                     f"{run_dir} is not finished (stopped at step {done}): evaluating its last "
                     "checkpoint; finish it with `metaphi train ... --resume`")


def load_run(run_dir: str | Path, device: str = "cpu", batchnorm: str | None = None,
             overrides: list[str] | None = None,
             fit_running: bool = True) -> tuple[RunConfig, Learner]:
    """The run's config and its learner with the deployed φ (loaded safely, in evaluation
    mode); for an unfinished run, φ from its last checkpoint (see :func:`run_status`).

    ``batchnorm`` ('episode', 'running' or 'support', metric learners only) evaluates the
    saved φ with other BatchNorm statistics than the run used; running statistics missing from
    the run folder are estimated on meta-train episodes (needs the run's data). ``overrides``
    (``key=value``) change what does not touch φ, e.g. the meta-test way and shot.
    ``fit_running=False`` leaves missing running statistics unestimated (the caller estimates
    them, e.g. on a target domain)."""
    run_dir = Path(run_dir)
    extra = [] if batchnorm is None else [f"learner.batchnorm={batchnorm}"]
    data = run_config_data(run_dir)
    read_run_config(run_dir, data=data)  # a clear error for an invalid config, first
    status = run_status(run_dir)
    ck = load_checkpoint(run_dir / status.weights, expect=("learner",))
    stored, own = ck.get("fingerprint"), saved_fingerprint(data)
    if stored is not None and stored != own:
        raise ConfigError(f"{run_dir / status.weights} was written by another run (its config "
                          f"fingerprint {stored} is not this folder's {own}); use the weights "
                          "of this run, or the run folder they came from")
    cfg = read_run_config(run_dir, [*(overrides or []), *extra,
                                    *(f"{k}={v}" for k, v in ck.get("overrides", {}).items())],
                          data)
    state = ck["learner"] if status.weights == BEST else (ck.get("best_params") or ck["learner"])
    learner = build_learner(cfg)
    _load_weights(learner, state, run_dir / status.weights)
    learner = learner.to(resolve_device(device)).eval()
    if (fit_running and getattr(learner, "batchnorm", "episode") == "running"
            and not bool(learner.bn_stats.fitted)):
        learner.prepare_eval(build_sources(cfg).train, cfg.seed)
    return cfg, learner


def _load_weights(learner: Learner, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load φ; running BatchNorm statistics may be missing (estimated later) or unwanted."""
    if getattr(learner, "batchnorm", "episode") != "running":
        state = {k: v for k, v in state.items() if not k.startswith("bn_stats.")}
    try:
        missing, unexpected = learner.load_state_dict(state, strict=False)
    except RuntimeError as e:  # same names, other shapes
        first = str(e).splitlines()[-1].strip()
        raise ConfigError(f"{path} does not fit this run's learner ({first}); it belongs to "
                          "another run") from None
    if unexpected or any(not k.startswith("bn_stats.") for k in missing):
        raise ConfigError(f"{path} does not fit this run's learner (missing "
                          f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}); it "
                          "belongs to another run")


def prepare_test(run_dir: str | Path, device: str = "auto", batchnorm: str | None = None,
                 on: str | None = None, overrides: list[str] | None = None,
                 seed: int | None = None) -> tuple[RunConfig, Learner, Splits, int]:
    """What :func:`test_run` evaluates: ``(config, learner, task sources, seed)`` for the
    run's own tasks (with ``overrides``) or, with ``on``, another source's; BatchNorm
    statistics as ``batchnorm`` says (``target``: estimated here, on the target's images)."""
    from ..tasks.combinators import build_splits
    from .transfer import BATCHNORM_CHOICES, target_options, task_overrides

    if batchnorm is not None and batchnorm not in BATCHNORM_CHOICES:
        raise ConfigError(f"--batchnorm must be one of {BATCHNORM_CHOICES}, got {batchnorm!r}")
    load_bn = "running" if batchnorm == "target" else batchnorm
    # learner options that leave φ alone (e.g. learner.eval_inner_steps) apply either way
    learner_ov = [o for o in overrides or [] if o.startswith("learner.")]
    task_ov = [o for o in overrides or [] if not o.startswith("learner.")]
    own = learner_ov + ([] if on is not None else [f"task.{'.'.join(p)}={json.dumps(v)}"
                                                   for p, v in task_overrides(task_ov)])
    cfg, learner = load_run(run_dir, device, load_bn, own, fit_running=batchnorm != "target")
    splits = build_splits(cfg.task if on is None else target_options(cfg, on, task_ov))
    seed = cfg.seed + 1 if seed is None else seed
    if batchnorm == "target":
        learner.fit_batchnorm(fixed_tasks(splits.test, seed, "batchnorm", learner.batchnorm_tasks))
    return cfg, learner, splits, seed


def test_run(run_dir: str | Path, seed: int | None = None, n_tasks: int | None = None,
             device: str = "auto", progress: bool = True, batchnorm: str | None = None,
             on: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Re-evaluate a saved run on fresh meta-test tasks (a different seed than training's);
    an unfinished run is evaluated from its last checkpoint, and the results say so
    (``finished: false``, ``note``).

    ``on``: evaluate on another task source instead (cross-domain testing; a source name whose
    options are ``overrides`` ``task.<option>=value``, or an image folder; see
    :mod:`metaphi.runs.transfer`); without ``on``, ``overrides`` change the run's own task
    section (e.g. ``task.n_way=20`` for a metric learner). ``learner.<option>=value``
    overrides change learner options that leave φ alone (e.g. ``learner.eval_inner_steps``),
    with or without ``on``. ``batchnorm``: ``episode``,
    ``running`` or ``support`` (see :func:`load_run`), or ``target``: running statistics
    re-estimated on unlabelled images of the tasks' source. Results are written to
    ``RUN_DIR/test_seed<seed>[...].json``, with ``by_domain`` and a ``by_domain`` plot where
    the tasks name domains."""
    from .transfer import target_label

    if n_tasks is not None and n_tasks < 1:
        raise ConfigError(f"--tasks must be >= 1, got {n_tasks}")
    if seed is not None and seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    resolve_device(device)  # a bad --device is an error before anything is loaded
    read_run_config(Path(run_dir))  # a missing or damaged run folder is named first
    status = run_status(run_dir)
    cfg, learner, splits, seed = prepare_test(run_dir, device, batchnorm, on, overrides, seed)
    n = n_tasks or cfg.test_tasks
    t0 = time.perf_counter()
    res = meta_test(learner, splits, seed, n, next(learner.parameters()).device, progress)
    out = {"name": cfg.name, "metric": learner.metric_name, "seed": seed,
           "meta_test": test_summary(res),
           "finished": status.finished, "step": status.step,
           "seconds": round(time.perf_counter() - t0, 2), "versions": library_versions()}
    if on is not None:
        out["on"] = {"source": on, "overrides": list(overrides or [])}
    if status.note:
        out["note"] = status.note
    if batchnorm is not None:
        out["batchnorm"] = batchnorm
    suffix = (f"_on-{target_label(on, overrides)}" if on is not None else "") + (
        f"_{batchnorm}" if batchnorm is not None else "") + (
        "" if status.finished else f"_step{status.step}")
    if on is None and overrides:
        suffix += "_" + target_label("task", overrides).split("-", 1)[-1]
    path = Path(run_dir) / f"test_seed{seed}{suffix}.json"
    try:
        atomic_write_json(path, out)
        _domain_plot(out, path.with_suffix(".png"), cfg.name)
    except OSError as e:  # a read-only run folder: the results are still printed
        print(f"metaphi: warning: {e}", file=sys.stderr)
    out["path"] = str(path)
    return out
