"""The ``metaphi`` command: parses the command line and dispatches; the work is in
:mod:`metaphi.runs` (train, test, predict), :mod:`metaphi.data` and :mod:`metaphi.forecasting`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from .data.download import DownloadError
from .files import WriteError
from .loops.checkpoint import strict_json
from .runs.config import (ConfigError, apply_overrides, dump_config, load_config_file,
                          validate_config)


def _load(target: str) -> tuple[dict, Path | None]:
    """Config data of a preset name or a YAML file (and the folder of that file)."""
    from .runs.presets import PRESETS, get_preset

    if target in PRESETS:
        return get_preset(target), None
    if Path(target).is_file():
        return load_config_file(target), Path(target).resolve().parent
    if Path(target).is_dir():
        raise ConfigError(f"config file {target} is a folder; give a YAML file or a preset name")
    if target.endswith((".yaml", ".yml")):
        raise ConfigError(f"config file {target} does not exist")
    return get_preset(target), None  # raises with the closest preset names


def resolve_config(target: str, overrides: list[str], seed: int | None = None,
                   device: str | None = None, data_dir: str | None = None):
    """A validated run config from a preset or file plus command-line overrides."""
    data, base = _load(target)
    extra = list(overrides)
    # (option values are strings: quoted, so that a path like `a: b` or `yes` stays a string)
    if seed is not None:
        extra.append(f"seed={seed}")
    if device is not None:
        extra.append(f"device={json.dumps(device)}")
    if data_dir is not None:
        extra.append(f"task.data_dir={json.dumps(data_dir)}")
    return validate_config(apply_overrides(data, extra), base=base)


def cmd_presets(args: argparse.Namespace) -> int:
    from .runs.presets import DESCRIPTIONS, PRESETS

    if args.show:
        print(dump_config(resolve_config(args.show, [])), end="")
        return 0
    for name, p in PRESETS.items():
        lc = p["learner"]
        print(f"{name:32s} {p['steps']:>6d} steps  meta-batch {p['meta_batch']:>3d}  "
              f"inner lr {lc.get('inner_lr', '-')}  {DESCRIPTIONS.get(name, '')}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Registered learners, task sources, backbones and meta-optimizers with their options."""
    from .registry import AUGMENTATIONS, BACKBONES, LEARNERS, META_OPTIMIZERS, SOURCES

    registries = {"learners": LEARNERS, "sources": SOURCES, "backbones": BACKBONES,
                  "meta-optimizers": META_OPTIMIZERS, "augmentations": AUGMENTATIONS}
    for title, reg in registries.items():
        if args.what not in (None, title):
            continue
        print(f"{title}:")
        for name in reg.names():
            entry = reg.get(name)
            opts = [f"{f}={_default(i)}" for f, i in entry.options.model_fields.items()
                    if f != reg.key]
            print(f"  {name:14s} {', '.join(opts)}")
    return 0


def _default(field) -> str:
    if field.is_required():
        return "(required)"
    return repr(field.get_default(call_default_factory=True))


def cmd_train(args: argparse.Namespace) -> int:
    from .runs.run import train_run

    cfg = resolve_config(args.config, args.overrides, args.seed, args.device, args.data_dir)
    _threads(args)
    res = train_run(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 reports for all
        return 0
    mt = res["meta_test"]
    print(f"{cfg.name}: meta-test {res['metric']} {mt['mean']:.4f} ± {mt['ci95']:.4f} "
          f"(95% CI, {mt['tasks']} tasks); run folder {args.out}")
    return 0


def _threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.task_threads is not None:
        if args.task_threads < 1:
            raise ConfigError(f"--task-threads must be >= 1, got {args.task_threads}")
        from .learners import parallel

        parallel.set_default_threads(args.task_threads)


def cmd_test(args: argparse.Namespace) -> int:
    from .runs.run import test_run

    res = test_run(args.run_dir, seed=args.seed, n_tasks=args.tasks, device=args.device or "auto",
                   progress=not args.no_progress, batchnorm=args.batchnorm, on=args.on,
                   overrides=args.overrides)
    mt = res["meta_test"]
    if "note" in res and not args.json:
        print(f"note: {res['note']}", file=sys.stderr)
    if args.json:
        print(strict_json(res, indent=2))
        return 0
    where = f" on {args.on}" if args.on else ""
    print(f"{res['name']}: meta-test{where} {res['metric']} {mt['mean']:.4f} ± {mt['ci95']:.4f} "
          f"(95% CI, {mt['tasks']} fresh tasks, seed {res['seed']})")
    for d, r in mt.get("by_domain", {}).items():
        print(f"  {d}: {r['mean']:.4f} ± {r['ci95']:.4f} ({r['tasks']} tasks)")
    print(f"wrote {res['path']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metaphi", description="Meta-learning on PyTorch.")
    p.add_argument("--debug", action="store_true",
                   help="show Python tracebacks instead of one-line errors (also METAPHI_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)

    ps = sub.add_parser("presets", help="list named presets")
    ps.add_argument("--show", metavar="NAME", help="print a preset's full config as YAML")
    ps.set_defaults(func=cmd_presets)

    pl = sub.add_parser("list", help="list registered learners, task sources, backbones and "
                        "meta-optimizers with their options")
    pl.add_argument("what", nargs="?", choices=["learners", "sources", "backbones",
                                                "meta-optimizers", "augmentations"])
    pl.set_defaults(func=cmd_list)

    pt = sub.add_parser("train", help="meta-train a preset or config file into a run folder")
    pt.add_argument("config", help="preset name or YAML config file")
    pt.add_argument("overrides", nargs="*",
                    help="field overrides, e.g. steps=2000 learner.inner_lr=0.1")
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
    pe.add_argument("overrides", nargs="*", help="task options, e.g. task.n_way=20 (of the run's "
                    "tasks, or with --on of the target's: task.classes.test=[Tengwar]), and "
                    "learner options that leave φ alone, e.g. learner.eval_inner_steps=10")
    pe.add_argument("--on", metavar="SOURCE", help="cross-domain testing: a task source name "
                    "(its options as task.<option>=value) or an image folder of class "
                    "sub-folders, with the run's input shape")
    pe.add_argument("--batchnorm", choices=["episode", "running", "support", "target"],
                    help="ProtoNet/Matching Networks/R2-D2: evaluate with these BatchNorm "
                         "statistics instead of the run's: the episode's, running (estimated on "
                         "meta-train episodes if the run has none), each episode's support "
                         "set's, or target (re-estimated on unlabelled images of the tasks' "
                         "source)")
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


# what the CLI reports as a one-line error (anything else is a bug: a traceback)
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ValueError, FileNotFoundError,
                                                FileExistsError, KeyError, PermissionError,
                                                ModuleNotFoundError, WriteError, DownloadError,
                                                OSError)
OUT_OF_MEMORY = ("out of memory: the run asks for more memory than this machine has; lower "
                 "meta_batch, the task's shots and queries (k_shot, n_query) or the model's size")


def main(argv: list[str] | None = None) -> int:
    import torch

    from .loops.train import NonFiniteError

    parser = build_parser()
    # Overrides (field=value) may come anywhere on the line, also after options.
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if "=" not in a or a.startswith("-")]
    if bad or (rest and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or rest)}")
    if rest:
        args.overrides = list(args.overrides) + rest
    debug = args.debug or os.environ.get("METAPHI_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except (*USER_ERRORS, NonFiniteError, MemoryError, torch.cuda.OutOfMemoryError) as e:
        if debug:
            traceback.print_exc()
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        if type(e) is not WriteError and isinstance(e, OSError) and e.filename and e.strerror:
            msg = f"cannot use {e.filename}: {e.strerror}"
        if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)):
            msg = f"{OUT_OF_MEMORY} ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        print(f"metaphi: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
