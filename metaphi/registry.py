"""One registry per extension point: learners, task sources (datasets), backbones,
meta-optimizers and task augmentations.

An extension is one file and one registration. The file defines a pydantic options model
(a subclass of :class:`Options`: the keyword options a config may set, with their defaults and
constraints) and the class or builder; a decorator registers both under a name::

    from metaphi.registry import Options, register_learner

    class MyOptions(Options):
        inner_lr: float = Field(0.01, gt=0)

    @register_learner("mine", options=MyOptions, model="head")
    class Mine(Learner): ...

Configs (``learner: {name: mine, inner_lr: 0.1}``), presets, ``metaphi presets`` and the
population fitness all read the registries, so a registered extension is usable everywhere.
A config names the modules that register its extensions under ``imports:``; packages can also
declare them as ``metaphi.plugins`` entry points.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class Options(BaseModel):
    """Base of every extension's options: unknown fields are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    def kwargs(self, key: str = "name") -> dict[str, Any]:
        """The options as keyword arguments (without the registry key)."""
        return {k: getattr(self, k) for k in type(self).model_fields if k != key}


@dataclass(frozen=True)
class Entry:
    """A registered extension: its name, the registered object, its options model, and what
    the registry records about it (``info``)."""

    name: str
    obj: Any
    options: type[Options]
    info: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Name -> :class:`Entry`. ``key`` is the config field that names an entry (``name``, or
    ``source`` for task sources); ``builtin`` modules register the built-in entries when they
    are imported, on first use."""

    def __init__(self, kind: str, key: str = "name", builtin: tuple[str, ...] = ()) -> None:
        self.kind, self.key, self._builtin = kind, key, builtin
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, options: type[Options], **info: Any) -> Callable[[T], T]:
        """Decorator: register the decorated class or function under ``name``."""
        if not (isinstance(options, type) and issubclass(options, Options)):
            raise TypeError(f"{self.kind} {name!r}: options must be a subclass of "
                            f"metaphi.registry.Options, got {options!r}")
        if self.key not in options.model_fields:
            raise TypeError(f"{self.kind} {name!r}: {options.__name__} needs a `{self.key}` field")

        def add(obj: T) -> T:
            old = self._entries.get(name)
            if old is not None and old.obj is not obj and _qualname(old.obj) != _qualname(obj):
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"({_qualname(old.obj)}); choose another name")
            self._entries[name] = Entry(name, obj, options, dict(info))
            return obj
        return add

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._builtin:
                importlib.import_module(module)
            load_entry_points()

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def get(self, name: str) -> Entry:
        self._load()
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: "
                           f"{', '.join(sorted(self._entries))} (a config's `imports:` list "
                           "loads modules that register more)")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def options(self, data: dict[str, Any]) -> Options:
        """Validate a config section (``{key: name, ...options}``) with its entry's options
        model; raises pydantic's ``ValidationError`` (or ``KeyError`` for an unknown name)."""
        if self.key not in data:
            raise KeyError(f"a {self.kind} section needs `{self.key}:` (one of "
                           f"{', '.join(self.names())})")
        return self.get(str(data[self.key])).options.model_validate(data)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


LEARNERS = Registry("learner", builtin=("metaphi.learners",))
SOURCES = Registry("task source", key="source",
                   builtin=("metaphi.tasks.sinusoid", "metaphi.data.omniglot",
                            "metaphi.data.folder", "metaphi.data.usertext", "metaphi.data.sib200",
                            "metaphi.data.udhr", "metaphi.data.fewrel", "metaphi.tasks.combinators",
                            "metaphi.tasks.regression", "metaphi.forecasting.tasks"))
BACKBONES = Registry("backbone", builtin=("metaphi.models",))
META_OPTIMIZERS = Registry("meta-optimizer", builtin=("metaphi.meta.optimizers",))
AUGMENTATIONS = Registry("task augmentation", builtin=("metaphi.tasks.augment",))


def register_learner(name: str, options: type[Options], *, model: str = "head",
                     kinds: tuple[str, ...] = ("classification", "regression")) -> Callable[[T], T]:
    """Register a :class:`~metaphi.learners.Learner` subclass. ``model``: ``"head"`` (it
    adapts a network with an output layer of the task's size) or ``"embedding"`` (it builds a
    head from support embeddings, so it takes any number of ways); ``kinds``: the task kinds
    it can learn."""
    if model not in ("head", "embedding"):
        raise ValueError(f"model must be 'head' or 'embedding', got {model!r}")
    return LEARNERS.register(name, options, model=model, kinds=tuple(kinds))


def register_source(name: str, options: type[Options]) -> Callable[[T], T]:
    """Register a task source builder ``build(options) -> metaphi.tasks.Splits``; ``options``
    must implement ``info() -> metaphi.tasks.TaskInfo`` (what the tasks look like, known
    without loading data)."""
    if not callable(getattr(options, "info", None)):
        raise TypeError(f"task source {name!r}: {options.__name__} must define info()")
    return SOURCES.register(name, options)


def register_backbone(name: str, options: type[Options],
                      inputs: tuple[str, ...] = ("image",)) -> Callable[[T], T]:
    """Register a backbone builder ``build(options, info, out_dim) -> nn.Module`` (``out_dim``
    None: an embedding network; else a :class:`~metaphi.models.Classifier` with that many
    outputs). ``inputs``: the task inputs it takes (``"image"``, ``"vector"``, ``"tokens"``)."""
    return BACKBONES.register(name, options, inputs=tuple(inputs))


def register_meta_optimizer(name: str, options: type[Options], *, kind: str) -> Callable[[T], T]:
    """Register a meta-optimizer builder. ``kind="gradient"``: ``build(options, params, steps)
    -> (torch optimizer, schedule)``; ``kind="population"``: ``build(options, x0, space, seed)
    -> an ask/tell optimizer``."""
    if kind not in ("gradient", "population"):
        raise ValueError(f"kind must be 'gradient' or 'population', got {kind!r}")
    return META_OPTIMIZERS.register(name, options, kind=kind)


def register_augmentation(name: str, options: type[Options]) -> Callable[[T], T]:
    """Register a task augmentation builder ``build(options, source) -> map`` where
    ``map(task, rng) -> Task`` transforms one meta-train task, a pure function of ``rng``
    (``source`` is the augmented source, for maps that draw a second task)."""
    return AUGMENTATIONS.register(name, options)


# -- plugins ----------------------------------------------------------------------------------
_imported: set[str] = set()
_entry_points_loaded = False


def import_extensions(modules: list[str], base: Path | None = None) -> None:
    """Import user modules that register extensions: dotted module names, or paths of
    ``.py`` files (relative paths from ``base``, e.g. the config file's folder)."""
    for spec in modules:
        if spec in _imported:
            continue
        if spec.endswith(".py"):
            path = Path(spec)
            if not path.is_absolute() and base is not None:
                path = base / path
            if not path.is_file():
                raise FileNotFoundError(f"{str(path)!r}: no such file; give the path of a .py "
                                        "file (relative to the config file) or a module name")
            name = f"metaphi_user_{path.stem}_{abs(hash(str(path.resolve())))}"
            loader = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader)  # type: ignore[arg-type]
            sys.modules[name] = module
            loader.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            try:
                importlib.import_module(spec)
            except ModuleNotFoundError as e:
                raise ModuleNotFoundError(f"cannot import {spec!r} ({e}); install it or give "
                                          "the path of a .py file") from None
        _imported.add(spec)


def load_entry_points() -> None:
    """Import the modules that installed packages declare as ``metaphi.plugins`` entry points."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group="metaphi.plugins"):
        ep.load()
