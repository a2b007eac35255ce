"""A user's image folder as a task source: ``root/<class name>/<image files>``.

Classes are split at random into meta-train, meta-val and meta-test classes (fractions of the
classes, 60/20/20 by default, drawn with ``split_seed``), so the three never share a class.
Every image is read with Pillow, converted to grayscale (``channels: 1``) or RGB
(``channels: 3``) and resized to ``image_size`` x ``image_size`` with bilinear filtering;
values are scaled to [0, 1] as they are, without inverting (Omniglot's loader inverts its
drawings so that ink is 1; do the same to your images if your model expects it). Each folder
is one class: rotations or other transformations are not added as classes.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..registry import register_source
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

    def info(self) -> TaskInfo:
        return TaskInfo("classification", "image", (self.channels, self.image_size,
                                                    self.image_size),
                        n_way=self.n_way, default_model="conv4")


@register_source("folder", options=FolderOptions)
def folder_splits(o: FolderOptions) -> Splits:
    size = o.image_size
    data = ImageFolderData(o.data_dir, size=(size, size), grayscale=o.channels == 1)
    train, val, test = fewshot_splits(data, o.n_way, o.k_shot, o.n_query,
                                      splits=o.split_fractions, seed=o.split_seed,
                                      eval_n_query=o.eval_n_query, train_n_way=o.train_n_way)
    return Splits(train, val, test, o.info())
