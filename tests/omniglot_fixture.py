"""A tiny Omniglot in the official layout, generated for tests (no real data needed).

Drawings are random strokes on a 105x105 binary (mode "1") canvas, black ink on white like the
real PNGs; each character has its own stroke skeleton and each drawer jitters it, so characters
differ and no drawing is rotation-symmetric.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from PIL import Image, ImageDraw

# Real alphabet names, so strict validation can name what is missing.
DEFAULT_ALPHABETS: dict[str, dict[str, int]] = {
    "images_background": {"Latin": 3, "Greek": 2},
    "images_evaluation": {"Angelic": 3},
}


def drawing_png(char_id: int, drawer: int, size: int = 105) -> bytes:
    """PNG bytes of one synthetic drawing (deterministic in ``char_id`` and ``drawer``)."""
    skeleton = np.random.default_rng([char_id]).uniform(0.1, 0.9, size=(4, 2)) * size
    jitter = np.random.default_rng([char_id, drawer]).normal(0, 0.03 * size, size=(4, 2))
    pts = [tuple(p) for p in np.clip(skeleton + jitter, 2, size - 3)]
    im = Image.new("1", (size, size), 1)
    draw = ImageDraw.Draw(im)
    draw.line(pts, fill=0, width=max(1, size // 30))
    # A blob at the first stroke point breaks any rotational symmetry of the strokes.
    x, y = pts[0]
    r = size // 15
    draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def fixture_files(alphabets: Mapping[str, Mapping[str, int]] = DEFAULT_ALPHABETS,
                  drawers: int = 20) -> dict[str, bytes]:
    """``{"images_background/Latin/character01/0001_01.png": png bytes, ...}`` with global
    character ids numbered across parts in order, as in the real data."""
    files = {}
    char_id = 0
    for part in ("images_background", "images_evaluation"):
        for alphabet, n_chars in alphabets.get(part, {}).items():
            for c in range(1, n_chars + 1):
                char_id += 1
                for d in range(1, drawers + 1):
                    name = f"{part}/{alphabet}/character{c:02d}/{char_id:04d}_{d:02d}.png"
                    files[name] = drawing_png(char_id, d)
    return files


def make_omniglot_fixture(folder: str | Path,
                          alphabets: Mapping[str, Mapping[str, int]] = DEFAULT_ALPHABETS, *,
                          zipped: bool = True, omit: Iterable[str] = (),
                          replace: Mapping[str, bytes] | None = None, drawers: int = 20) -> Path:
    """Write a fixture into ``folder`` (zips, or extracted folders with ``zipped=False``).

    ``omit`` drops files and ``replace`` swaps their bytes (names relative to the part folder,
    e.g. ``"Latin/character02/0002_07.png"``), to build incomplete or corrupt copies.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = fixture_files(alphabets, drawers)
    omit = set(omit)
    replace = dict(replace or {})
    by_part: dict[str, dict[str, bytes]] = {}
    for name, data in files.items():
        part, rel = name.split("/", 1)
        if rel in omit:
            continue
        by_part.setdefault(part, {})[name] = replace.get(rel, data)
    for part, members in by_part.items():
        if zipped:
            with zipfile.ZipFile(folder / f"{part}.zip", "w", zipfile.ZIP_DEFLATED) as zf:
                dirs = sorted({n.rsplit("/", i)[0] + "/" for n in members for i in (1, 2, 3)})
                for d in dirs:  # the official zips list their folders too
                    zf.writestr(d, b"")
                for name in sorted(members):
                    zf.writestr(name, members[name])
        else:
            for name, data in members.items():
                path = folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    return folder


def character_names(alphabets: Mapping[str, Mapping[str, int]] = DEFAULT_ALPHABETS) -> list[str]:
    """``"Alphabet/characterNN"`` for every fixture character, in load order."""
    names = []
    for part in ("images_background", "images_evaluation"):
        names += sorted(f"{a}/character{c:02d}" for a, n in alphabets.get(part, {}).items()
                        for c in range(1, n + 1))
    return names


def write_split(folder: str | Path, name: str, lists: Mapping[str, list[str]]) -> Path:
    """Write ``folder/splits/<name>/<which>.txt`` for each ``which -> class names``."""
    d = Path(folder) / "splits" / name
    d.mkdir(parents=True, exist_ok=True)
    for which, classes in lists.items():
        (d / f"{which}.txt").write_text("".join(c + "\n" for c in classes))
    return d


def write_mini_split(folder: str | Path, name: str = "mini") -> Path:
    """A split of the default fixture's characters, each in its four rotations: 3 meta-train,
    2 meta-val and 2 meta-test characters (enough for 5-way tasks everywhere)."""
    def rot(chars: list[str]) -> list[str]:
        return [f"{c}/rot{r:03d}" for c in chars for r in (0, 90, 180, 270)]

    return write_split(folder, name, {
        "train": rot(["Latin/character01", "Latin/character02", "Greek/character01"]),
        "val": rot(["Latin/character03", "Greek/character02"]),
        "test": rot(["Angelic/character01", "Angelic/character02"])})
