"""Cross-domain testing: a saved run evaluated on another task source (``metaphi test RUN_DIR
--on SOURCE``).

``SOURCE`` is a registered source name with its options as ``task.<option>=value`` overrides
(``--on omniglot task.classes.test=[Tengwar]``), or the path of an image folder (one
sub-folder per class; every class is a meta-test class). The target inherits from the run's
task section what decides the episodes' shape and the input (``n_way``, ``k_shot``,
``n_query``, ``eval_n_query``, ``image_size``, ``channels``; and when it is the run's own source,
its data and split: ``data_dir``, ``resample``, ``rotations``, ``horizon``, ``lookback``,
``split``, ``split_seed``) unless the overrides set them; its input shape must be the run's.
The meta-test tasks are the target's meta-test split, drawn with the test seed; results are
reported with their 95% CI and per domain where the target's tasks name domains (a
``mixture``).

BatchNorm under domain shift (metric learners, ``--batchnorm``): ``episode`` normalises each
episode with its own support+query statistics; ``running`` with statistics estimated on
meta-train episodes (the meta-train domain's); ``support`` with each episode's support-set
statistics; ``target`` with statistics re-estimated on unlabelled images of the target domain
(``batchnorm_tasks`` episodes of the target's meta-test split drawn on their own stream, so
not the evaluated episodes; their labels are not used).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..registry import LEARNERS, SOURCES, Options
from ..tasks.combinators import source_options
from .config import ConfigError, RunConfig, parse_override

INHERITED = ("n_way", "k_shot", "n_query", "eval_n_query")
SAME_SOURCE = ("data_dir", "resample", "rotations", "channels", "horizon", "lookback", "split",
               "split_seed")
BATCHNORM_CHOICES = ("episode", "running", "support", "target")


def task_overrides(overrides: list[str] | None) -> list[tuple[list[str], Any]]:
    """``task.x.y=value`` (or ``x.y=value``) overrides as (path inside the task section,
    value)."""
    out = []
    for o in overrides or []:
        path, value = parse_override(o)
        if path[0] == "task":
            path = path[1:]
        if not path:
            raise ConfigError(f"override {o!r}: name a task option (task.<option>=value)")
        out.append((path, value))
    return out


def target_options(cfg: RunConfig, on: str, overrides: list[str] | None = None) -> Options:
    """The task section of the target source ``on`` for a run with config ``cfg`` (module
    doc), validated; a :class:`ConfigError` if it cannot serve the run's learner."""
    if on in SOURCES:
        data: dict[str, Any] = {"source": on}
    elif Path(on).expanduser().is_dir():
        data = {"source": "folder", "data_dir": str(Path(on).expanduser().resolve()),
                "classes": {"test": ["*"]}}
    else:
        raise ConfigError(f"--on {on!r}: neither a task source ({', '.join(SOURCES.names())}) "
                          "nor a folder of class sub-folders")
    fields = SOURCES.get(data["source"]).options.model_fields
    run_task = cfg.task.model_dump(mode="json")
    inherit = INHERITED + (SAME_SOURCE if data["source"] == cfg.task.source else ())
    for f in inherit:
        if f in fields and f in run_task and run_task[f] is not None:
            data[f] = run_task[f]
    shape = tuple(cfg.info.input_shape)
    if "image_size" in fields and len(shape) == 3:
        data["image_size"] = shape[-1]
    if "channels" in fields and len(shape) == 3:
        data["channels"] = shape[0]
    for path, value in task_overrides(overrides):
        node = data
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--on: task.{'.'.join(path)}: {p!r} is not a section")
        node[path[-1]] = value
    try:
        target = source_options(data, "--on task")
    except ValueError as e:
        raise ConfigError(f"--on {on}: {e}") from None
    _check_fits(cfg, target, on)
    return target


def _check_fits(cfg: RunConfig, target: Options, on: str) -> None:
    run, new = cfg.info, target.info()
    if (new.kind, new.input, tuple(new.input_shape)) != (run.kind, run.input,
                                                          tuple(run.input_shape)):
        raise ConfigError(f"--on {on}: its tasks are {new.kind} on {new.input} inputs of shape "
                          f"{tuple(new.input_shape)}, the run's are {run.kind} on {run.input} of "
                          f"shape {tuple(run.input_shape)}; a run is tested on tasks of its own "
                          "input shape (set the target's image_size / channels)")
    model = LEARNERS.get(cfg.learner.name).info["model"]
    if model == "head" and new.kind == "classification" and new.n_way != run.n_way:
        raise ConfigError(f"--on {on}: {cfg.learner.name!r} has an output layer of {run.n_way} "
                          f"units; the target's tasks are {new.n_way}-way (task.n_way)")
    check = getattr(target, "check_learner", None)
    if check is not None:
        try:
            check(cfg.learner.name, model)
        except ValueError as e:
            raise ConfigError(f"--on {on}: {e}") from None


def target_label(on: str, overrides: list[str] | None) -> str:
    """A short file-name label for a target: its name, plus a hash of its overrides."""
    name = on if on in SOURCES else Path(on).expanduser().resolve().name
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]
    if overrides:
        name += "-" + hashlib.sha1("\0".join(overrides).encode()).hexdigest()[:8]
    return name
