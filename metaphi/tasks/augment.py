"""Task augmentation: maps that turn one meta-train task into another, drawn per task.

A run config lists them under ``task.augment`` (sources built on N-way K-shot classification:
``omniglot``, ``folder``, ``mixture``); they apply, in the order listed, to meta-train tasks
only (meta-validation and meta-test tasks stay as drawn)::

    task:
      source: omniglot
      augment: [rotate, {name: mlti, alpha: 2.0}, affine]

Each map is ``map(task, rng) -> Task``, a pure function of the task's generator (it draws
after the source has drawn the task), so augmented meta-batches are the same for the same
``(seed, stream, step, index)``: with or without loader workers, across ranks, and after a
resume. The built-in maps:

``rotate``
    New classes by rotation, drawn per task: each class of the task (support and query alike)
    is rotated by an angle drawn from ``angles`` (multiples of 90 degrees, counter-clockwise),
    so the same character can be several classes over training without a pre-expanded class
    list (Santoro et al. 2016; Vinyals et al. 2016 expand the list instead).
``mlti``
    Meta-learning with task interpolation (Yao et al., ICLR 2022), at the input level: with
    probability ``p`` a second task is drawn from the same source and the two tasks' classes
    are mixed pairwise, ``x = lam * x_1 + (1 - lam) * x_2`` for the k-th example of class c in
    either task, with ``lam ~ Beta(alpha, alpha)`` per task; a mixed pair is a new class, so
    the labels stay the first task's (the non-label-sharing form of the paper).
``affine``
    Input augmentation: every support and query image gets its own random affine transform
    (rotation, translation, scale, shear), applied on the fly; the class identities do not
    change.
``permute_labels``
    Per-task label permutation (meta-augmentation, Rajendran et al. NeurIPS 2020): the labels
    0..N-1 of a task are shuffled, support and query alike, so that a learner with an output
    layer cannot memorise a class-to-output assignment. For the MAML family (learners that
    adapt an output layer); a metric learner's head is built from the support labels and does
    not change, so a config combining it with one is an error. metaphi's N-way K-shot sources
    already assign labels in a random order, so for them it changes nothing; it is for sources
    whose labels are fixed (non-mutually-exclusive tasks).

Register more with :func:`metaphi.registry.register_augmentation`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, field_validator
from torch import Tensor

from ..registry import AUGMENTATIONS, Options, register_augmentation
from .task import Task

TaskMap = Callable[[Task, np.random.Generator], Task]


def _images(task: Task, what: str) -> None:
    for x in (task.support_x, task.query_x):
        if x.dim() != 4:
            raise ValueError(f"{what} augments image tasks (inputs of shape (n, C, H, W)), got "
                             f"inputs of shape {tuple(x.shape)}")


def _replace(task: Task, meta: dict[str, Any], **fields: Tensor) -> Task:
    parts = {"support_x": task.support_x, "support_y": task.support_y,
             "query_x": task.query_x, "query_y": task.query_y, **fields}
    return Task(**parts, meta={**task.meta, **meta})


# -- rotate -----------------------------------------------------------------------------------
class RotateOptions(Options):
    name: str = "rotate"
    angles: list[int] = Field([0, 90, 180, 270], description="angles to draw from per class "
                              "(multiples of 90 degrees, counter-clockwise)")

    @field_validator("angles")
    @classmethod
    def _quarter_turns(cls, v: list[int]) -> list[int]:
        if not v or any(a % 90 for a in v):
            raise ValueError("angles: a non-empty list of multiples of 90")
        return v


class Rotate:
    """Each class of a task rotated by its own angle (see the module doc)."""

    def __init__(self, angles: Sequence[int] = (0, 90, 180, 270)) -> None:
        self.turns = np.asarray([(a // 90) % 4 for a in angles], dtype=np.int64)

    def __call__(self, task: Task, rng: np.random.Generator) -> Task:
        _images(task, "rotate")
        if task.support_x.shape[-1] != task.support_x.shape[-2]:
            raise ValueError("rotate needs square images")
        n_way = int(task.support_y.max()) + 1
        turns = self.turns[rng.integers(len(self.turns), size=n_way)]
        sx, qx = task.support_x.clone(), task.query_x.clone()
        for c, k in enumerate(turns.tolist()):
            if k:
                for x, y in ((sx, task.support_y), (qx, task.query_y)):
                    sel = y == c
                    x[sel] = torch.rot90(x[sel], k, dims=(-2, -1))
        return _replace(task, {"rotations": [90 * int(k) for k in turns]},
                        support_x=sx, query_x=qx)


@register_augmentation("rotate", options=RotateOptions)
def build_rotate(o: RotateOptions, source: Any) -> TaskMap:
    return Rotate(o.angles)


# -- mlti -------------------------------------------------------------------------------------
class MLTIOptions(Options):
    name: str = "mlti"
    alpha: float = Field(2.0, gt=0, description="lam ~ Beta(alpha, alpha) per task (the MLTI "
                         "code's default for images: 2)")
    p: float = Field(0.5, ge=0, le=1, description="share of meta-train tasks interpolated "
                     "(the others stay as drawn)")


def _by_label(y: Tensor) -> Tensor:
    return torch.argsort(y, stable=True)


class MLTI:
    """Input-level task interpolation with a second task from ``source`` (module doc)."""

    def __init__(self, source: Any, alpha: float = 2.0, p: float = 0.5) -> None:
        self.source, self.alpha, self.p = source, float(alpha), float(p)

    def __call__(self, task: Task, rng: np.random.Generator) -> Task:
        if rng.uniform() >= self.p:
            return task
        other = self.source.sample(rng)
        lam = float(rng.beta(self.alpha, self.alpha))
        if other.shapes != task.shapes:
            raise ValueError(f"mlti mixes two tasks of the same shape; this source draws tasks "
                             f"of different shapes ({task.shapes} vs {other.shapes}), e.g. "
                             "variable-way episodes: drop mlti or use fixed-shape episodes")
        out = {}
        for xs, ys in (("support_x", "support_y"), ("query_x", "query_y")):
            x1, y1 = getattr(task, xs), getattr(task, ys)
            x2, y2 = getattr(other, xs), getattr(other, ys)
            i1, i2 = _by_label(y1), _by_label(y2)
            if not torch.equal(y1[i1], y2[i2]):
                raise ValueError("mlti needs two tasks with the same number of examples per "
                                 "class")
            mixed = x1.clone()
            mixed[i1] = lam * x1[i1] + (1 - lam) * x2[i2]
            out[xs] = mixed
        return _replace(task, {"mlti": {"lam": lam, "classes": other.meta.get("classes")}},
                        **out)


@register_augmentation("mlti", options=MLTIOptions)
def build_mlti(o: MLTIOptions, source: Any) -> TaskMap:
    return MLTI(source, o.alpha, o.p)


# -- affine -----------------------------------------------------------------------------------
class AffineOptions(Options):
    name: str = "affine"
    degrees: float = Field(15.0, ge=0, le=180, description="rotation ~ U[-degrees, degrees]")
    translate: float = Field(0.1, ge=0, le=1, description="shift ~ U[-t, t] of the image side, "
                             "each axis")
    scale: tuple[float, float] = Field((0.9, 1.1), description="zoom ~ U[low, high]")
    shear: float = Field(10.0, ge=0, lt=90, description="shear angle ~ U[-shear, shear] degrees")
    fill: float = Field(0.0, description="value outside the image (0: Omniglot's background)")

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("scale: (low, high) with 0 < low <= high")
        return v


class Affine:
    """A random affine transform per image, support and query (module doc)."""

    def __init__(self, degrees: float = 15.0, translate: float = 0.1,
                 scale: tuple[float, float] = (0.9, 1.1), shear: float = 10.0,
                 fill: float = 0.0) -> None:
        self.degrees, self.translate, self.scale = degrees, translate, tuple(scale)
        self.shear, self.fill = shear, fill

    def matrices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` random 2x3 matrices mapping output to input coordinates in [-1, 1]."""
        rot = np.deg2rad(rng.uniform(-self.degrees, self.degrees, n))
        shear = np.deg2rad(rng.uniform(-self.shear, self.shear, n))
        zoom = rng.uniform(*self.scale, n)
        shift = rng.uniform(-self.translate, self.translate, (n, 2)) * 2  # [-1, 1] is 2 wide
        c, s, t = np.cos(rot), np.sin(rot), np.tan(shear)
        # forward map: rotate, then shear along x, then zoom; the grid needs its inverse
        fwd = np.empty((n, 2, 2))
        fwd[:, 0, 0], fwd[:, 0, 1] = (c + t * s) * zoom, (-s + t * c) * zoom
        fwd[:, 1, 0], fwd[:, 1, 1] = s * zoom, c * zoom
        inv = np.linalg.inv(fwd)
        return np.concatenate([inv, -(inv @ shift[:, :, None])], axis=2)

    def apply(self, x: Tensor, rng: np.random.Generator) -> Tensor:
        theta = torch.as_tensor(self.matrices(len(x), rng), dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        if self.fill == 0:
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False)
        out = F.grid_sample(x - self.fill, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        return out + self.fill

    def __call__(self, task: Task, rng: np.random.Generator) -> Task:
        _images(task, "affine")
        return _replace(task, {}, support_x=self.apply(task.support_x, rng),
                        query_x=self.apply(task.query_x, rng))


@register_augmentation("affine", options=AffineOptions)
def build_affine(o: AffineOptions, source: Any) -> TaskMap:
    return Affine(o.degrees, o.translate, o.scale, o.shear, o.fill)


# -- permute_labels ---------------------------------------------------------------------------
class PermuteLabelsOptions(Options):
    name: str = "permute_labels"


def permute_labels(task: Task, rng: np.random.Generator) -> Task:
    """The task with its labels 0..N-1 shuffled (support and query alike)."""
    n_way = int(task.support_y.max()) + 1
    perm = torch.as_tensor(rng.permutation(n_way), dtype=task.support_y.dtype)
    return _replace(task, {"label_permutation": perm.tolist()},
                    support_y=perm[task.support_y], query_y=perm[task.query_y])


@register_augmentation("permute_labels", options=PermuteLabelsOptions)
def build_permute_labels(o: PermuteLabelsOptions, source: Any) -> TaskMap:
    return permute_labels


# -- from config -----------------------------------------------------------------------------
# learners these maps cannot help: augmentation name -> (learner model kinds it fits, why)
FOR_MODELS = {"permute_labels": ("head", "shuffling the labels changes nothing for a learner "
                                 "that builds its head from the support labels; it is for the "
                                 "MAML family")}


def augmentation_options(raw: Any, where: str = "augment") -> Options:
    """One ``task.augment`` entry (a name, or ``{name: ..., options}``) validated; a
    ``ValueError`` naming the entry's bad field otherwise."""
    if isinstance(raw, Options):
        return raw
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise ValueError(f"{where}: an augmentation is a name or {{name: ..., options}}, got "
                         f"{raw!r}")
    try:
        return AUGMENTATIONS.options(raw)
    except KeyError as e:
        raise ValueError(f"{where}.name: {e.args[0]}") from None
    except ValidationError as e:
        raise ValueError("; ".join(f"{where}.{'.'.join(str(p) for p in err['loc'])}: "
                                   f"{err['msg']}" for err in e.errors())) from None


def build_augmentation(options: Sequence[Options], source: Any) -> TaskMap | None:
    """One map applying the listed augmentations in order (None for an empty list)."""
    maps = [AUGMENTATIONS.get(o.name).obj(o, source) for o in options]
    if not maps:
        return None
    if len(maps) == 1:
        return maps[0]
    return Chain(maps)


class Chain:
    """Maps applied in order (picklable, unlike a closure)."""

    def __init__(self, maps: Sequence[TaskMap]) -> None:
        self.maps = list(maps)

    def __call__(self, task: Task, rng: np.random.Generator) -> Task:
        for m in self.maps:
            task = m(task, rng)
        return task



def augment_list(cls: Any, v: Any) -> list[Options]:
    """Validator of a ``task.augment`` list (names or sections)."""
    if v is None:
        return []
    if not isinstance(v, (list, tuple)):
        v = [v]
    return [augmentation_options(e, f"augment.{i}") for i, e in enumerate(v)]


def check_augment_learner(options: Sequence[Options], learner: str, model: str) -> None:
    """A clear error for an augmentation that cannot help ``learner`` (of ``model`` kind)."""
    for o in options:
        fits = FOR_MODELS.get(o.name)
        if fits is not None and model not in fits[0]:
            raise ValueError(f"task.augment: {o.name!r} with {learner!r}: {fits[1]}")
