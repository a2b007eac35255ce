"""A run on disk: train, test and reload, with everything a user needs in one folder.

``DIR/config.yaml`` (resolved config), ``metrics.jsonl`` (per step), ``learning_curve.png``,
``checkpoint.pt`` (latest, atomic), ``best.pt`` (φ with the best meta-validation metric) and
``results.json`` (meta-test mean, 95% CI, tasks, metric, seconds, versions). Launched with
``torchrun``, the run is distributed (:mod:`metaphi.loops.distributed`) and rank 0 writes the folder.
"""
from __future__ import annotations

import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

from ..learners.base import Learner
from ..loops import distributed as D
from ..loops.checkpoint import atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint
from ..loops.evaluate import evaluate
from ..loops.train import build_optimizer, build_schedule, meta_train
from ..tasks.sources import fixed_tasks
from .build import build_learner, build_sources, resolve_device
from .config import ConfigError, RunConfig, apply_overrides, dump_config, validate_config


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in ("metaphi", "torch", "numpy"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def _prepare_dir(cfg: RunConfig, out: Path, resume: bool) -> None:
    cfg_path = out / "config.yaml"
    if resume:
        if not cfg_path.exists():
            raise ConfigError(f"--resume: {out} holds no run (no config.yaml); start it without --resume")
        saved = validate_config(yaml.safe_load(cfg_path.read_text()))
        # where and how the run executes may change on resume; what it computes may not
        how = {"device", "loader_workers"}
        a, b = saved.model_dump(exclude=how), cfg.model_dump(exclude=how)
        if a == b:
            return
        changed = sorted(k for k in a if a[k] != b[k])
        done = _checkpoint_step(out)  # only on this path: an unchanged config never reads it
        if changed == ["steps"] and done <= cfg.steps and cfg.optim.schedule != "cosine":
            # A new budget: tasks and schedule depend on the step only, so going on from the
            # checkpoint equals a run started with that budget (when the checkpoint's step is a
            # multiple of val_every, as the validations then coincide). A smaller budget, down
            # to the checkpoint, finishes a long run early.
            atomic_write_text(cfg_path, dump_config(cfg))
            return
        raise ConfigError(f"--resume: the config differs from the one saved in {cfg_path} "
                          f"(in {', '.join(changed)}); resume with the same preset, seed and "
                          "overrides (only `steps` may change: up, to train a run longer, or "
                          f"down to the last checkpoint's step ({done}), to finish it early; "
                          "and not with a cosine schedule, which depends on the total)")
    if (out / "checkpoint.pt").exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it, or choose "
                          "another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_path, dump_config(cfg))


def _checkpoint_step(out: Path) -> int:
    """Outer steps done at the last checkpoint (0 if there is none)."""
    ck = out / "checkpoint.pt"
    return int(load_checkpoint(ck, map_location="cpu")["step"]) if ck.exists() else 0


def meta_test(learner: Learner, cfg: RunConfig, seed: int, n_tasks: int, device: torch.device,
              progress: bool = True, dist: D.DistContext | None = None) -> dict[str, Any]:
    """Cross-task testing on ``n_tasks`` meta-test tasks drawn with ``seed`` (spread over the
    ranks of ``dist``, with the same result on every rank)."""
    _, _, test_source = build_sources(cfg)
    if dist is not None and dist.enabled:
        return D.evaluate_gathered(learner, D.fixed_task_block(test_source, seed, "test", n_tasks,
                                                               dist), dist, device, progress)
    return evaluate(learner, fixed_tasks(test_source, seed, "test", n_tasks), device,
                    progress=progress, total=n_tasks)


def train_run(cfg: RunConfig, out_dir: str | Path, resume: bool = False,
              progress: bool = True) -> dict[str, Any]:
    """Meta-train, keep the best φ on meta-validation (the last φ when the validation classes
    are meta-trained on), meta-test it, and write the run folder.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls this; they join one process
    group, split each meta-batch and the evaluations, and only rank 0 writes files."""
    ctx, device = D.init_from_env(resolve_device(cfg.device))
    try:
        return _train_run(cfg, Path(out_dir), resume, progress, ctx, device)
    finally:
        D.shutdown(ctx)


def _train_run(cfg: RunConfig, out: Path, resume: bool, progress: bool, ctx: D.DistContext,
               device: torch.device) -> dict[str, Any]:
    sources = build_sources(cfg)  # fails fast on missing data or impossible task shapes
    ctx.shard(cfg.meta_batch)  # a meta-batch that does not split over the ranks fails here
    D.on_main(ctx, lambda: _prepare_dir(cfg, out, resume))
    learner = build_learner(cfg).to(device)
    oc = cfg.optim
    opt = build_optimizer(learner.parameters(), oc.name, oc.lr, oc.weight_decay, oc.momentum)
    sched = build_schedule(opt, oc.schedule, cfg.steps, oc.step_size, oc.gamma)
    state = meta_train(learner, sources[0], sources[1], steps=cfg.steps, meta_batch=cfg.meta_batch,
                       seed=cfg.seed, out_dir=out, optimizer=opt, schedule=sched,
                       clip_grad_norm=oc.clip_grad_norm, val_every=cfg.val_every,
                       val_tasks=cfg.val_tasks, checkpoint_every=cfg.checkpoint_every,
                       resume=resume, device=device, progress=progress, dist=ctx,
                       loader_workers=(cfg.loader_workers if cfg.loader_workers is not None
                                       else int(device.type == "cuda")))
    learner.load_state_dict(state.best_params)
    # the deployed φ's evaluation statistics (a no-op for most learners; for a best-val φ the
    # same values its validation used)
    learner.prepare_eval(sources[0], cfg.seed)
    if ctx.is_main:
        save_checkpoint(out / "best.pt", {"learner": learner.state_dict(), "step": state.best_step,
                                          "val": state.best_value})
        from ..plots.curves import learning_curve

        learning_curve(out / "metrics.jsonl", out / "learning_curve.png", learner.metric_name,
                       title=cfg.name)
    t_test = time.perf_counter()
    test = meta_test(learner, cfg, cfg.seed, cfg.test_tasks, device, progress and ctx.is_main,
                     dist=ctx)
    test_seconds = time.perf_counter() - t_test
    results = {
        "name": cfg.name,
        "metric": learner.metric_name,
        "higher_is_better": learner.higher_is_better,
        "meta_test": {k: test[k] for k in ("mean", "ci95", "std", "tasks", "loss")},
        "meta_val_best": {"value": state.best_value, "step": state.best_step},
        # trainval runs have no meta-validation: φ is the last step's
        "phi_chosen": "best meta-val" if sources[1] is not None else "last step",
        "steps": state.step,
        "train_seconds": round(state.seconds, 2),
        "test_seconds": round(test_seconds, 2),
        "device": str(device),
        "seed": cfg.seed,
        "versions": library_versions(),
    }
    if ctx.enabled:
        results["world_size"] = ctx.world_size
    if ctx.is_main:
        _extra_plots(learner, cfg, out, device)
        atomic_write_json(out / "results.json", results)
    return results


def _extra_plots(learner: Learner, cfg: RunConfig, out: Path, device: torch.device) -> None:
    _, _, test_source = build_sources(cfg)
    if cfg.task.source == "sinusoid":
        from ..plots.regression import sinusoid_fits

        sinusoid_fits(learner, test_source, cfg.seed, out / "sinusoid_fits.png", device=device)
        return
    from ..plots.episodes import plot_episode

    # The first meta-test episode: support, query, predicted labels, mistakes in red.
    task = next(iter(fixed_tasks(test_source, cfg.seed, "test", 1)))
    adapted = learner.adapt(task.support_x.to(device), task.support_y.to(device))
    with torch.no_grad():
        pred = learner.predict(adapted, task.query_x.to(device)).argmax(-1).cpu()
    plot_episode(task, out / "episode.png", predictions=pred,
                 title=f"{cfg.name}: a meta-test episode")


def load_run(run_dir: str | Path, device: str = "cpu", batchnorm: str | None = None,
             overrides: list[str] | None = None) -> tuple[RunConfig, Learner]:
    """The run's config and its learner with the best meta-validated φ (loaded safely).

    ``batchnorm`` ('episode' or 'population', metric learners only) evaluates the saved φ with
    other BatchNorm statistics than the run used; population statistics missing from the run
    folder are estimated on meta-train episodes (needs the run's data). ``overrides``
    (``key=value``) change what does not touch φ, e.g. the meta-test way and shot."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml); pass the --out "
                                "folder of `metaphi train`")
    extra = [] if batchnorm is None else [f"learner.batchnorm={batchnorm}"]
    cfg = validate_config(apply_overrides(yaml.safe_load(cfg_path.read_text()),
                                          [*(overrides or []), *extra]))
    ck_path = run_dir / "best.pt"
    if not ck_path.exists():
        raise FileNotFoundError(f"{run_dir} has no best.pt: the run has not finished; resume it "
                                "with `metaphi train ... --resume`")
    learner = build_learner(cfg)
    state = load_checkpoint(ck_path)["learner"]
    if getattr(learner, "batchnorm", "episode") != "population":
        # evaluated with episode statistics: a population-mode run's saved ones are not needed
        state = {k: v for k, v in state.items() if not k.startswith("population.")}
    # a run made with episode statistics has no population statistics: only those may be missing
    missing, unexpected = learner.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("population.") for k in missing):
        learner.load_state_dict(state)  # raises with PyTorch's message
    learner = learner.to(resolve_device(device))
    if missing:
        learner.prepare_eval(build_sources(cfg)[0], cfg.seed)
    return cfg, learner


def test_run(run_dir: str | Path, seed: int | None = None, n_tasks: int | None = None,
             device: str = "auto", progress: bool = True,
             batchnorm: str | None = None) -> dict[str, Any]:
    """Re-evaluate a saved run on fresh meta-test tasks (a different seed than training's);
    ``batchnorm``: see :func:`load_run`."""
    cfg, learner = load_run(run_dir, device, batchnorm)
    dev = next(learner.parameters()).device
    seed = cfg.seed + 1 if seed is None else seed
    n = n_tasks or cfg.test_tasks
    t0 = time.perf_counter()
    res = meta_test(learner, cfg, seed, n, dev, progress)
    out = {"name": cfg.name, "metric": learner.metric_name, "seed": seed,
           "meta_test": {k: res[k] for k in ("mean", "ci95", "std", "tasks", "loss")},
           "seconds": round(time.perf_counter() - t0, 2), "versions": library_versions()}
    if batchnorm is not None:
        out["batchnorm"] = batchnorm
    suffix = f"_{batchnorm}" if batchnorm is not None else ""
    atomic_write_json(Path(run_dir) / f"test_seed{seed}{suffix}.json", out)
    return out
