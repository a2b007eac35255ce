"""Omniglot (Lake et al., 2015): 1623 handwritten characters from 50 alphabets, 20 drawings each.

Data layout (the official distribution, zipped or extracted), in one *Omniglot folder*::

    images_background.zip  or  images_background/<Alphabet>/characterNN/NNNN_MM.png   (30 alphabets)
    images_evaluation.zip  or  images_evaluation/<Alphabet>/characterNN/NNNN_MM.png   (20 alphabets)
    splits/<name>/{train,val,test,trainval}.txt                                      (optional)

``NNNN`` is the global character id, ``MM`` the drawer 01-20. The folder is given as ``root``
(the folder itself, or a data folder holding ``omniglot/``) or found at
``$METAPHI_DATA/omniglot``. :func:`download_omniglot` fetches the official archives.

The PNGs are decoded once into a compact cache (all images as uint8 at ``image_size`` pixels,
plus the character names), so later runs load in well under a second. Rotations by 90, 180 and
270 degrees are classes of their own (``Alphabet/characterNN/rot090``); :class:`OmniglotData`
rotates on the fly, so memory holds only the base images.

Which classes are meta-train, meta-val and meta-test: a split's class lists (``split``, default
Vinyals et al.'s), or user-defined lists of parts, alphabets, characters or classes
(``task.classes``, :func:`omniglot_class_lists`), e.g. the original release's protocol,
background alphabets for meta-training and evaluation alphabets for meta-testing, without
rotations::

    task: {source: omniglot, rotations: [0],
           classes: {train: [images_background], test: [images_evaluation]}}
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from PIL import Image

from pydantic import Field, model_validator

from ..files import clean_stale_temporaries
from ..registry import register_source
from ..tasks.class_lists import ClassLists, fewshot_from_lists, resolve_class_lists
from ..tasks.fewshot import FewShotOptions, FewShotSource
from ..tasks.sources import Splits, TaskInfo
from .cache import default_cache_dir, is_writable_dir, load_arrays, save_arrays
from .download import RemoteFile, check_archive, download, safe_extract
from .images import on_white, open_image

PARTS = ("images_background", "images_evaluation")
N_DRAWERS = 20
N_CHARACTERS = 1623
ROTATIONS = (0, 90, 180, 270)
CACHE_VERSION = 1
OFFICIAL_BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
PACKAGE_SPLITS = Path(__file__).parent / "splits"
SPLIT_FILES = ("train", "val", "test", "trainval")
# Guards for archives and files placed by hand: an Omniglot drawing is a few kB, the two
# archives unpack to under 100 MB.
MAX_DRAWING_BYTES = 1 << 20
MAX_ARCHIVE_BYTES = 1 << 30

# Accepted checksums per archive; a file is good when any one matches. Upstream publishes no
# checksums: the md5s are those of the official archives as documented by torchvision's Omniglot
# dataset (``zips_md5``); the sha256s are those of the repacked copy we were given (same PNGs,
# different zip container; see the SOURCE.md shipped with it). md5 alone is a weak guarantee, so
# the content is also fully validated when loading (layout, 20 drawings a character, every PNG
# decodes).
OMNIGLOT_CHECKSUMS: dict[str, tuple[tuple[str, str], ...]] = {
    "images_background.zip": (
        ("md5", "68d2efa1b9178cc56df9314c21c6e718"),
        ("sha256", "7a4cae547f16207901bd3acaabd866c1dbbef4d559dff26d797dbc6423a64a1e")),
    "images_evaluation.zip": (
        ("md5", "6b91aef0f799c5bb55b94e3f2daec811"),
        ("sha256", "d84af890b3ea334eca90f1cb04c6111603a1b620d66b82f86414b8707fbd0e8d")),
}

# Characters per alphabet in the official distribution (the dataset's specification).
ALPHABETS: dict[str, dict[str, int]] = {
    "images_background": {
        "Alphabet_of_the_Magi": 20, "Anglo-Saxon_Futhorc": 29, "Arcadian": 26, "Armenian": 41,
        "Asomtavruli_(Georgian)": 40, "Balinese": 24, "Bengali": 46,
        "Blackfoot_(Canadian_Aboriginal_Syllabics)": 14, "Braille": 26, "Burmese_(Myanmar)": 34,
        "Cyrillic": 33, "Early_Aramaic": 22, "Futurama": 26, "Grantha": 43, "Greek": 24,
        "Gujarati": 48, "Hebrew": 22, "Inuktitut_(Canadian_Aboriginal_Syllabics)": 16,
        "Japanese_(hiragana)": 52, "Japanese_(katakana)": 47, "Korean": 40, "Latin": 26,
        "Malay_(Jawi_-_Arabic)": 40, "Mkhedruli_(Georgian)": 41, "N_Ko": 33,
        "Ojibwe_(Canadian_Aboriginal_Syllabics)": 14, "Sanskrit": 42, "Syriac_(Estrangelo)": 23,
        "Tagalog": 17, "Tifinagh": 55},
    "images_evaluation": {
        "Angelic": 20, "Atemayar_Qelisayer": 26, "Atlantean": 26, "Aurek-Besh": 26, "Avesta": 26,
        "Ge_ez": 26, "Glagolitic": 45, "Gurmukhi": 45, "Kannada": 41, "Keble": 26,
        "Malayalam": 47, "Manipuri": 40, "Mongolian": 30, "Old_Church_Slavonic_(Cyrillic)": 45,
        "Oriya": 46, "Sylheti": 28, "Syriac_(Serto)": 23, "Tengwar": 25, "Tibetan": 42,
        "ULOG": 26},
}

_FILE_RE = re.compile(r"^(?P<alphabet>[^/]+)/(?P<character>character\d{2})/"
                      r"(?P<id>\d{4})_(?P<drawer>\d{2})\.png$")
_CLASS_RE = re.compile(r"^(?P<character>[^/]+/character\d{2})/rot(?P<rot>000|090|180|270)$")
_LAYOUT_HINT = ("expected images_background.zip and images_evaluation.zip (or the extracted "
                "folders images_background/<Alphabet>/characterNN/NNNN_MM.png)")


class OmniglotError(ValueError):
    """The Omniglot data is missing, incomplete or corrupt."""


def _problems_error(header: str, problems: list[str], advice: str) -> OmniglotError:
    shown = problems[:20]
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return OmniglotError(header + ":\n  " + "\n  ".join(shown) + more + "\n" + advice)


# ---------------------------------------------------------------------------------------------
# Locating the data


def omniglot_dir(root: str | Path | None = None) -> Path:
    """The Omniglot folder for ``root``.

    ``root`` may be the Omniglot folder itself (it holds the archives or image folders, or is
    named ``omniglot``) or a data folder holding ``omniglot/``. Without ``root``,
    ``$METAPHI_DATA/omniglot`` is used.
    """
    if root is None:
        env = os.environ.get("METAPHI_DATA")
        if not env:
            raise OmniglotError(
                "no Omniglot location given: pass root=<folder> (the folder with "
                "images_background.zip and images_evaluation.zip), or set METAPHI_DATA to a data "
                "folder holding omniglot/, or download it with "
                "metaphi.data.download_omniglot(<folder>)")
        return Path(env).expanduser() / "omniglot"
    root = Path(root).expanduser()
    if root.name == "omniglot" or any(_part_paths(root, p) for p in PARTS):
        return root
    return root / "omniglot"


def _part_paths(folder: Path, part: str) -> list[Path]:
    return [p for p in (folder / f"{part}.zip", folder / part) if p.exists()]


@dataclass
class _Part:
    """One archive (zip) or extracted folder: its character drawings, by (alphabet, character)."""

    name: str
    path: Path
    drawings: dict[tuple[str, str], dict[int, tuple[str, str]]]  # -> drawer -> (id, member)
    bad_names: list[str]

    @property
    def is_zip(self) -> bool:
        return self.path.suffix == ".zip"


def _scan_part(folder: Path, part: str) -> _Part | None:
    """Index one part; the zip is preferred when both the zip and the folder exist."""
    zpath, dpath = folder / f"{part}.zip", folder / part
    if zpath.is_file():
        try:  # the checks a download gets, also for an archive placed by hand (a zip bomb...)
            infos = check_archive(zpath, MAX_ARCHIVE_BYTES)
        except ValueError as e:  # (UnsafeArchiveError too)
            raise OmniglotError(str(e)) from e
        names = [i.filename for i in infos if not i.is_dir()]
        too_big = [i.filename for i in infos if i.file_size > MAX_DRAWING_BYTES]
        if too_big:
            raise OmniglotError(f"{zpath} holds entries too large for an Omniglot drawing (e.g. "
                                f"{too_big[0]!r} unpacks to more than {MAX_DRAWING_BYTES} bytes); "
                                "it is not the Omniglot archive: delete it and download it "
                                "again (metaphi.data.download_omniglot)")
        prefix = part + "/"
        rel = [(n[len(prefix):], n) for n in names if n.startswith(prefix)]
        if not rel and names:
            raise OmniglotError(f"{zpath} has no entries under {prefix}: {_LAYOUT_HINT}; found "
                                f"e.g. {names[0]!r}")
        path = zpath
    elif dpath.is_dir():
        rel = []
        for dirpath, dirnames, filenames in os.walk(dpath):
            dirnames.sort()
            base = Path(dirpath).relative_to(dpath).as_posix()
            for f in sorted(filenames):
                r = f if base == "." else f"{base}/{f}"
                rel.append((r, str(dpath / r)))
        path = dpath
    else:
        return None
    drawings: dict[tuple[str, str], dict[int, tuple[str, str]]] = {}
    bad = []
    for r, member in rel:
        if not r.lower().endswith(".png"):
            continue  # stray files (.DS_Store, Thumbs.db, README) are not drawings
        m = _FILE_RE.match(r)
        if m is None:
            bad.append(f"{path.name}: unexpected file {r!r} (expected "
                       "<Alphabet>/characterNN/NNNN_MM.png)")
            continue
        key = (m["alphabet"], m["character"])
        drawings.setdefault(key, {})[int(m["drawer"])] = (m["id"], member)
    return _Part(part, path, drawings, bad)


def _ranges(numbers: list[int]) -> list[str]:
    """``[4, 5, 6, 9]`` -> ``["character04-06", "character09"]``."""
    out: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(f"character{numbers[i]:02d}" + (f"-{numbers[j]:02d}" if j > i else ""))
        i = j + 1
    return out


def _validate(parts: list[_Part], strict: bool) -> None:
    """Raise :class:`OmniglotError` naming every missing drawing, alphabet or character."""
    problems: list[str] = []
    for p in parts:
        problems += p.bad_names
        for (alphabet, character), drawers in sorted(p.drawings.items()):
            missing = sorted(set(range(1, N_DRAWERS + 1)) - set(drawers))
            extra = sorted(set(drawers) - set(range(1, N_DRAWERS + 1)))
            where = f"{p.name}/{alphabet}/{character}"
            if missing:
                problems.append(f"{where} is missing drawing(s) "
                                f"{', '.join(f'{d:02d}' for d in missing)} of 01-{N_DRAWERS}")
            if extra:
                problems.append(f"{where} has unexpected drawing(s) "
                                f"{', '.join(f'{d:02d}' for d in extra)}")
            ids = {i for i, _ in drawers.values()}
            if len(ids) > 1:
                problems.append(f"{where} mixes character ids {sorted(ids)} in its file names")
    if strict:
        found_parts = {p.name for p in parts}
        for name in PARTS:
            if name not in found_parts:
                problems.append(f"{name}.zip (or folder {name}/) is missing")
        for p in parts:
            have: dict[str, set[str]] = {}
            for alphabet, character in p.drawings:
                have.setdefault(alphabet, set()).add(character)
            expected = ALPHABETS[p.name]
            gone = sorted(set(expected) - set(have))
            if gone:
                problems.append(f"{p.name} is missing {len(gone)} of {len(expected)} alphabets: "
                                + ", ".join(f"{p.name}/{a} (expected {expected[a]} characters)"
                                            for a in gone))
            for alphabet in sorted(set(have) - set(expected)):
                problems.append(f"{p.name}/{alphabet} is not an Omniglot {p.name} alphabet")
            for alphabet in sorted(set(have) & set(expected)):
                want = set(range(1, expected[alphabet] + 1))
                got = {int(c[len("character"):]) for c in have[alphabet]}
                if want - got:
                    problems.append(f"{p.name}/{alphabet} is missing "
                                    + ", ".join(f"{p.name}/{alphabet}/{c}"
                                                for c in _ranges(sorted(want - got))))
                for c in sorted(got - want):
                    problems.append(f"{p.name}/{alphabet}/character{c:02d} is not an Omniglot "
                                    "character")
    elif not any(p.drawings for p in parts):
        problems.append("no drawings found")
    if problems:
        folder = parts[0].path.parent if parts else "?"
        raise _problems_error(
            f"the Omniglot data in {folder} is incomplete or not in the official layout", problems,
            "Fix: download the archives again (metaphi.data.download_omniglot) or restore the "
            "listed files" + ("" if not strict else "; to use a partial copy on purpose, pass "
                              "strict=False"))


# ---------------------------------------------------------------------------------------------
# Decoding and the cache


RESAMPLING = ("lanczos", "nearest")


def decode_png(data: bytes, size: int, resample: str = "lanczos") -> np.ndarray:
    """One Omniglot PNG file's bytes as :func:`preprocess_drawing` makes it."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return preprocess_drawing(im, size, resample)


def preprocess_drawing(image: "np.ndarray | Image.Image", size: int = 28,
                       resample: str = "lanczos") -> np.ndarray:
    """A drawing as an Omniglot model expects it: a ``size`` x ``size`` uint8 array, ink = 255.

    ``image``: a PIL image or an array (H, W) or (H, W, C) with dark ink on a light background,
    uint8 in 0..255 or float in [0, 1]. Transparent pixels count as background (white), so a
    drawing exported with a transparent background reads as drawn. ``"lanczos"`` downsampling
    keeps the strokes' anti-aliased coverage at low resolution (as Finn et al.'s MAML code);
    ``"nearest"`` keeps binary strokes (0 or 255), what Snell et al.'s ProtoNet code gets from
    PIL, which resizes the 1-bit PNGs with nearest-neighbour sampling. A model's input is this
    array divided by 255, as a (1, size, size) float tensor.
    """
    from PIL import Image

    if resample not in RESAMPLING:
        raise ValueError(f"resample must be one of {RESAMPLING}, got {resample!r}")
    im = image if isinstance(image, Image.Image) else Image.fromarray(_as_uint8(image))
    im = on_white(im).convert("L")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.LANCZOS if resample == "lanczos"
                       else Image.Resampling.NEAREST)
    return 255 - np.asarray(im, dtype=np.uint8)


def _as_uint8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        if not np.isfinite(a).all():
            raise ValueError("the drawing contains NaN or inf")
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        a = np.clip(a * scale, 0, 255).round().astype(np.uint8)
    return a


def _iter_members(part: _Part) -> Iterator[tuple[str, bytes | Exception]]:
    """(display name, bytes or the read error) for every drawing, in character/drawer order."""
    zf = zipfile.ZipFile(part.path) if part.is_zip else None
    try:
        for key in sorted(part.drawings):
            for drawer in range(1, N_DRAWERS + 1):
                member = part.drawings[key][drawer][1]
                shown = f"{part.path.name}:{member}" if zf else member
                try:
                    if zf is not None:
                        data = zf.read(member)
                    elif os.path.getsize(member) > MAX_DRAWING_BYTES:
                        raise OSError(f"it has more than {MAX_DRAWING_BYTES} bytes, too large "
                                      "for an Omniglot drawing")
                    else:
                        data = Path(member).read_bytes()
                except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
                    yield shown, e
                    continue
                yield shown, data
    finally:
        if zf is not None:
            zf.close()


def _fingerprint(parts: list[_Part]) -> str:
    """Identifies the source files: content hashes of archives, name/size/mtime of folders."""
    h = hashlib.sha256()
    for p in parts:
        h.update(f"{p.name}\0".encode())
        if p.is_zip:
            with open(p.path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        else:
            for key in sorted(p.drawings):
                for _, member in sorted(p.drawings[key].values()):
                    st = os.stat(member)
                    h.update(f"{member}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


@dataclass
class OmniglotImages:
    """All drawings as ``images[c * 20 + d]`` for character ``c`` and drawer ``d`` (uint8,
    ink = 255), with ``characters[c]`` = ``"Alphabet/characterNN"`` and ``parts[c]`` the index in
    :data:`PARTS` of the archive it came from."""

    images: np.ndarray
    characters: list[str]
    parts: np.ndarray
    folder: Path
    cache_path: Path | None = None
    from_cache: bool = False

    @property
    def n_characters(self) -> int:
        return len(self.characters)

    def character_images(self, character: str) -> np.ndarray:
        """The 20 drawings of ``"Alphabet/characterNN"``, shape (20, size, size)."""
        c = self.characters.index(character)
        return self.images[c * N_DRAWERS:(c + 1) * N_DRAWERS]


def _cache_file(folder: Path, cache_dir: str | Path | None, size: int,
                resample: str = "lanczos") -> Path:
    name = f"omniglot_{size}px" + ("" if resample == "lanczos" else f"_{resample}") + ".npz"
    if cache_dir is not None:
        return Path(cache_dir) / name
    # A dataset folder is often shared and read-only in spirit even when root could write to
    # it, so the cache goes next to the data only where the user made a cache/ folder there.
    local = folder / "cache"
    return (local if local.is_dir() and is_writable_dir(local) else default_cache_dir()) / name


def load_omniglot(root: str | Path | None = None, *, cache_dir: str | Path | None = None,
                  use_cache: bool = True, strict: bool = True, image_size: int = 28,
                  download: bool = False, progress: bool | None = None,
                  resample: str = "lanczos") -> OmniglotImages:
    """Load every Omniglot drawing, decoding the PNGs only when no valid cache exists.

    ``strict`` requires the complete dataset (50 alphabets, 1623 characters); with
    ``strict=False`` any subset is accepted, but every character present must still have all 20
    drawings. ``download=True`` fetches missing archives first. The cache goes to ``cache_dir``,
    else ``<omniglot folder>/cache/`` if that folder exists and is writable, else :func:`default_cache_dir`; it is keyed
    by a fingerprint of the source files, so changed data is decoded again. ``resample``: how
    the 105 px drawings are downsampled (:func:`decode_png`); each choice has its own cache.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if resample not in RESAMPLING:
        raise ValueError(f"resample must be one of {RESAMPLING}, got {resample!r}")
    folder = omniglot_dir(root)
    if download and not all(_part_paths(folder, p) for p in PARTS):
        download_omniglot(folder, progress=progress)
    parts = [p for p in (_scan_part(folder, name) for name in PARTS) if p is not None]
    if not parts:
        raise OmniglotError(f"no Omniglot data in {folder}: {_LAYOUT_HINT}. Download it with "
                            f"metaphi.data.download_omniglot({str(folder)!r}) or load_omniglot("
                            "..., download=True), or point root/METAPHI_DATA at the right folder")
    _validate(parts, strict)

    cache_path = _cache_file(folder, cache_dir, image_size, resample) if use_cache else None
    # (the lanczos key is the one caches were written with before resample existed)
    key = (f"omniglot-v{CACHE_VERSION}-{image_size}px-"
           + ("" if resample == "lanczos" else f"{resample}-") + _fingerprint(parts))
    n_chars = sum(len(p.drawings) for p in parts)
    if cache_path is not None:
        cached = load_arrays(cache_path, key)
        if cached is not None and cached.get("images", np.empty(0)).shape == (
                n_chars * N_DRAWERS, image_size, image_size):
            return OmniglotImages(cached["images"], [str(c) for c in cached["characters"]],
                                  cached["parts"], folder, cache_path, True)

    images = np.empty((n_chars * N_DRAWERS, image_size, image_size), dtype=np.uint8)
    characters, part_ids, corrupt = [], [], []
    from tqdm.auto import tqdm

    if progress is None:
        progress = os.isatty(2)
    bar = tqdm(total=len(images), desc="decoding Omniglot", unit="img", disable=not progress)
    i = 0
    for p in parts:
        characters += [f"{a}/{c}" for a, c in sorted(p.drawings)]
        part_ids += [PARTS.index(p.name)] * len(p.drawings)
        for shown, data in _iter_members(p):
            try:
                if isinstance(data, Exception):
                    raise data
                images[i] = decode_png(data, image_size, resample)
            except Exception as e:  # any decoder failure means the file is unusable
                corrupt.append(f"{shown} is corrupt: {e}")
            i += 1
            bar.update()
    bar.close()
    if corrupt:
        raise _problems_error(f"{len(corrupt)} Omniglot image file(s) in {folder} cannot be read",
                              corrupt, "Fix: replace these files, or download the archives again "
                              "(metaphi.data.download_omniglot)")
    part_arr = np.asarray(part_ids, dtype=np.int8)
    if cache_path is not None:
        try:
            save_arrays(cache_path, key, {"images": images, "characters": np.asarray(characters),
                                          "parts": part_arr})
        except OSError as e:
            import warnings

            warnings.warn(f"could not write the Omniglot cache to {cache_path} ({e}); pass "
                          "cache_dir=<writable folder> so later runs skip decoding", stacklevel=2)
            cache_path = None
    return OmniglotImages(images, characters, part_arr, folder, cache_path, False)


# ---------------------------------------------------------------------------------------------
# Downloading


def omniglot_remote_files(base_url: str | None = None,
                          checksums: dict[str, tuple[tuple[str, str], ...]] | None = None
                          ) -> list[RemoteFile]:
    """The two archives to fetch, with their accepted checksums (default
    :data:`OMNIGLOT_CHECKSUMS`). ``base_url`` defaults to ``$METAPHI_OMNIGLOT_URL`` (a mirror)
    or else the official location."""
    if base_url is None:
        base_url = os.environ.get("METAPHI_OMNIGLOT_URL") or OFFICIAL_BASE_URL
    table = OMNIGLOT_CHECKSUMS if checksums is None else checksums
    return [RemoteFile(f"{p}.zip", f"{base_url.rstrip('/')}/{p}.zip",
                       tuple(table.get(f"{p}.zip", ()))) for p in PARTS]


def download_omniglot(root: str | Path | None = None, *, base_url: str | None = None,
                      checksums: dict[str, tuple[tuple[str, str], ...]] | None = None,
                      extract: bool = False, timeout: float = 60.0,
                      progress: bool | None = None) -> Path:
    """Fetch the official Omniglot archives into the Omniglot folder and return the folder.

    ``base_url`` defaults to ``$METAPHI_OMNIGLOT_URL`` or the official GitHub location. Each
    archive is verified against ``checksums`` (default :data:`OMNIGLOT_CHECKSUMS`) and checked
    for unsafe entries; archives already present and verified are not fetched again. The loader
    reads the zips directly; ``extract=True`` also unpacks them (safely: no entry may leave the
    folder) for users who want the PNG files.
    """
    folder = omniglot_dir(root)
    for f in omniglot_remote_files(base_url, checksums):
        path = download(f, folder, timeout=timeout, progress=progress)
        check_archive(path)
        part = f.name[:-len(".zip")]
        if extract and not (folder / part).exists():
            # Unpack beside the target and rename at the end, so an interrupted extraction never
            # leaves a half-filled folder that looks like data (a killed one's is removed here).
            clean_stale_temporaries(folder, re.compile(rf"^\.{part}\.[a-z0-9_]{{8}}$"))
            tmp = Path(tempfile.mkdtemp(prefix=f".{part}.", dir=folder))
            try:
                safe_extract(path, tmp)
                if not (tmp / part).is_dir():
                    raise OmniglotError(f"{path} holds no {part}/ folder: {_LAYOUT_HINT}")
                os.replace(tmp / part, folder / part)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ---------------------------------------------------------------------------------------------
# Rotated-character classes and task sources


class OmniglotData:
    """Labelled Omniglot drawings whose classes are rotated characters.

    ``classes`` are names ``"Alphabet/characterNN/rotDDD"`` (DDD in 000, 090, 180, 270); by
    default every character in every rotation. Items of class ``c`` are its 20 drawings;
    ``get`` returns float tensors (n, 1, size, size) in [0, 1] (ink = 1), rotating counter-clockwise
    on the fly.
    """

    def __init__(self, images: OmniglotImages, classes: Sequence[str] | None = None) -> None:
        if classes is None:
            classes = [f"{c}/rot{r:03d}" for c in images.characters for r in ROTATIONS]
        char_index = {c: i for i, c in enumerate(images.characters)}
        chars, rots, bad, missing = [], [], [], []
        for name in classes:
            m = _CLASS_RE.match(name)
            if m is None:
                bad.append(name)
            elif m["character"] not in char_index:
                missing.append(name)
            else:
                chars.append(char_index[m["character"]])
                rots.append(int(m["rot"]) // 90)
        if bad:
            raise OmniglotError(f"{len(bad)} class name(s) are not of the form "
                                f"Alphabet/characterNN/rotDDD (DDD in 000, 090, 180, 270): "
                                f"{bad[:5]}")
        if missing:
            raise OmniglotError(
                f"{len(missing)} class(es) name characters that are not in the loaded data (first: "
                f"{missing[:5]}); load the complete dataset (strict=True) or use a split that "
                "matches the characters you have")
        if len(set(classes)) != len(classes):
            counts: dict[str, int] = {}
            for c in classes:
                counts[c] = counts.get(c, 0) + 1
            dups = sorted(c for c, n in counts.items() if n > 1)
            raise OmniglotError(f"class names must be unique, but {len(dups)} appear more than "
                                f"once (first: {dups[:5]}); meta-train, meta-val and meta-test "
                                "splits must not share classes")
        self.base = images
        self.class_names = list(classes)
        n = len(self.class_names)
        self.labels = np.repeat(np.arange(n, dtype=np.int64), N_DRAWERS)
        drawer = np.tile(np.arange(N_DRAWERS, dtype=np.int64), n)
        first = np.repeat(np.asarray(chars, dtype=np.int64), N_DRAWERS) * N_DRAWERS
        self._image_index = first + drawer  # item -> row of base.images
        self._rot = np.repeat(np.asarray(rots, dtype=np.int8), N_DRAWERS)

    def __len__(self) -> int:
        return len(self.labels)

    def get_uint8(self, indices: np.ndarray) -> np.ndarray:
        """The items as uint8 arrays (n, size, size), rotated."""
        indices = np.asarray(indices, dtype=np.int64)
        x = self.base.images[self._image_index[indices]]  # fancy indexing copies
        rot = self._rot[indices]
        for k in (1, 2, 3):
            sel = rot == k
            if sel.any():
                x[sel] = np.rot90(x[sel], k, axes=(1, 2))
        return x

    def get(self, indices: np.ndarray) -> Tensor:
        # The uint8 -> float conversion is done in numpy: torch's parallel kernels can be
        # orders of magnitude slower on such small arrays when the CPU cores are busy.
        x = self.get_uint8(indices).astype(np.float32)[:, None]
        np.divide(x, 255.0, out=x)
        return torch.from_numpy(x)


def split_folder(split: str | Path, folder: Path | None = None) -> Path:
    """Where the class lists of ``split`` live: a folder path, or a name looked up in
    ``<omniglot folder>/splits/<name>/`` and then in the copies shipped with metaphi."""
    if isinstance(split, Path) or "/" in str(split) or os.sep in str(split):
        path = Path(split)
        if not path.is_dir():
            raise OmniglotError(f"split folder {path} does not exist; it must hold "
                                f"{', '.join(s + '.txt' for s in SPLIT_FILES[:3])}")
        return path
    candidates = ([folder / "splits" / split] if folder is not None else []) + [
        PACKAGE_SPLITS / f"omniglot_{split}"]
    for c in candidates:
        if c.is_dir():
            return c
    shipped = sorted(p.name.removeprefix("omniglot_") for p in PACKAGE_SPLITS.glob("omniglot_*"))
    raise OmniglotError(f"unknown Omniglot split {split!r}: looked in "
                        f"{', '.join(map(str, candidates))}. Known splits: {shipped}, or pass a "
                        "folder with train.txt, val.txt and test.txt")


def read_split(split: str | Path, which: str, folder: Path | None = None) -> list[str]:
    """The class names listed in ``<split>/<which>.txt`` (one ``Alphabet/characterNN/rotDDD``
    a line)."""
    path = split_folder(split, folder) / f"{which}.txt"
    if not path.is_file():
        raise OmniglotError(f"split file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise OmniglotError(f"split file {path} is not UTF-8 text ({e.reason} at byte {e.start});"
                            " save it as UTF-8, one class name a line") from None
    names = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if _CLASS_RE.match(line) is None:
            raise OmniglotError(f"{path}:{n}: {line!r} is not a class name of the form "
                                "Alphabet/characterNN/rotDDD (DDD in 000, 090, 180, 270)")
        names.append(line)
    if len(set(names)) != len(names):
        raise OmniglotError(f"{path} lists some classes more than once")
    return names


def omniglot_class_lists(images: OmniglotImages, lists: ClassLists,
                          rotations: Sequence[int] = ROTATIONS) -> dict[str, list[str] | None]:
    """Class names for user-defined lists (:class:`~metaphi.tasks.class_lists.ClassLists`).

    An entry names a rotated-character class (``Alphabet/characterNN/rotDDD``, taken as it
    is), a split's list (``split:vinyals/test``: its classes as listed), a character
    (``Alphabet/characterNN``), an alphabet (``Latin``) or a part of the release
    (``images_background``, ``images_evaluation``); the last three stand for their characters
    in each of ``rotations`` (degrees, counter-clockwise).
    """
    bad = sorted(set(rotations) - set(ROTATIONS))
    if bad or not rotations:
        raise OmniglotError(f"rotations must be a non-empty subset of {list(ROTATIONS)}, got "
                            f"{list(rotations)}")
    by_alphabet: dict[str, list[str]] = {}
    by_part: dict[str, list[str]] = {}
    for c, part in zip(images.characters, images.parts):
        by_alphabet.setdefault(c.split("/")[0], []).append(c)
        by_part.setdefault(PARTS[int(part)], []).append(c)
    chars = set(images.characters)

    def with_rotations(characters: Sequence[str]) -> list[str]:
        return [f"{c}/rot{r:03d}" for c in characters for r in rotations]

    def expand(entry: str) -> list[str]:
        if _CLASS_RE.match(entry):
            return [entry]  # OmniglotData says if the character is missing
        if entry.startswith("split:"):
            name, _, which = entry[len("split:"):].rpartition("/")
            if not name or which not in SPLIT_FILES:
                raise OmniglotError(f"task.classes: {entry!r}: a split's list is named "
                                    f"split:<split>/<{'|'.join(SPLIT_FILES)}>, e.g. "
                                    "split:vinyals/test")
            return read_split(name, which, images.folder)
        if entry in chars:
            return with_rotations([entry])
        if entry in by_part:
            return with_rotations(by_part[entry])
        if entry in by_alphabet:
            return with_rotations(by_alphabet[entry])
        known = {a for p in ALPHABETS.values() for a in p}
        if entry in known or entry in PARTS or entry.split("/")[0] in known:
            raise OmniglotError(f"task.classes: {entry!r} is not in the loaded data; load the "
                                "complete dataset or name what it holds")
        raise OmniglotError(
            f"task.classes: {entry!r} is neither an Omniglot alphabet, a character "
            "(Alphabet/characterNN), a class (Alphabet/characterNN/rotDDD) nor a part "
            f"({', '.join(PARTS)}); alphabets: {', '.join(sorted(by_alphabet))}")

    try:
        return resolve_class_lists(lists, expand, with_rotations(images.characters))
    except ValueError as e:
        raise OmniglotError(str(e)) from None


def omniglot_sources(root: str | Path | None = None, n_way: int = 5, k_shot: int = 1,
                     n_query: int = 15, eval_n_query: int | None = None,
                     split: str | Path = "vinyals", *, train_n_way: int | None = None,
                     meta_train: str = "train", images: OmniglotImages | None = None,
                     cache_dir: str | Path | None = None, strict: bool = True,
                     download: bool = False, resample: str = "lanczos",
                     classes: ClassLists | None = None,
                     rotations: Sequence[int] = ROTATIONS,
                     ) -> tuple[FewShotSource, FewShotSource | None, FewShotSource]:
    """Meta-train / meta-val / meta-test N-way K-shot task sources over Omniglot's rotated
    characters, from the ``train``, ``val`` and ``test`` lists of ``split``, or from
    user-defined ``classes`` lists (:func:`omniglot_class_lists`, with ``rotations``).

    ``eval_n_query`` (default ``n_query``) sets the queries per class of meta-val/meta-test,
    ``train_n_way`` (default ``n_way``) the ways of meta-train episodes.
    ``meta_train="trainval"`` meta-trains on the split's ``trainval`` list (train + val, as
    Snell et al. 2017 did for their published models) and returns no meta-val source: classes
    that are meta-trained on cannot choose φ.
    Pass ``images`` to reuse data already loaded by :func:`load_omniglot`; else the images are
    loaded with ``resample`` (:func:`decode_png`).
    """
    if meta_train not in ("train", "trainval"):
        raise OmniglotError(f"meta_train must be 'train' or 'trainval', got {meta_train!r}")
    if images is None:
        images = load_omniglot(root, cache_dir=cache_dir, strict=strict, download=download,
                               resample=resample)
    if classes is not None:
        lists = omniglot_class_lists(images, classes, rotations)
        if meta_train == "trainval" and lists["train"] is not None:
            lists = {"train": lists["train"] + (lists["val"] or []), "val": None,
                     "test": lists["test"]}
    elif meta_train == "trainval":
        lists = {"train": read_split(split, "trainval", images.folder), "val": None,
                 "test": read_split(split, "test", images.folder)}
    else:
        lists = {w: read_split(split, w, images.folder) for w in ("train", "val", "test")}
    order = [c for names in lists.values() if names for c in names]
    data = OmniglotData(images, order)
    ids, start = {}, 0
    for w, names in lists.items():
        if names is not None:
            ids[w] = np.arange(start, start + len(names))
            start += len(names)
        else:
            ids[w] = None
    return fewshot_from_lists(data, ids, n_way, k_shot, n_query, eval_n_query, train_n_way)


class OmniglotOptions(FewShotOptions):
    """``task:`` options of the Omniglot source."""

    source: str = "omniglot"
    data_dir: str | None = Field(None, description="the data folder holding omniglot/ (or the "
                                 "Omniglot folder itself; default: $METAPHI_DATA)")
    split: str = Field("vinyals", description="class split: a shipped one ('vinyals') or a "
                       "folder with train.txt, val.txt, test.txt")
    meta_train_classes: Literal["train", "trainval"] = Field(
        "train", description="meta-train on the split's train classes (meta-validation chooses "
        "φ), or on train+val (Snell et al.'s final models: no meta-validation, φ is the last "
        "step's, so fix `steps` from a train-classes run)")
    resample: Literal["lanczos", "nearest"] = Field(
        "lanczos", description="how the 105 px drawings are downsampled: anti-aliased "
        "('lanczos', as Finn et al.'s MAML code) or to binary strokes ('nearest', as Snell et "
        "al.'s ProtoNet code)")
    image_size: int = Field(28, ge=4, description="side of the square images, in pixels")
    classes: ClassLists | None = Field(
        None, description="user-defined meta-train/val/test lists instead of `split`: parts "
        "(images_background), alphabets, characters or classes, inline or from files "
        "(metaphi.data.omniglot.omniglot_class_lists)")
    rotations: list[int] = Field(
        [0, 90, 180, 270], description="with `classes`: the rotations (degrees) of each listed "
        "character that are classes of their own ([0]: the characters as drawn)")

    @model_validator(mode="after")
    def _classes_or_split(self) -> "OmniglotOptions":
        if not self.rotations or set(self.rotations) - set(ROTATIONS):
            raise ValueError(f"rotations: a non-empty subset of {list(ROTATIONS)}")
        if self.classes is not None and self.split != "vinyals":
            raise ValueError("give either `split` (a folder of class lists) or `classes`, not "
                             "both")
        return self

    def info(self) -> TaskInfo:
        return TaskInfo("classification", "image", (1, self.image_size, self.image_size),
                        n_way=self.n_way, default_model="conv4")

    def load_file(self, path: Path) -> Tensor:
        """A user's drawing as this source's models expect it (:func:`preprocess_drawing`)."""
        with open_image(path) as im:
            arr = preprocess_drawing(im, self.image_size, self.resample)
        return torch.from_numpy(arr.astype(np.float32) / 255.0)[None]


@register_source("omniglot", options=OmniglotOptions)
def omniglot_splits(o: OmniglotOptions) -> Splits:
    """Omniglot's meta-train / meta-val / meta-test sources from a config's options."""
    images = load_omniglot(o.data_dir or os.environ.get("METAPHI_DATA"),
                           image_size=o.image_size, resample=o.resample)
    train, val, test = omniglot_sources(images=images, n_way=o.n_way, k_shot=o.k_shot,
                                        n_query=o.n_query, eval_n_query=o.eval_n_query,
                                        split=o.split, train_n_way=o.train_n_way,
                                        meta_train=o.meta_train_classes, classes=o.classes,
                                        rotations=o.rotations)
    return Splits(train, val, test, o.info())
