"""N-way K-shot tasks from labelled data.

Any labelled data becomes a :class:`LabelledData`: an array of labels plus ``get(indices)``
returning the stacked inputs. The data is indexed by class once (:class:`ClassIndex`), so that
sampling a task is a few array look-ups, not a pass over the data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from pydantic import Field, SerializeAsAny, field_validator
from torch import Tensor

from ..registry import Options
from .augment import augment_list, check_augment_learner
from .task import Task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@runtime_checkable
class LabelledData(Protocol):
    """Items with integer class labels. ``class_names[c]`` names class ``c``."""

    labels: np.ndarray
    class_names: Sequence[str]

    def get(self, indices: np.ndarray) -> Tensor: ...


class TensorData:
    """Labelled data held in a pair of tensors ``(x, y)``."""

    def __init__(self, x: Tensor, y: Tensor | np.ndarray | Sequence[int],
                 class_names: Sequence[str] | None = None) -> None:
        y_np = np.asarray(y.cpu() if isinstance(y, Tensor) else y)
        if y_np.ndim != 1 or len(y_np) != len(x):
            raise ValueError(f"labels must be 1-D with one label per input: got {len(x)} inputs "
                             f"and labels of shape {y_np.shape}")
        if not np.issubdtype(y_np.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {y_np.dtype}")
        if x.is_floating_point() and not torch.isfinite(x).all():
            bad = torch.nonzero(~torch.isfinite(x.reshape(len(x), -1)).all(1))[:5].flatten().tolist()
            raise ValueError(f"inputs contain NaN or inf (first bad items: {bad}); clean the data "
                             "before building tasks")
        uniq, inv = np.unique(y_np, return_inverse=True)
        self.x = x
        # numpy gathers small batches far faster than torch indexing when the cores are busy
        # (torch's intra-op thread pool waits); a CPU tensor shares its memory with the array.
        self._x_np = x.numpy() if x.device.type == "cpu" and not x.requires_grad else None
        self.labels = inv.astype(np.int64)
        self.class_names = list(class_names) if class_names is not None else [str(u) for u in uniq]
        if len(self.class_names) != len(uniq):
            raise ValueError(f"{len(self.class_names)} class names given for {len(uniq)} classes")

    def get(self, indices: np.ndarray) -> Tensor:
        if self._x_np is not None:
            return torch.from_numpy(np.take(self._x_np, indices, axis=0))
        return self.x[torch.as_tensor(indices)]


class DatasetData:
    """Labelled data from a map-style dataset yielding ``(x, y)``.

    Labels are read once at construction (the only full pass); inputs are fetched on demand.
    """

    def __init__(self, dataset: Any, labels: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        if labels is None:
            labels = [int(dataset[i][1]) for i in range(len(dataset))]
        uniq, inv = np.unique(np.asarray(labels), return_inverse=True)
        self.labels = inv.astype(np.int64)
        self.class_names = [str(u) for u in uniq]

    def get(self, indices: np.ndarray) -> Tensor:
        xs = [self.dataset[int(i)][0] for i in indices]
        return torch.stack([x if isinstance(x, Tensor) else torch.as_tensor(x) for x in xs])


def load_image(path: Path, size: tuple[int, int] | None, grayscale: bool) -> Tensor:
    """An image file as a float tensor (C, H, W) in [0, 1]; transparency is composited onto
    white; a clear error naming the file if it is corrupt or too large."""
    from PIL import Image

    from ..data.images import on_white, open_image

    with open_image(path) as im:
        im = on_white(im).convert("L" if grayscale else "RGB")
        if size is not None:
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


class ImageFolderData:
    """A folder with one sub-folder of images per class (``root/<class>/<image>``). Every file
    is checked when the folder is read (header and size, :func:`metaphi.data.images.check_images`),
    so a corrupt or huge image is an error naming it before any training."""

    def __init__(self, root: str | Path, size: tuple[int, int] | None = (28, 28),
                 grayscale: bool = True, transform: Callable[[Tensor], Tensor] | None = None) -> None:
        from ..data.images import check_images

        root = Path(root)
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise FileNotFoundError(f"image folder {root} {what}; expected "
                                    f"{root}/<class name>/<image files>")
        classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise ValueError(f"{root} has no class sub-folders; put each class's images in "
                             f"{root}/<class name>/")
        paths, labels = [], []
        for c, d in enumerate(classes):
            # (hidden files such as macOS's ._name.png resource forks are not images)
            files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.name.startswith(".") and p.is_file())
            if not files:
                raise ValueError(f"class folder {d} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths += files
            labels += [c] * len(files)
        check_images(paths)
        self.root, self.size, self.grayscale, self.transform = root, size, grayscale, transform
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = [d.name for d in classes]

    def get(self, indices: np.ndarray) -> Tensor:
        xs = [load_image(self.paths[int(i)], self.size, self.grayscale) for i in indices]
        if self.transform is not None:
            xs = [self.transform(x) for x in xs]
        return torch.stack(xs)


class ClassIndex:
    """Item indices grouped by class, built once: ``index[c]`` is an int array."""

    def __init__(self, labels: np.ndarray) -> None:
        labels = np.asarray(labels)
        order = np.argsort(labels, kind="stable")
        classes, starts = np.unique(labels[order], return_index=True)
        bounds = list(starts[1:]) + [len(labels)]
        self._by_class = {int(c): order[s:e] for c, s, e in zip(classes, starts, bounds)}

    @property
    def classes(self) -> list[int]:
        return list(self._by_class)

    def __getitem__(self, c: int) -> np.ndarray:
        return self._by_class[c]

    def count(self, c: int) -> int:
        return len(self._by_class[c])


def as_labelled(data: Any) -> LabelledData:
    """Wrap what a user has (a LabelledData, a ``(x, y)`` pair, a folder path, or a map-style
    dataset) as :class:`LabelledData`."""
    if isinstance(data, LabelledData):
        return data
    if isinstance(data, (str, Path)):
        return ImageFolderData(data)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        return TensorData(*data)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return DatasetData(data)
    raise TypeError(f"cannot build tasks from {type(data).__name__}: pass (x, y) tensors, a "
                    "folder of class sub-folders, or a map-style dataset yielding (x, y)")


@dataclass
class FewShotSource:
    """N-way K-shot tasks with ``n_query`` per class over a subset of the classes.

    Labels inside a task are 0..N-1 in a random order; ``meta["classes"]`` names the classes,
    ``meta["class_index"]`` gives their positions among this source's classes (0 ..
    ``meta["n_classes"]`` - 1): global labels for learners that pre-train a classifier over all
    meta-train classes (:class:`~metaphi.learners.Baseline`).
    """

    data: LabelledData
    classes: Sequence[int]
    n_way: int
    k_shot: int
    n_query: int
    index: ClassIndex | None = None
    name: str = "tasks"

    def __post_init__(self) -> None:
        if self.index is None:
            self.index = ClassIndex(self.data.labels)
        self.classes = np.asarray(sorted(int(c) for c in self.classes), dtype=np.int64)
        for field_name in ("n_way", "k_shot"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"{field_name} must be >= 1, got {getattr(self, field_name)}")
        if self.n_query < 0:
            raise ValueError(f"n_query must be >= 0, got {self.n_query}")
        if self.n_way > len(self.classes):
            raise ValueError(
                f"{self.name}: {self.n_way}-way tasks need at least {self.n_way} classes, but this "
                f"split has {len(self.classes)}; lower n_way (task.n_way in a run config) or give "
                "the split more classes")
        need = self.k_shot + self.n_query
        for c in self.classes:
            have = self.index.count(int(c))
            if have < need:
                raise ValueError(
                    f"{self.name}: class {self.data.class_names[int(c)]!r} has {have} examples, but "
                    f"k_shot + n_query = {self.k_shot} + {self.n_query} = {need}; lower k_shot "
                    f"or n_query, or drop classes with fewer than {need} examples")

    def sample(self, rng: np.random.Generator) -> Task:
        chosen = rng.choice(self.classes, size=self.n_way, replace=False)
        k, q = self.k_shot, self.n_query
        sup, qry = [], []
        for c in chosen:
            items = self.index[int(c)]
            pick = items[rng.choice(len(items), size=k + q, replace=False)]
            sup.append(pick[:k])
            qry.append(pick[k:])
        idx = np.concatenate(sup + qry)
        x = self.data.get(idx)
        n = self.n_way
        y_s = torch.arange(n).repeat_interleave(k)
        y_q = torch.arange(n).repeat_interleave(q)
        return Task(x[: n * k], y_s, x[n * k:], y_q,
                    {"classes": [self.data.class_names[int(c)] for c in chosen],
                     "class_index": np.searchsorted(self.classes, chosen).tolist(),
                     "n_classes": len(self.classes)})


def split_classes(n_classes: int, fractions: Sequence[float], seed: int = 0) -> list[np.ndarray]:
    """Disjoint random class splits (e.g. ``(0.6, 0.2, 0.2)`` for meta-train/val/test)."""
    if any(f <= 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"split fractions must be positive and sum to at most 1, got {fractions}")
    perm = np.random.default_rng(seed).permutation(n_classes)
    cuts = np.floor(np.cumsum(fractions) * n_classes).astype(int)
    parts, start = [], 0
    for end in cuts:
        parts.append(np.sort(perm[start:end]))
        start = end
    return parts


def fewshot_splits(data: Any, n_way: int, k_shot: int, n_query: int,
                   splits: Sequence[Sequence[int]] | Sequence[float] = (0.6, 0.2, 0.2),
                   seed: int = 0, eval_n_query: int | None = None,
                   train_n_way: int | None = None,
                   names: Sequence[str] = ("meta-train", "meta-val", "meta-test"),
                   ) -> tuple[FewShotSource, ...]:
    """Meta-train / meta-val / meta-test sources over disjoint classes of one labelled dataset.

    ``splits`` is either fractions of the classes or explicit lists of class ids.
    ``eval_n_query`` sets the queries per class of meta-val/meta-test (default ``n_query``);
    ``train_n_way`` the ways of meta-train episodes (default ``n_way``): metric learners
    trained on harder, wider episodes than they are tested on generalise better (Snell et al.
    2017 train 60-way for 5- and 20-way tests). ``names`` label the sources in error messages;
    the first part is always the meta-train one.
    """
    data = as_labelled(data)
    index = ClassIndex(data.labels)
    if all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in splits):
        parts = split_classes(len(data.class_names), splits, seed)  # type: ignore[arg-type]
    else:
        parts = [np.asarray(list(s), dtype=np.int64) for s in splits]
    seen: set[int] = set()
    for p in parts:
        overlap = seen.intersection(int(c) for c in p)
        if overlap:
            raise ValueError(f"class splits overlap on {sorted(overlap)[:5]}: meta-train, meta-val "
                             "and meta-test must not share classes")
        seen.update(int(c) for c in p)
    if train_n_way is not None and train_n_way > len(parts[0]):
        raise ValueError(f"meta-train: train_n_way={train_n_way} needs at least that many classes, "
                         f"but the meta-train split has {len(parts[0])}; lower it "
                         "(task.train_n_way in a run config; null gives n_way-way episodes)")
    out = []
    for i, p in enumerate(parts):
        q = n_query if (i == 0 or eval_n_query is None) else eval_n_query
        ways = train_n_way if (i == 0 and train_n_way is not None) else n_way
        out.append(FewShotSource(data, p, ways, k_shot, q, index,
                                 name=names[i] if i < len(names) else f"split {i}"))
    return tuple(out)


class FewShotOptions(Options):
    """``task:`` options shared by N-way K-shot classification sources."""

    source: str
    n_way: int = Field(5, ge=2, description="classes per meta-val/meta-test task")
    k_shot: int = Field(1, ge=1, description="support examples per class")
    n_query: int = Field(15, ge=1, description="query examples per class in meta-train tasks")
    eval_n_query: int | None = Field(None, ge=1, description="query examples per class in "
                                     "meta-val/meta-test tasks (default n_query)")
    train_n_way: int | None = Field(None, ge=2, description="classes per meta-train task "
                                    "(default n_way; learners that take any number of ways)")
    sampler: Literal["fixed", "meta-dataset"] = Field(
        "fixed", description="fixed: n_way-way k_shot-shot episodes; meta-dataset: variable-way "
        "variable-shot episodes by Meta-Dataset's procedure in every split, n_way and k_shot "
        "unused (metaphi.tasks.variable; learners that take any number of ways)")
    augment: list[SerializeAsAny[Options]] = Field(
        default_factory=list, description="task augmentations of meta-train tasks, in order: "
        "rotate, mlti, affine, permute_labels, or {name: ..., options} (metaphi.tasks.augment)")

    _augment = field_validator("augment", mode="before")(augment_list)

    def check_learner(self, learner: str, model: str) -> None:
        """A clear error where the learner cannot take these tasks (``model``: its registered
        kind, ``"head"`` or ``"embedding"``)."""
        if self.sampler == "meta-dataset" and model != "embedding":
            raise ValueError(f"task.sampler: 'meta-dataset' episodes have 5 to 50 ways, but "
                             f"{learner!r} adapts an output layer of n_way units; use a learner "
                             "that takes any number of ways (protonet, matchingnet, r2d2)")
        check_augment_learner(self.augment, learner, model)
