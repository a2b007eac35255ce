"""A user's image folder as a task source: ``root/<class name>/<image files>``.

Each sub-folder of ``data_dir`` is one class (hidden folders are skipped; a class folder must
hold at least one image: .png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff or .webp).

**How its classes are split.** By default at random into meta-train, meta-val and meta-test
classes (``split_fractions`` of the classes, 60/20/20, drawn with ``split_seed``), so the
three never share a class. ``classes: {train: [...], val: [...], test: [...]}`` names them
instead (folder names, inline or from files; ``"*"`` for every class no other list names; see
:mod:`metaphi.tasks.class_lists`); without ``train`` the folder is a meta-test-only source
(``metaphi test RUN --on DIR`` uses every class folder that way).

**How images are read.** Every image is read with Pillow, converted to grayscale
(``channels: 1``) or RGB (``channels: 3``) and resized to ``image_size`` x ``image_size`` with
bilinear filtering, whatever its aspect ratio. Values are scaled to [0, 1] as they are,
without inverting: Omniglot's loader inverts its drawings so that ink is 1 on a 0 background,
a folder's dark-on-light drawings stay dark on light (invert them yourself if a model was
meta-trained on Omniglot and should see ink as 1).

**Rotations do not count as classes**: each folder is exactly one class. Rotated copies as
new classes are a task augmentation here (``task.augment: [rotate]``: each meta-train task
rotates each of its classes by a random multiple of 90 degrees, see
:mod:`metaphi.tasks.augment`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..registry import register_source
from ..tasks.class_lists import ClassLists, fewshot_from_lists, resolve_class_lists
from ..tasks.fewshot import FewShotOptions, ImageFolderData, fewshot_splits
from ..tasks.sources import Splits, TaskInfo


class FolderOptions(FewShotOptions):
    """``task:`` options of an image folder source."""

    source: str = "folder"
    data_dir: str = Field(description="the folder of class sub-folders")
    image_size: int = Field(28, ge=4, description="side of the square images, in pixels")
    channels: Literal[1, 3] = Field(1, description="1: grayscale, 3: RGB")
    split_fractions: tuple[float, float, float] = Field(
        (0.6, 0.2, 0.2), description="fractions of the classes for meta-train, meta-val, meta-test")
    split_seed: int = Field(0, ge=0, description="seed of the random class split")

    @field_validator("split_fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f <= 0 for f in v) or sum(v) > 1 + 1e-9:
            raise ValueError(f"must be three positive fractions of the classes (meta-train, "
                             f"meta-val, meta-test) summing to at most 1, got {list(v)}")
        return v
    classes: ClassLists | None = Field(
        None, description="class folder names for meta-train/val/test instead of the random "
        "split (inline or files; '*': every other class; no train: a meta-test-only source)")

    def info(self) -> TaskInfo:
        return TaskInfo("classification", "image", (self.channels, self.image_size,
                                                    self.image_size),
                        n_way=self.n_way, default_model="conv4")


@register_source("folder", options=FolderOptions)
def folder_splits(o: FolderOptions) -> Splits:
    size = o.image_size
    data = ImageFolderData(o.data_dir, size=(size, size), grayscale=o.channels == 1)
    if o.classes is None:
        train, val, test = fewshot_splits(data, o.n_way, o.k_shot, o.n_query,
                                          splits=o.split_fractions, seed=o.split_seed,
                                          eval_n_query=o.eval_n_query, train_n_way=o.train_n_way)
        return Splits(train, val, test, o.info())
    index = {name: i for i, name in enumerate(data.class_names)}

    def expand(entry: str) -> list[str]:
        if entry not in index:
            raise ValueError(f"task.classes: {entry!r} is not a class folder of {o.data_dir} "
                             f"(it has {len(index)}: {', '.join(list(index)[:8])}...)")
        return [entry]

    lists = resolve_class_lists(o.classes, expand, data.class_names)
    ids = {w: None if names is None else [index[n] for n in names] for w, names in lists.items()}
    train, val, test = fewshot_from_lists(data, ids, o.n_way, o.k_shot, o.n_query,
                                          o.eval_n_query, o.train_n_way)
    return Splits(train, val, test, o.info())
