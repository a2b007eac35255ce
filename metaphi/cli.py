"""The ``metaphi`` command."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .runs.config import ConfigError, apply_overrides, dump_config, load_config_file, validate_config


POPULATION = ("es", "cmaes", "reinforce")


def _load(target: str) -> dict:
    from .runs.presets import PRESETS, get_preset

    if target in PRESETS:
        return get_preset(target)
    if Path(target).is_file():
        return load_config_file(target)
    raise ConfigError(f"{target!r} is neither a preset (see `metaphi presets`) nor a config file")


def _resolve_config(target: str, overrides: list[str], seed: int | None, device: str | None,
                    data_dir: str | None):
    data = _load(target)
    extra = list(overrides)
    if seed is not None:
        extra.append(f"seed={seed}")
    if device is not None:
        extra.append(f"device={device}")
    if data_dir is not None:
        extra.append(f"task.data_dir={data_dir}")
    return validate_config(apply_overrides(data, extra))


def cmd_presets(args: argparse.Namespace) -> int:
    from .runs.presets import DESCRIPTIONS, PRESETS

    if args.show:
        print(dump_config(_resolve_config(args.show, [], None, None, None)), end="")
        return 0
    for name, p in PRESETS.items():
        fam = name.split("-")[0]
        lc = p["learner"]
        print(f"{name:32s} {p['steps']:>6d} steps  meta-batch {p['meta_batch']:>3d}  "
              f"inner lr {lc.get('inner_lr', '-')}  {DESCRIPTIONS.get(fam, '')}")
    return 0


def _train_population(args: argparse.Namespace, data: dict) -> int:
    """Population meta-optimizers (ES, CMA-ES, REINFORCE) for what gradients cannot reach."""
    from .loops.checkpoint import atomic_write_json, atomic_write_text
    from .loops.population import population_run
    from .plots.curves import fitness_curve
    from .runs.run import library_versions

    extra = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
    data = apply_overrides(data, extra)
    out = Path(args.out)
    import yaml

    from .loops import distributed as D

    # Under torchrun the ranks join one process group and split each generation's candidates.
    ctx, _ = D.init_from_env("cpu")
    try:
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.yaml", yaml.safe_dump(data, sort_keys=False))
        res = population_run(data, out, resume=args.resume, progress=not args.no_progress)
    finally:
        D.shutdown(ctx)
    if not ctx.is_main:
        return 0
    fitness_curve(out / "metrics.jsonl", out / "learning_curve.png", title=str(out.name))
    small = lambda v: v if isinstance(v, dict) else None  # noqa: E731 (vectors are in checkpoint.pt)
    atomic_write_json(out / "results.json", {
        "meta_optimizer": data["meta_optimizer"], "metric": "meta-validation loss (fitness)",
        "best_fitness": res.best_fitness, "best": small(res.best), "center": small(res.center),
        "generations": res.generations, "evaluations": res.evaluations,
        "seconds": round(res.seconds, 2), "versions": library_versions()})
    print(f"{data['meta_optimizer']}: best fitness {res.best_fitness:.4f} after {res.evaluations} "
          f"evaluations ({res.generations} generations); best {small(res.center) or '(vector)'}; "
          f"run folder {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .runs.run import train_run

    data = _load(args.config)
    if data.get("meta_optimizer") in POPULATION:
        return _train_population(args, data)
    cfg = _resolve_config(args.config, args.overrides, args.seed, args.device, args.data_dir)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.task_threads is not None:
        from .learners import parallel

        parallel.set_default_threads(args.task_threads)
    res = train_run(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports for all
        return 0
    mt = res["meta_test"]
    print(f"{cfg.name}: meta-test {res['metric']} {mt['mean']:.4f} ± {mt['ci95']:.4f} "
          f"(95% CI, {mt['tasks']} tasks); run folder {args.out}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from .runs.run import test_run

    res = test_run(args.run_dir, seed=args.seed, n_tasks=args.tasks, device=args.device or "auto",
                   progress=not args.no_progress, batchnorm=args.batchnorm)
    mt = res["meta_test"]
    print(json.dumps(res, indent=2) if args.json else
          f"{res['name']}: meta-test {res['metric']} {mt['mean']:.4f} ± {mt['ci95']:.4f} "
          f"(95% CI, {mt['tasks']} fresh tasks, seed {res['seed']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metaphi", description="Meta-learning on PyTorch.")
    sub = p.add_subparsers(dest="command", required=True)

    ps = sub.add_parser("presets", help="list named presets")
    ps.add_argument("--show", metavar="NAME", help="print a preset's full config as YAML")
    ps.set_defaults(func=cmd_presets)

    pt = sub.add_parser("train", help="meta-train a preset or config file into a run folder")
    pt.add_argument("config", help="preset name or YAML config file")
    pt.add_argument("overrides", nargs="*", help="field overrides, e.g. steps=2000 learner.inner_lr=0.1")
    pt.add_argument("--out", required=True, help="run folder")
    pt.add_argument("--seed", type=int)
    pt.add_argument("--resume", action="store_true", help="continue the run in --out")
    pt.add_argument("--device", help="auto (GPU if present), cpu, cuda, cuda:1 ...")
    pt.add_argument("--data-dir", help="dataset folder (default: $METAPHI_DATA)")
    pt.add_argument("--threads", type=int, help="CPU threads for PyTorch (1 is fastest for "
                    "small networks such as the sinusoid MLP)")
    pt.add_argument("--task-threads", type=int, help="CPU threads running a meta-batch's tasks "
                    "side by side in the per-task loop (default: one per PyTorch thread; 1: one "
                    "task at a time)")
    pt.add_argument("--no-progress", action="store_true")
    pt.set_defaults(func=cmd_train)

    pe = sub.add_parser("test", help="re-evaluate a saved run on fresh meta-test tasks")
    pe.add_argument("run_dir")
    pe.add_argument("--seed", type=int, help="meta-test task seed (default: the run's seed + 1)")
    pe.add_argument("--tasks", type=int, help="number of meta-test tasks (default: the run's)")
    pe.add_argument("--device")
    pe.add_argument("--batchnorm", choices=["episode", "population"],
                    help="ProtoNet/Matching Networks/R2-D2: evaluate with these BatchNorm "
                         "statistics instead of the run's (population: estimated on meta-train "
                         "episodes if the run has none)")
    pe.add_argument("--json", action="store_true")
    pe.add_argument("--no-progress", action="store_true")
    pe.set_defaults(func=cmd_test)

    for mod in ("metaphi.runs.predict", "metaphi.data.cli", "metaphi.forecasting.cli"):
        try:
            module = __import__(mod, fromlist=["add_parser"])
        except ImportError:
            continue
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides (field=value) may come anywhere on the line, also after options.
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if "=" not in a or a.startswith("-")]
    if bad or (rest and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or rest)}")
    if rest:
        args.overrides = list(args.overrides) + rest
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"metaphi: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
