"""Run configuration: one validated, serialisable description of a meta-learning run.

The sections that name an extension are validated by that extension's options model from its
registry (:mod:`metaphi.registry`): ``task`` (by ``task.source``), ``model`` (by
``model.name``), ``learner`` and ``meta_optimizer`` (by ``name``). pydantic validates every field
before any work starts; a bad value is reported with its dotted path and what is allowed
(``config error: learner.inner_lr: protonet has no option 'inner_lr' ...``).

One config serves both kinds of cross-task training: a gradient meta-optimizer (``adam``,
``sgd``...) takes ``steps`` outer steps on meta-batches of ``meta_batch`` tasks; a population
one (``es``, ``cmaes``, ``reinforce``) runs ``steps`` generations whose candidates are scored on
``meta_batch`` tasks each (the ``fitness`` and ``space`` sections say what a candidate is).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal

import hashlib

import yaml
from pydantic import (BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError,
                      model_validator)

from ..registry import (BACKBONES, LEARNERS, META_OPTIMIZERS, SOURCES, Options, Registry,
                        import_extensions)

# config sections validated through a registry: section -> registry
SECTIONS: dict[str, Registry] = {"task": SOURCES, "model": BACKBONES, "learner": LEARNERS,
                                 "meta_optimizer": META_OPTIMIZERS}
# where and how a run executes, and how much of it is tested: these may change on resume
HOW = ("device", "loader_workers", "test_tasks", "workers", "max_seconds")
RENAMED = {"optim": "meta_optimizer", "task.q_queries": "task.n_query",
           "task.eval_q_queries": "task.eval_n_query",
           "learner.population_tasks": "learner.batchnorm_tasks"}


class ConfigError(ValueError):
    """A configuration problem, phrased for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class FitnessOptions(_Strict):
    """What a population candidate is and how it is scored (population meta-optimizers)."""

    phi: Literal["vector", "hyper"] = Field(
        "vector", description="vector: φ is the learner's initialisation as one flat vector "
        "(plus log inner_lr); hyper: φ is a point of `space`, config overrides that are "
        "meta-trained for train_steps before scoring")
    learn_inner_lr: bool = Field(True, description="vector: φ also holds log(inner_lr)")
    train_steps: int = Field(0, ge=0, description="hyper: gradient meta-training steps per "
                             "candidate before it is scored")
    train_meta_batch: int = Field(10, ge=1)
    train_lr: float = Field(1e-3, gt=0, description="hyper: Adam's outer lr for that training")
    resample: bool = Field(True, description="fresh fitness tasks every generation (shared by "
                           "its candidates); False: generation 0's tasks throughout")
    more_tasks: list[tuple[int, int]] = Field(
        default_factory=list, description="(generation, n): from that generation on, score on n "
        "tasks instead of meta_batch")


class RunConfig(_Strict):
    """A complete run: tasks, model, learner, meta-optimizer, budget and evaluation."""

    name: str = "run"
    imports: list[str] = Field(default_factory=list, description="modules (or .py files) that "
                               "register learners, sources or backbones this config uses")
    task: SerializeAsAny[Options]
    model: SerializeAsAny[Options] | None = Field(
        None, description="the backbone (default: the task source's)")
    learner: SerializeAsAny[Options]
    meta_optimizer: SerializeAsAny[Options]
    loss: Literal["auto", "mse", "mae", "ce"] = "auto"
    steps: int = Field(1000, ge=1, description="outer steps: meta-batches (gradient) or "
                       "generations (population)")
    meta_batch: int = Field(25, ge=1, description="tasks per outer step (gradient) or per "
                            "generation's fitness (population)")
    val_every: int = Field(500, ge=1)
    val_tasks: int = Field(200, ge=1)
    test_tasks: int = Field(1000, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    seed: int = Field(0, ge=0)
    device: str = "auto"
    loader_workers: int | None = Field(
        None, ge=0, description="processes that sample meta-train tasks a few steps ahead "
        "(None: 1 on a GPU, where sampling in the loop leaves the device idle; 0 on a CPU, "
        "where a worker would take a core from the step)")
    # population meta-optimizers
    fitness: FitnessOptions | None = Field(
        None, description="population: what a candidate is and how it is scored (defaults "
        "filled in for a population meta-optimizer)")
    space: dict[str, dict[str, Any]] | None = Field(
        None, description="population, phi=hyper: the search space, config paths -> "
        "{type: float|int|categorical, ...} (e.g. learner.inner_lr)")
    workers: int | None = Field(None, ge=0, description="population: fitness processes "
                                "(default: one per core; 0 or 1: in this process)")
    max_seconds: float | None = Field(None, gt=0, description="stop meta-training after this "
                                      "much wall time (then validate, test and save as after "
                                      "the last step)")

    @model_validator(mode="before")
    @classmethod
    def _dispatch(cls, data: Any) -> Any:
        return dispatch_sections(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        if self.model is None:  # the task source's default backbone, written out
            object.__setattr__(self, "model", BACKBONES.options({"name": self.info.default_model}))
        check_consistent(self)
        return self

    # derived --------------------------------------------------------------------------------
    @property
    def info(self):
        """What the tasks look like (:class:`~metaphi.tasks.TaskInfo`)."""
        return self.task.info()

    @property
    def loss_kind(self) -> str:
        if self.loss != "auto":
            return self.loss
        return "ce" if self.info.kind == "classification" else "mse"

    @property
    def population(self) -> bool:
        """Whether the meta-optimizer is a population one (else gradient)."""
        return META_OPTIMIZERS.get(self.meta_optimizer.name).info["kind"] == "population"


def dispatch_sections(data: dict[str, Any]) -> dict[str, Any]:
    """Validate the registry-named sections of raw config data with their options models
    (after importing the config's ``imports``); errors name the section's fields."""
    data = dict(data)
    _check_renamed(data)
    base = data.pop("_base", None)
    # .py paths become absolute, so the config still finds them when saved in a run folder
    imports = data.get("imports") or []
    if not isinstance(imports, (list, tuple)) or not all(isinstance(m, str) for m in imports):
        raise ConfigError(f"invalid run configuration:\n  imports: must be a list of module "
                          f"names or .py files (e.g. [my_extension.py]), got {imports!r}")
    data["imports"] = [str((Path(base or ".") / m).resolve()) if str(m).endswith(".py")
                       and not Path(m).is_absolute() else str(m)
                       for m in imports]
    for spec in data["imports"]:
        try:
            import_extensions([spec])
        except (ImportError, FileNotFoundError) as e:
            raise ConfigError(f"invalid run configuration:\n  imports: {e}") from None
        except Exception as e:  # the user's module itself fails: name it (--debug: traceback)
            raise ConfigError(f"invalid run configuration:\n  imports: {spec} failed while "
                              f"importing ({type(e).__name__}: {e}); fix the module (metaphi "
                              "--debug shows the traceback)") from e
    lines = []
    for section, registry in SECTIONS.items():
        raw = data.get(section)
        if raw is None and section == "model" or isinstance(raw, Options):
            continue
        if raw is None:
            raw = {"meta_optimizer": {"name": "adam"}}.get(section, {})
        if not isinstance(raw, dict):
            lines.append(f"  {section}: must be a mapping with `{registry.key}:`, got {raw!r}")
            continue
        if registry.key not in raw:
            lines.append(f"  {section}.{registry.key}: missing; one of "
                         f"{', '.join(registry.names())}")
            continue
        try:
            data[section] = registry.options(raw)
        except KeyError as e:
            lines.append(f"  {section}.{registry.key}: {e.args[0]}")
        except ValidationError as e:
            lines += error_lines(e, section, registry, str(raw[registry.key]))
    if lines:
        raise ConfigError("invalid run configuration:\n" + "\n".join(lines))
    return data


def _check_renamed(data: dict[str, Any]) -> None:
    for old, new in RENAMED.items():
        head, _, tail = old.partition(".")
        node = data.get(head)
        if (tail and isinstance(node, dict) and tail in node) or (not tail and head in data):
            raise ConfigError(f"invalid run configuration:\n  {old}: renamed to {new}; rename "
                              "it in your config")


def error_lines(err: ValidationError, prefix: str = "", registry: Registry | None = None,
                name: str = "", rename: Callable[[str], str] = lambda field: field) -> list[str]:
    """One line per problem of a pydantic error: the field's dotted path (under ``prefix``;
    through ``rename``, e.g. to the command-line option it comes from), the message and the
    value given. ``registry``/``name``: the section's extension, whose options an unknown field
    is compared with."""
    lines = []
    for e in err.errors():
        where = ".".join(([prefix] if prefix else []) + [str(p) for p in e["loc"]])
        got = e.get("input")
        got_s = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
        msg = e["msg"]
        if e["type"] == "value_error":
            msg, got_s = str(e["ctx"]["error"]), ""  # a validator's own message shows the value
            if not where:  # a cross-field check: its message starts with the field's path
                lines.append(f"  {msg}")
                continue
        if e["type"] == "extra_forbidden":
            got_s = ""
            if registry is not None:
                allowed = [f for f in registry.get(name).options.model_fields if f != registry.key]
                msg = (f"{name!r} has no option {e['loc'][-1]!r}; its options: "
                       f"{', '.join(allowed) or 'none'}")
            else:
                msg = ("unknown field; check the spelling (see `metaphi presets --show NAME` "
                       "for all fields)")
        lines.append(f"  {rename(where)}: {msg}{got_s}")
    return lines


def check_consistent(cfg: RunConfig) -> None:
    """Cross-section checks: the learner can learn these tasks, the backbone takes their
    inputs, population settings fit the meta-optimizer."""
    info = cfg.info
    entry = LEARNERS.get(cfg.learner.name)
    if info.kind not in entry.info["kinds"]:
        able = [n for n in LEARNERS.names() if info.kind in LEARNERS.get(n).info["kinds"]]
        raise ValueError(f"learner.name: {cfg.learner.name!r} cannot learn {info.kind} tasks "
                         f"(task.source {cfg.task.source!r}); use one of {', '.join(able)}")
    backbone = BACKBONES.get(cfg.model.name)
    if info.input not in backbone.info["inputs"]:
        able = [n for n in BACKBONES.names() if info.input in BACKBONES.get(n).info["inputs"]]
        raise ValueError(f"model.name: {cfg.model.name!r} does not take {info.input} inputs "
                         f"(task.source {cfg.task.source!r}); use one of {', '.join(able)}")
    check_task = getattr(cfg.task, "check_learner", None)  # e.g. variable-way episodes
    if check_task is not None:
        check_task(cfg.learner.name, entry.info["model"])
    train_n_way = getattr(cfg.task, "train_n_way", None)
    if train_n_way not in (None, info.n_way) and entry.info["model"] != "embedding":
        raise ValueError(f"task.train_n_way: {cfg.learner.name!r} has a {info.n_way}-unit output "
                         "layer, so it meta-trains on n_way-way tasks; train_n_way is for "
                         "learners that take any number of ways (or leave it unset)")
    if cfg.loss in ("mse", "mae") and info.kind == "classification" or (
            cfg.loss == "ce" and info.kind == "regression"):
        raise ValueError(f"loss: {cfg.loss!r} does not fit {info.kind} tasks; leave it 'auto'")
    _check_population(cfg)


POPULATION_FIELDS = ("fitness", "space", "workers")


def _check_population(cfg: RunConfig) -> None:
    if not cfg.population:
        for name in POPULATION_FIELDS:
            if getattr(cfg, name) is not None:
                raise ValueError(f"{name}: for population meta-optimizers only (meta_optimizer."
                                 f"name: es, cmaes or reinforce); remove it for "
                                 f"{cfg.meta_optimizer.name!r}")
        return
    if cfg.fitness is None:
        object.__setattr__(cfg, "fitness", FitnessOptions())
    f = cfg.fitness
    if f.phi == "hyper" and not cfg.space:
        raise ValueError("fitness.phi: 'hyper' searches config settings: give `space:`")
    if cfg.space:
        from ..meta.space import Space

        Space.from_config(cfg.space)  # a clear error for a bad entry, before any work
    if f.phi == "vector" and cfg.space:
        raise ValueError("space: a search space sets config settings: use fitness.phi: hyper "
                         "(phi: vector searches the initialisation itself)")
    if f.phi == "vector" and f.train_steps:
        raise ValueError("fitness.train_steps: phi 'vector' scores the candidate initialisation "
                         "as it is; train_steps is for phi 'hyper'")
    if f.phi == "vector" and LEARNERS.get(cfg.learner.name).info["model"] != "head":
        raise ValueError(f"fitness.phi: 'vector' evolves an initialisation with its inner lr; "
                         f"{cfg.learner.name!r} has no inner loop: use a MAML-family learner or "
                         "phi 'hyper'")


def validate_config(data: dict[str, Any], base: Path | None = None) -> RunConfig:
    """A :class:`RunConfig` from plain data (a preset, a YAML file), or a :class:`ConfigError`
    naming every bad field. ``base``: folder for relative ``imports`` paths."""
    if not isinstance(data, dict):
        raise ConfigError(f"a run configuration must be a mapping of fields, got {data!r}")
    data = dict(data)
    if base is not None:
        data["_base"] = base
    data = dispatch_sections(data)  # ConfigError naming the sections' fields
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError("invalid run configuration:\n" + "\n".join(error_lines(e))) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``learner.inner_lr=0.1`` -> (["learner", "inner_lr"], 0.1); values are YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like field.sub=value (e.g. steps=2000)")
    key, value = text.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(value)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem}); quote "
                          "it to give a string (key='value')") from None


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Plain config data with ``key.sub=value`` overrides (or a ``{"key.sub": value}`` dict)
    applied; sections given as options objects become plain data first."""
    data = plain(data)
    items = ([(k.split("."), v) for k, v in overrides.items()] if isinstance(overrides, dict)
             else [parse_override(o) for o in overrides])
    for path, value in items:
        node = data
        for p in path[:-1]:
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"override {'.'.join(path)}: {p!r} is not a section")
        node[path[-1]] = value
    return data


def plain(data: dict[str, Any] | RunConfig) -> dict[str, Any]:
    """A deep copy of config data as plain YAML-able values."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    else:
        data = {k: (v.model_dump(mode="json") if isinstance(v, BaseModel) else v)
                for k, v in data.items()}
    return yaml.safe_load(yaml.safe_dump(data))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The config data of a YAML file, or a :class:`ConfigError` naming the file."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config fields (field: value lines), "
                          f"got {type(data).__name__}")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML would keep the last value
    without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is given twice (only one value can count)",
                        key_node.start_mark)
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                pass
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, damaged: str | None = None) -> Any:
    """The YAML data of a config file; a damaged, undecodable or unreadable file is a
    :class:`ConfigError` naming it. ``damaged``: how to repair the file (default: fix the line,
    or save as UTF-8)."""
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a YAML config file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")  # (a byte-order mark from a Windows editor is fine)
    except UnicodeDecodeError as e:
        utf16 = " (it looks like UTF-16)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(f"{path} is not UTF-8 text{utf16}: {e.reason} at byte {e.start}; "
                          f"{damaged or 'save it as UTF-8'}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{line}: {problem}; "
                          f"{damaged or 'fix that line'}") from None


def fingerprint(cfg: RunConfig) -> str:
    """A hash of what a run computes (not of where it runs, its budget or its name): stored
    with its weights and checkpoints, so that weights from another run are recognised."""
    return _digest(plain(cfg))


def saved_fingerprint(data: dict[str, Any]) -> str:
    """:func:`fingerprint` of a run's config as its config.yaml holds it (every option the
    writing version knew), so that options added to metaphi since then, at their defaults, do
    not make the run's own weights look like another run's."""
    data = plain(data)
    for name in POPULATION_FIELDS:  # dump_config leaves them out of gradient runs' files
        data.setdefault(name, None)
    return _digest(data)


def _digest(data: dict[str, Any]) -> str:
    for k in (*HOW, "steps", "name"):
        data.pop(k, None)
    return hashlib.sha256(yaml.safe_dump(data, sort_keys=True).encode()).hexdigest()[:16]


def dump_config(cfg: RunConfig) -> str:
    data = cfg.model_dump(mode="json")
    if not cfg.population:  # their defaults (None) say nothing for a gradient run
        for name in POPULATION_FIELDS:
            data.pop(name)
    return yaml.safe_dump(data, sort_keys=False)
