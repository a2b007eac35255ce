"""Integration test on the real Omniglot data (decodes all 32460 PNGs once, ~10-20 s).

The data is looked up at ``$METAPHI_DATA/omniglot`` or at ``<workspace>/shared/data/omniglot``
(beside the repository). Where it is missing: under CI (``CI=true``) the test fails, since it is
the evidence that the loader works on the real dataset; elsewhere (a user's fresh clone) it
downloads the data with the library's own checksummed downloader into the metaphi cache, and
skips with a one-line reason only when that is impossible (offline).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from metaphi.data import OMNIGLOT_CHECKSUMS, load_omniglot, omniglot_sources, read_split
from metaphi.data.cache import default_cache_dir
from metaphi.data.download import verify_file
from metaphi.data.omniglot import PACKAGE_SPLITS, download_omniglot
from metaphi.tasks import task_rng

from helpers import shared_data

DATA = shared_data("omniglot")


def _has_data(folder: Path) -> bool:
    return folder.is_dir() and any((folder / n).exists() for n in (
        "images_background.zip", "images_background"))


def omniglot_folder() -> Path:
    """The real data: the shared copy, or (outside CI) a download into the metaphi cache."""
    if _has_data(DATA):
        return DATA
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"real Omniglot data not found at {DATA}: put images_background.zip and "
                    "images_evaluation.zip there, or set METAPHI_DATA to the folder holding "
                    "omniglot/")
    try:
        return download_omniglot(default_cache_dir() / "omniglot", timeout=30, progress=False)
    except Exception as e:  # offline, or a mirror that is down
        pytest.skip(f"no Omniglot data at {DATA} and the download failed "
                    f"({type(e).__name__}: {e}); set METAPHI_DATA to run this test")


def test_real_omniglot(tmp_path):
    data = omniglot_folder()
    for name, accepted in OMNIGLOT_CHECKSUMS.items():
        if (data / name).is_file():
            verify_file(data / name, accepted)  # the official or the known repacked archive

    t0 = time.perf_counter()
    im = load_omniglot(data, cache_dir=tmp_path)
    decode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = load_omniglot(data, cache_dir=tmp_path)
    cached_s = time.perf_counter() - t0
    print(f"\nOmniglot first decode {decode_s:.1f} s, cached load {cached_s:.2f} s")
    assert not im.from_cache and cached.from_cache
    np.testing.assert_array_equal(im.images, cached.images)

    assert im.n_characters == 1623 and len(set(im.characters)) == 1623
    assert im.images.shape == (1623 * 20, 28, 28) and im.images.dtype == np.uint8
    assert np.bincount(im.parts).tolist() == [964, 659]
    assert len({c.split("/")[0] for c in im.characters}) == 50
    assert (im.images.reshape(len(im.images), -1).max(1) > 0).all()  # every drawing has ink

    lists = {w: read_split("vinyals", w, im.folder) for w in ("train", "val", "test", "trainval")}
    assert len(lists["trainval"]) == 4800 and len(lists["test"]) == 1692
    for w, names in lists.items():  # the shipped copy equals the data folder's copy
        shipped = (PACKAGE_SPLITS / "omniglot_vinyals" / f"{w}.txt").read_text().split()
        assert shipped == names

    train, val, test = omniglot_sources(n_way=20, k_shot=5, n_query=15, images=cached)
    assert (len(train.classes), len(val.classes), len(test.classes)) == (4112, 688, 1692)
    task = test.sample(task_rng(0, "test", 0))
    assert task.shapes == ((100, 1, 28, 28), (100,), (300, 1, 28, 28), (300,))
    assert len(set(task.meta["classes"])) == 20 and set(task.meta["classes"]) <= set(lists["test"])
    assert 0.0 <= float(task.support_x.min()) and float(task.support_x.max()) <= 1.0
    rng = np.random.default_rng(0)
    five_way = omniglot_sources(n_way=5, k_shot=1, n_query=15, images=cached)[0]
    t0 = time.perf_counter()
    for _ in range(200):
        five_way.sample(rng)
    print(f"5-way 1-shot 15-query task: {(time.perf_counter() - t0) / 200 * 1e3:.2f} ms")

    # the task-construction benchmarks' written-down alphabet lists name real alphabets
    from metaphi.data.omniglot import omniglot_class_lists
    from metaphi.runs.task_presets import ALPHABET_GROUPS, TASK_POOR_ALPHABETS, group_split
    from metaphi.tasks import ClassLists

    for n, chars in ((5, 139), (10, 272)):
        got = omniglot_class_lists(cached, ClassLists(train=list(TASK_POOR_ALPHABETS[n]),
                                                      test=["split:vinyals/test"]), rotations=[0])
        assert len(got["train"]) == chars and got["test"] == lists["test"]
    for g in ALPHABET_GROUPS:
        got = omniglot_class_lists(cached, ClassLists(**group_split(g)), rotations=[0])
        assert len(got["train"]) > 90 and len(got["test"]) > 90, g


def test_missing_data_fails_under_ci_and_skips_offline_elsewhere(monkeypatch, tmp_path):
    import sys

    module = sys.modules[__name__]
    monkeypatch.setattr(module, "DATA", tmp_path / "nowhere")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="real Omniglot data not found"):
        omniglot_folder()
    monkeypatch.delenv("CI")
    monkeypatch.setenv("METAPHI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("METAPHI_OMNIGLOT_URL", "http://127.0.0.1:9/omniglot")  # nothing there
    with pytest.raises(pytest.skip.Exception, match="the download failed"):
        omniglot_folder()
