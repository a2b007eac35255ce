"""Task sources built from other task sources: mixtures of domains and task-level maps.

Both are pure functions of the task's generator, like every source, so a meta-batch is the
same for the same ``(seed, stream, step, index)`` with or without loader workers, over any
number of ranks and after a resume::

    from metaphi.tasks import MixtureSource, MapSource

    both = MixtureSource([omniglot_train, folder_train], weights=[0.7, 0.3],
                         names=["omniglot", "mine"])     # task.meta["domain"] says which
    rotated = MapSource(both, Rotate())                   # fn(task, rng) -> Task, per task

In a run config, ``task: {source: mixture, parts: [...]}`` names a mixture whose parts are
source sections of their own (each with its options, its class split and its
``augment:`` list)::

    task:
      source: mixture
      parts:
        - {source: omniglot, classes: {train: [Latin, Greek], test: [Angelic]}}
        - {source: folder, data_dir: /data/my_drawings}
      weights: [0.5, 0.5]
      names: [omniglot, mine]

Meta-train, meta-val and meta-test tasks are mixtures of the parts' meta-train, meta-val and
meta-test sources (meta-val over the parts that have one); ``test_parts`` meta-tests on other
sources instead (domains held out of meta-training). Meta-test results are reported per
domain too (``meta_test.by_domain`` in ``results.json``).

:func:`build_splits` is how every config's sources are built: the registered builder, then
the ``sampler`` and ``augment`` options that N-way K-shot sources share.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator
from torch import Tensor

from ..registry import SOURCES, Options, register_source
from .augment import augment_list, build_augmentation, check_augment_learner
from .sources import Splits, TaskInfo, TaskSource
from .task import Task


@dataclass
class MixtureSource:
    """Each task from one of ``sources``, drawn with probabilities ``weights`` (default
    equal); ``task.meta["domain"]`` is that source's name (``names``, default ``"0"``,
    ``"1"``, ...). A task that already names a domain (a mixture in a mixture) keeps it as
    ``"name/inner"``."""

    sources: Sequence[TaskSource]
    weights: Sequence[float] | None = None
    names: Sequence[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.sources)
        if n == 0:
            raise ValueError("a mixture needs at least one source")
        w = np.ones(n) if self.weights is None else np.asarray(self.weights, dtype=np.float64)
        if w.shape != (n,) or (w < 0).any() or not w.sum() > 0 or not np.isfinite(w).all():
            raise ValueError(f"mixture weights must be {n} non-negative numbers with a positive "
                             f"sum, got {self.weights}")
        self.p = w / w.sum()
        self.names = [str(i) for i in range(n)] if self.names is None else list(self.names)
        if len(self.names) != n or len(set(self.names)) != n:
            raise ValueError(f"mixture names must be {n} distinct names, got {self.names}")

    def sample(self, rng: np.random.Generator) -> Task:
        i = int(rng.choice(len(self.sources), p=self.p))
        task = self.sources[i].sample(rng)
        inner = task.meta.get("domain")
        name = self.names[i] if inner is None else f"{self.names[i]}/{inner}"
        return Task(task.support_x, task.support_y, task.query_x, task.query_y,
                    {**task.meta, "domain": name})


@dataclass
class MapSource:
    """``fn(source.sample(rng), rng)``: a task-level map (an augmentation) applied to every
    task, drawing its randomness from the same generator after the source."""

    source: TaskSource
    fn: Callable[[Task, np.random.Generator], Task]

    def sample(self, rng: np.random.Generator) -> Task:
        return self.fn(self.source.sample(rng), rng)


# -- building sources from config sections ----------------------------------------------------
def source_options(raw: Any, where: str = "task") -> Options:
    """A source section (``{source: name, ...}``) validated by its source's options model;
    errors name the nested fields (``parts.1.n_way: ...``)."""
    if isinstance(raw, Options):
        return raw
    if not isinstance(raw, dict) or "source" not in raw:
        raise ValueError(f"{where}: a source section {{source: name, ...options}}, got {raw!r}")
    try:
        return SOURCES.options(raw)
    except KeyError as e:
        raise ValueError(f"{where}.source: {e.args[0]}") from None
    except ValidationError as e:
        lines = [f"{where}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                 for err in e.errors()]
        raise ValueError("; ".join(lines)) from None


def build_splits(options: Options) -> Splits:
    """The meta-train / meta-val / meta-test sources of a validated source section: the
    registered builder, then the section's ``sampler`` (variable-way episodes in every split)
    and ``augment`` maps (meta-train only)."""
    splits = SOURCES.get(options.source).obj(options)
    if getattr(options, "sampler", "fixed") == "meta-dataset":
        from .fewshot import FewShotSource
        from .variable import VariableEpisodeSource

        def variable(src: Any) -> Any:
            if src is None:
                return None
            if not isinstance(src, FewShotSource):
                raise ValueError(f"task.sampler: 'meta-dataset' needs N-way K-shot sources; "
                                 f"{options.source!r} builds {type(src).__name__}")
            return VariableEpisodeSource.like(src)

        splits = Splits(variable(splits.train), variable(splits.val), variable(splits.test),
                        splits.info)
    fn = build_augmentation(getattr(options, "augment", []) or [], splits.train)
    if fn is not None:
        splits = Splits(MapSource(splits.train, fn), splits.val, splits.test, splits.info)
    return splits


def _parts(cls: Any, v: Any) -> list[Options]:
    if not isinstance(v, (list, tuple)) or not v:
        raise ValueError("a non-empty list of source sections")
    return [source_options(p, f"parts.{i}") for i, p in enumerate(v)]


class MixtureOptions(Options):
    """``task:`` options of a mixture of sources (domains)."""

    source: str = "mixture"
    parts: list[SerializeAsAny[Options]] = Field(
        description="source sections, one per domain: {source: name, ...its options}")
    weights: list[float] | None = Field(None, description="probability of drawing a task from "
                                        "each part (normalised; default equal)")
    names: list[str] | None = Field(None, description="domain names (default: each part's "
                                    "source name, numbered where repeated)")
    test_parts: list[SerializeAsAny[Options]] | None = Field(
        None, description="meta-test on these sources' meta-test splits instead (domains held "
        "out of meta-training); their names in test_names")
    test_names: list[str] | None = None
    augment: list[SerializeAsAny[Options]] = Field(
        default_factory=list, description="task augmentations of the mixture's meta-train tasks "
        "(metaphi.tasks.augment); each part may have its own too")

    _parts_v = field_validator("parts", mode="before")(_parts)
    _augment = field_validator("augment", mode="before")(augment_list)

    @field_validator("test_parts", mode="before")
    @classmethod
    def _test_parts(cls, v: Any) -> Any:
        return None if v is None else _parts(cls, v)

    @model_validator(mode="after")
    def _consistent(self) -> "MixtureOptions":
        groups = [("parts", self.parts, self.names, self.weights)]
        if self.test_parts is not None:
            groups.append(("test_parts", self.test_parts, self.test_names, None))
        elif self.test_names is not None:
            raise ValueError("test_names: for test_parts only")
        first = self.parts[0].info()
        for label, parts, names, weights in groups:
            if names is not None and len(names) != len(parts):
                raise ValueError(f"{label}: {len(parts)} parts but {len(names)} names")
            if weights is not None and len(weights) != len(parts):
                raise ValueError(f"weights: {len(parts)} parts but {len(weights)} weights")
            for i, p in enumerate(parts):
                info = p.info()
                if (info.kind, info.input, tuple(info.input_shape), info.out_dim) != (
                        first.kind, first.input, tuple(first.input_shape), first.out_dim):
                    raise ValueError(
                        f"{label}.{i}: its tasks ({info.kind}, {info.input} of shape "
                        f"{tuple(info.input_shape)}) differ from parts.0's ({first.kind}, "
                        f"{first.input} of shape {tuple(first.input_shape)}); a mixture's "
                        "parts must share the kind and the input shape (e.g. set image_size "
                        "and channels alike)")
        return self

    def domain_names(self, test: bool = False) -> list[str]:
        parts, names = ((self.test_parts, self.test_names) if test
                        else (self.parts, self.names))
        if names is not None:
            return list(names)
        base = [p.source for p in parts]
        return [b if base.count(b) == 1 else f"{b}{base[:i + 1].count(b)}"
                for i, b in enumerate(base)]

    def info(self) -> TaskInfo:
        infos = [p.info() for p in self.parts]
        ways = {i.n_way for i in infos}
        first = infos[0]
        return TaskInfo(first.kind, first.input, first.input_shape,
                        n_way=max(w for w in ways) if None not in ways else first.n_way,
                        out_dim=first.out_dim, default_model=first.default_model,
                        vocab_size=first.vocab_size)

    def check_learner(self, learner: str, model: str) -> None:
        for p in [*self.parts, *(self.test_parts or [])]:
            check = getattr(p, "check_learner", None)
            if check is not None:
                check(learner, model)
        ways = {p.info().n_way for p in [*self.parts, *(self.test_parts or [])]}
        if len(ways) > 1 and model != "embedding":
            raise ValueError(f"task.parts: the parts have {sorted(ways)} ways, but {learner!r} "
                             "adapts an output layer of one size; give every part the same "
                             "n_way, or use a learner that takes any number of ways")
        check_augment_learner(self.augment, learner, model)

    def load_file(self, path: Path) -> Tensor:
        """How the first part that reads files reads one (``metaphi predict``)."""
        for p in self.parts:
            if hasattr(p, "load_file"):
                return p.load_file(path)
        from .fewshot import load_image

        shape = self.info().input_shape
        return load_image(path, (shape[-1], shape[-1]), grayscale=shape[0] == 1)


def _mixture(splits: Sequence[Splits], which: str, weights: Sequence[float] | None,
             names: Sequence[str]) -> MixtureSource | None:
    picked = [(getattr(s, which), names[i], None if weights is None else weights[i])
              for i, s in enumerate(splits) if getattr(s, which) is not None]
    if not picked:
        return None
    w = None if weights is None else [p[2] for p in picked]
    return MixtureSource([p[0] for p in picked], w, [p[1] for p in picked])


@register_source("mixture", options=MixtureOptions)
def mixture_splits(o: MixtureOptions) -> Splits:
    """Each split a mixture of the parts' same split (meta-test: of ``test_parts`` if given)."""
    parts = [build_splits(p) for p in o.parts]
    names = o.domain_names()
    train = _mixture(parts, "train", o.weights, names)
    val = _mixture(parts, "val", o.weights, names)
    if o.test_parts is None:
        test = _mixture(parts, "test", o.weights, names)
    else:
        test = _mixture([build_splits(p) for p in o.test_parts], "test", None,
                        o.domain_names(test=True))
    return Splits(train, val, test, o.info())

