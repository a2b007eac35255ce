"""User-defined class splits: which classes are meta-train, meta-val and meta-test.

A run config names them under ``task.classes`` (sources that support it: ``omniglot``,
``folder``)::

    task:
      source: omniglot
      rotations: [0]
      classes:
        train: [images_background]          # a whole Omniglot part
        test: [images_evaluation]
    # or lists of alphabets, characters, classes, or a file with one entry a line:
      classes: {train: [Latin, Greek], val: splits/val.txt, test: ["*"]}

Each list is inline or the path of a text file (one entry a line; blank lines and ``#``
comments are skipped; a relative path is taken from the working directory and stored
absolute). What an entry may name is the source's business (Omniglot: a part, an alphabet, a
character or a rotated-character class; an image folder: a class folder). The entry ``"*"``
stands for every class that no other list names. ``val`` may be left out (no meta-validation:
φ is the last step's); ``train`` may be left out in a source used only for meta-testing
(``metaphi test --on``). The lists must not share a class.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

WHICH = ("train", "val", "test")
ALL = "*"

Entries = list[str] | str | None


class ClassLists(BaseModel):
    """Meta-train / meta-val / meta-test class lists (inline, or a file path each)."""

    model_config = ConfigDict(extra="forbid")

    train: Entries = Field(None, description="meta-train classes (None: a test-only source)")
    val: Entries = Field(None, description="meta-val classes (None: no meta-validation)")
    test: Entries = Field(description="meta-test classes")

    @field_validator("train", "val", "test")
    @classmethod
    def _absolute(cls, v: Entries) -> Entries:
        if isinstance(v, str):
            path = Path(v).expanduser()
            if not path.is_file():
                raise ValueError(f"class list file {v!r} does not exist (a list is inline, "
                                 "[a, b, ...], or the path of a file with one entry a line)")
            return str(path.resolve())
        return v

    def entries(self, which: str) -> list[str] | None:
        """The entries of one list (a file read), or None where it is not given."""
        v = getattr(self, which)
        if v is None:
            return None
        if isinstance(v, str):
            lines = Path(v).read_text(encoding="utf-8").splitlines()
            return [s for s in (line.split("#", 1)[0].strip() for line in lines) if s]
        return [str(e).strip() for e in v]


def resolve_class_lists(lists: ClassLists, expand: Callable[[str], Sequence[str]],
                        all_classes: Sequence[str]) -> dict[str, list[str] | None]:
    """``{"train", "val", "test"} -> class names`` (None where a list is not given), with each
    entry expanded by ``expand`` (which raises a clear ``ValueError`` for an unknown entry)
    and ``"*"`` standing for every class of ``all_classes`` the other lists do not name."""
    out: dict[str, list[str] | None] = {}
    star = []
    for which in WHICH:
        entries = lists.entries(which)
        if entries is None:
            out[which] = None
            continue
        names: list[str] = []
        for e in entries:
            if e == ALL:
                star.append(which)
            else:
                names += list(expand(e))
        out[which] = names
    if len(star) > 1:
        raise ValueError(f"task.classes: '*' (every other class) may appear in one list only, "
                         f"found in {', '.join(star)}")
    named = {c for names in out.values() if names for c in names}
    if star:
        out[star[0]] = list(out[star[0]] or []) + [c for c in all_classes if c not in named]
    seen: dict[str, str] = {}
    for which in WHICH:
        for c in out[which] or []:
            if c in seen and seen[c] != which:
                raise ValueError(f"task.classes: {c!r} is in both {seen[c]} and {which}; "
                                 "meta-train, meta-val and meta-test must not share classes")
            seen[c] = which
        if out[which] is not None:
            out[which] = list(dict.fromkeys(out[which]))  # an entry named twice counts once
            if not out[which]:
                raise ValueError(f"task.classes.{which}: no classes")
    return out


def fewshot_from_lists(data, ids: dict[str, Sequence[int] | None], n_way: int, k_shot: int,
                       n_query: int, eval_n_query: int | None = None,
                       train_n_way: int | None = None):
    """``(train, val, test)`` :class:`~metaphi.tasks.FewShotSource` s over the class ids of
    each list (``val`` None where there is no meta-val list; without a meta-train list, the
    meta-test source stands in for it: a test-only source)."""
    from .fewshot import fewshot_splits

    present = [w for w in WHICH if ids.get(w) is not None]
    if "test" not in present:
        raise ValueError("task.classes.test: a meta-test list is needed")
    if "train" not in present:  # every part is an evaluation part
        n_query, train_n_way = eval_n_query or n_query, None
    srcs = fewshot_splits(data, n_way, k_shot, n_query, splits=[ids[w] for w in present],
                          eval_n_query=eval_n_query, train_n_way=train_n_way,
                          names=[f"meta-{w}" for w in present])
    by = dict(zip(present, srcs))
    return by.get("train", by["test"]), by.get("val"), by["test"]
