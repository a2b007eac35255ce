"""Omniglot loading, validation, cache, rotations, split-based task sources and episode plots,
on a tiny generated copy in the official layout (see omniglot_fixture.py)."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import metaphi.data.omniglot as og
from metaphi.data import (OmniglotData, OmniglotError, load_omniglot, omniglot_dir,
                          omniglot_sources, read_split)
from metaphi.plots.episodes import plot_episode
from metaphi.tasks import task_rng

from omniglot_fixture import (DEFAULT_ALPHABETS, character_names, drawing_png,
                              make_omniglot_fixture, write_split)

N_CHARS = sum(sum(a.values()) for a in DEFAULT_ALPHABETS.values())


@pytest.fixture
def zipped(tmp_path: Path) -> Path:
    return make_omniglot_fixture(tmp_path / "zipped" / "omniglot")


@pytest.fixture
def extracted(tmp_path: Path) -> Path:
    return make_omniglot_fixture(tmp_path / "extracted" / "omniglot", zipped=False)


def load(folder: Path, tmp_path: Path, **kw):
    return load_omniglot(folder, cache_dir=tmp_path / "cache", strict=False, **kw)


def test_zipped_and_extracted_layouts_load_the_same(zipped, extracted, tmp_path):
    a = load_omniglot(zipped, cache_dir=tmp_path / "c1", strict=False)
    b = load_omniglot(extracted, cache_dir=tmp_path / "c2", strict=False)
    assert a.images.shape == (N_CHARS * 20, 28, 28) and a.images.dtype == np.uint8
    assert a.characters == character_names() == b.characters
    np.testing.assert_array_equal(a.images, b.images)
    assert list(a.parts) == [0] * 5 + [1] * 3
    # images[c * 20 + d] is drawer d + 1 of character c: compare with decoding that file alone.
    c, d = 6, 13  # Angelic/character02 (global id 7)
    assert a.characters[c] == "Angelic/character02"
    np.testing.assert_array_equal(a.images[c * 20 + d], og.decode_png(drawing_png(7, d + 1), 28))
    # Ink is stored as 255 on a 0 background; the ink fraction survives downsampling.
    src = np.asarray(Image.open(io.BytesIO(drawing_png(7, d + 1))).convert("L")) < 128
    assert abs(a.images[c * 20 + d].mean() / 255 - src.mean()) < 0.03
    assert a.images[c * 20 + d].max() > 200 and np.median(a.images[c * 20 + d]) == 0


def test_folder_resolution_and_metaphi_data(zipped, tmp_path, monkeypatch):
    data_root = zipped.parent  # holds omniglot/
    assert omniglot_dir(data_root) == zipped
    assert omniglot_dir(zipped) == zipped
    monkeypatch.setenv("METAPHI_DATA", str(data_root))
    im = load_omniglot(cache_dir=tmp_path / "cache", strict=False)
    assert im.folder == zipped and im.n_characters == N_CHARS
    monkeypatch.delenv("METAPHI_DATA")
    with pytest.raises(OmniglotError, match="METAPHI_DATA"):
        load_omniglot(strict=False)
    with pytest.raises(OmniglotError, match="no Omniglot data in .*download_omniglot"):
        load_omniglot(tmp_path / "empty" / "omniglot", strict=False)


def test_strict_validation_names_missing_alphabets_and_characters(zipped, tmp_path):
    with pytest.raises(OmniglotError) as e:
        load_omniglot(zipped, cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert ("images_background/Latin is missing images_background/Latin/character04-26\n"
            in msg)
    assert "images_background/Greek is missing images_background/Greek/character03-24\n" in msg
    assert "images_background is missing 28 of 30 alphabets: " in msg
    assert "images_background/Alphabet_of_the_Magi (expected 20 characters)" in msg
    assert "images_evaluation/Angelic is missing images_evaluation/Angelic/character04-20" in msg
    assert "images_evaluation/Tibetan (expected 42 characters)" in msg
    assert "strict=False" in msg


@pytest.mark.parametrize("zip_it", [True, False])
def test_missing_drawings_are_named(tmp_path, zip_it):
    folder = make_omniglot_fixture(tmp_path / "omniglot", zipped=zip_it,
                                   omit=["Latin/character02/0002_07.png",
                                         "Latin/character02/0002_12.png",
                                         "Angelic/character03/0008_20.png"])
    with pytest.raises(OmniglotError) as e:
        load(folder, tmp_path)
    msg = str(e.value)
    assert "images_background/Latin/character02 is missing drawing(s) 07, 12 of 01-20" in msg
    assert "images_evaluation/Angelic/character03 is missing drawing(s) 20 of 01-20" in msg
    assert "Greek" not in msg  # complete characters are not reported


@pytest.mark.parametrize("zip_it", [True, False])
def test_corrupt_files_are_named(tmp_path, zip_it):
    good = drawing_png(4, 5)
    folder = make_omniglot_fixture(tmp_path / "omniglot", zipped=zip_it, replace={
        "Greek/character01/0004_05.png": good[: len(good) // 2],  # truncated
        "Angelic/character01/0006_02.png": b"not a png at all"})
    with pytest.raises(OmniglotError) as e:
        load(folder, tmp_path)
    msg = str(e.value)
    assert "2 Omniglot image file(s)" in msg
    assert "Greek/character01/0004_05.png is corrupt" in msg
    assert "Angelic/character01/0006_02.png is corrupt" in msg
    assert not (tmp_path / "cache" / "omniglot_28px.npz").exists()  # nothing half-built cached


def test_unexpected_file_names_are_reported(tmp_path):
    folder = make_omniglot_fixture(tmp_path / "omniglot", zipped=False)
    (folder / "images_background/Latin/character01/extra.png").write_bytes(drawing_png(1, 1))
    (folder / "images_background/Latin/.DS_Store").write_bytes(b"junk")  # ignored
    with pytest.raises(OmniglotError, match=r"unexpected file 'Latin/character01/extra.png'"):
        load(folder, tmp_path)


def test_second_load_uses_cache_without_decoding(zipped, tmp_path, monkeypatch):
    first = load(zipped, tmp_path)
    assert not first.from_cache
    cache = tmp_path / "cache" / "omniglot_28px.npz"
    assert first.cache_path == cache and cache.is_file()
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp files left

    def no_decoding(*args, **kwargs):
        raise AssertionError("PNG decoded although a valid cache exists")

    monkeypatch.setattr(og, "decode_png", no_decoding)
    second = load(zipped, tmp_path)
    assert second.from_cache
    np.testing.assert_array_equal(first.images, second.images)
    assert first.characters == second.characters
    np.testing.assert_array_equal(first.parts, second.parts)
    # A different image size is a different cache entry, so it must decode (and here it fails).
    with pytest.raises(OmniglotError, match="PNG decoded although"):
        load(zipped, tmp_path, image_size=20)


def test_nearest_resampling_gives_binary_strokes_and_its_own_cache(zipped, tmp_path):
    smooth = load(zipped, tmp_path)
    binary = load(zipped, tmp_path, resample="nearest")
    assert binary.cache_path.name == "omniglot_28px_nearest.npz" and not binary.from_cache
    assert set(np.unique(binary.images)) <= {0, 255} and len(np.unique(smooth.images)) > 2
    # the same strokes: where the nearest-neighbour image has ink, the smooth one has some
    assert smooth.images[binary.images == 255].mean() > 100
    assert load(zipped, tmp_path, resample="nearest").from_cache
    with pytest.raises(ValueError, match=r"resample must be one of \('lanczos', 'nearest'\)"):
        load(zipped, tmp_path, resample="bicubic")
    mini_split(zipped)
    src = omniglot_sources(zipped, n_way=3, k_shot=2, n_query=4, split="mini",
                           cache_dir=tmp_path / "cache", strict=False, resample="nearest")[0]
    x = src.sample(task_rng(0, "train", 0)).support_x
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}


def test_cache_is_rebuilt_when_data_changes_or_cache_is_damaged(extracted, tmp_path):
    first = load(extracted, tmp_path)
    f = extracted / "images_background/Latin/character01/0001_01.png"
    f.write_bytes(drawing_png(99, 1))  # different drawing, same name
    os.utime(f, ns=(1, 1))
    changed = load(extracted, tmp_path)
    assert not changed.from_cache
    i = first.characters.index("Latin/character01") * 20  # its drawer 01
    assert not np.array_equal(changed.images[i], first.images[i])
    np.testing.assert_array_equal(np.delete(changed.images, i, 0), np.delete(first.images, i, 0))
    assert load(extracted, tmp_path).from_cache
    first.cache_path.write_bytes(b"garbage")  # a damaged cache is rebuilt, not trusted
    again = load(extracted, tmp_path)
    assert not again.from_cache
    np.testing.assert_array_equal(again.images, changed.images)


def test_default_cache_never_writes_into_the_data_folder(zipped, tmp_path, monkeypatch):
    monkeypatch.setenv("METAPHI_CACHE", str(tmp_path / "usercache"))
    im = load_omniglot(zipped, strict=False)
    assert im.cache_path == tmp_path / "usercache" / "omniglot_28px.npz" and im.cache_path.is_file()
    assert not (zipped / "cache").exists()
    assert load_omniglot(zipped, strict=False).from_cache
    (zipped / "cache").mkdir()  # a cache/ folder the user made next to the data is used
    im = load_omniglot(zipped, strict=False)
    assert im.cache_path == zipped / "cache" / "omniglot_28px.npz" and im.cache_path.is_file()


def test_rotations_are_classes_rotated_on_the_fly(zipped, tmp_path):
    im = load(zipped, tmp_path)
    data = OmniglotData(im)
    assert len(data.class_names) == 4 * N_CHARS and len(data) == 4 * N_CHARS * 20
    assert data.class_names[:5] == ["Greek/character01/rot000", "Greek/character01/rot090",
                                    "Greek/character01/rot180", "Greek/character01/rot270",
                                    "Greek/character02/rot000"]
    c = data.class_names.index("Greek/character02/rot000")
    items = np.flatnonzero(data.labels == c)
    assert len(items) == 20
    base = data.get_uint8(items[[3]])[0]
    np.testing.assert_array_equal(base, im.character_images("Greek/character02")[3])
    for deg in (90, 180, 270):
        r = data.class_names.index(f"Greek/character02/rot{deg:03d}")
        rotated = data.get_uint8(np.flatnonzero(data.labels == r)[[3]])[0]
        # Same direction as PIL's rotate (counter-clockwise), and a real change of the image.
        pil = np.asarray(Image.fromarray(base).rotate(deg))
        np.testing.assert_array_equal(rotated, pil)
        assert not np.array_equal(rotated, base)
    x = data.get(np.array([items[3], items[0]]))
    assert x.shape == (2, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    np.testing.assert_allclose(x[0, 0].numpy(), base / 255.0, rtol=0, atol=1e-7)
    assert data.base.images is im.images  # no copy of the images per rotation


def test_bad_class_names_are_rejected(zipped, tmp_path):
    im = load(zipped, tmp_path)
    with pytest.raises(OmniglotError, match="not of the form"):
        OmniglotData(im, ["Latin/character01/rot045"])
    with pytest.raises(OmniglotError, match="not in the loaded data"):
        OmniglotData(im, ["Latin/character09/rot000"])
    with pytest.raises(OmniglotError, match="more than once"):
        OmniglotData(im, ["Latin/character01/rot000"] * 2)


def mini_split(folder: Path) -> dict[str, list[str]]:
    rot = lambda chars: [f"{c}/rot{r:03d}" for c in chars for r in (0, 90, 180, 270)]  # noqa: E731
    lists = {"train": rot(["Latin/character01", "Latin/character02", "Greek/character01"]),
             "val": rot(["Latin/character03", "Greek/character02"]),
             "test": rot(["Angelic/character01", "Angelic/character02"])}
    write_split(folder, "mini", lists)
    return lists


def test_split_based_sources(zipped, tmp_path):
    lists = mini_split(zipped)
    train, val, test = omniglot_sources(zipped, n_way=3, k_shot=2, n_query=4, eval_n_query=6,
                                        split="mini", cache_dir=tmp_path / "cache", strict=False)
    assert (train.name, val.name, test.name) == ("meta-train", "meta-val", "meta-test")
    for src, which in ((train, "train"), (val, "val"), (test, "test")):
        assert sorted(src.data.class_names[c] for c in src.classes) == sorted(lists[which])
    task = train.sample(task_rng(0, "train", 0))
    assert task.shapes == ((6, 1, 28, 28), (6,), (12, 1, 28, 28), (12,))
    assert set(task.meta["classes"]) <= set(lists["train"])
    t = test.sample(task_rng(0, "test", 0))
    assert t.query_x.shape[0] == 18 and set(t.meta["classes"]) <= set(lists["test"])
    # Support and query of a class are its drawings (same rotated character) and never overlap.
    data = train.data
    for c in range(3):
        s_imgs = task.support_x[task.support_y == c]
        q_imgs = task.query_x[task.query_y == c]
        cls = data.class_names.index(task.meta["classes"][c])
        all_imgs = data.get(np.flatnonzero(data.labels == cls))
        for img in torch.cat([s_imgs, q_imgs]):
            assert int(((all_imgs - img).abs().flatten(1).max(1).values == 0).sum()) >= 1
        pairs = (s_imgs[:, None] - q_imgs[None]).abs().flatten(2).max(2).values
        assert (pairs > 0).all()
    # Same seed, same task: sampling is reproducible.
    again = train.sample(task_rng(0, "train", 0))
    assert torch.equal(again.support_x, task.support_x) and again.meta == task.meta


def test_trainval_meta_trains_on_train_and_val_classes_without_meta_val(zipped, tmp_path):
    from metaphi.learners import ProtoNet
    from metaphi.loops.train import TrainOptions, meta_train
    from metaphi.models import conv4_features

    lists = mini_split(zipped)
    lists["trainval"] = lists["train"] + lists["val"]
    write_split(zipped, "mini", lists)
    im = load(zipped, tmp_path)
    train, val, test = omniglot_sources(images=im, n_way=3, k_shot=1, n_query=2,
                                        split="mini", meta_train="trainval")
    assert val is None and (train.name, test.name) == ("meta-train", "meta-test")
    assert sorted(train.data.class_names[c] for c in train.classes) == sorted(lists["trainval"])
    assert sorted(test.data.class_names[c] for c in test.classes) == sorted(lists["test"])
    with pytest.raises(OmniglotError, match="meta_train must be 'train' or 'trainval'"):
        omniglot_sources(images=im, split="mini", meta_train="val")
    # No meta-validation: the run keeps the last step's φ and logs no val metric.
    torch.manual_seed(0)
    learner = ProtoNet(conv4_features(hidden=4))
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    constant = lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda _: 1.0)  # noqa: E731
    state = meta_train(learner, train, None, opt, constant(opt), tmp_path / "run",
                       TrainOptions(steps=3, meta_batch=2, val_every=1, progress=False))
    assert state.best_step == 3 and state.best_value is None
    for k, v in learner.state_dict().items():
        assert torch.equal(state.best_params[k], v)
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3 and all("val_metric" not in r for r in rows)
    # Resumed with no step left to do, the checkpoint's (last) φ is the one deployed.
    again = ProtoNet(conv4_features(hidden=4))
    opt = torch.optim.Adam(again.parameters(), lr=1e-2)
    state2 = meta_train(again, train, None, opt, constant(opt), tmp_path / "run",
                        TrainOptions(steps=3, meta_batch=2, resume=True, progress=False))
    assert state2.best_step == 3
    for k, v in state.best_params.items():
        assert torch.equal(state2.best_params[k], v)


def test_split_errors_are_clear(zipped, tmp_path):
    im = load(zipped, tmp_path)
    with pytest.raises(OmniglotError, match="not in the loaded data .*strict=True"):
        omniglot_sources(images=im, split="vinyals")
    with pytest.raises(OmniglotError, match="unknown Omniglot split 'nosuch'"):
        omniglot_sources(images=im, split="nosuch")
    bad = write_split(zipped, "bad", {"train": ["Latin/character01/rot000", "Latin/char1"]})
    with pytest.raises(OmniglotError, match=r"train.txt:2: 'Latin/char1' is not a class name"):
        read_split("bad", "train", zipped)
    lists = mini_split(zipped)
    lists["val"] = lists["val"] + lists["train"][:1]
    write_split(zipped, "overlap", lists)
    with pytest.raises(OmniglotError, match="must not share classes"):
        omniglot_sources(images=im, split="overlap", n_way=2)
    assert bad.is_dir()


def test_shipped_vinyals_split_lists():
    lists = {w: read_split("vinyals", w) for w in ("train", "val", "test", "trainval")}
    assert {w: len(v) for w, v in lists.items()} == {"train": 4112, "val": 688, "test": 1692,
                                                     "trainval": 4800}
    assert lists["trainval"] == lists["train"] + lists["val"]
    chars = {w: {c.rsplit("/", 1)[0] for c in v} for w, v in lists.items()}
    assert not (chars["trainval"] & chars["test"])
    assert len(chars["trainval"]) + len(chars["test"]) == 1623


def test_episode_png_marks_mistakes_in_red(zipped, tmp_path):
    lists = mini_split(zipped)
    train, _, _ = omniglot_sources(zipped, n_way=3, k_shot=2, n_query=3, split="mini",
                                   cache_dir=tmp_path / "cache", strict=False)
    assert len(lists["train"]) == 12
    task = train.sample(task_rng(1, "train", 0))

    def red_pixels(path: Path) -> int:
        a = np.asarray(Image.open(path).convert("RGB")).astype(int)
        return int(((a[..., 0] > 180) & (a[..., 1] < 80) & (a[..., 2] < 80)).sum())

    right = plot_episode(task, tmp_path / "right.png", task.query_y.clone())
    wrong_pred = task.query_y.clone()
    wrong_pred[0] = (wrong_pred[0] + 1) % 3
    wrong = plot_episode(task, tmp_path / "wrong.png", wrong_pred, title="demo")
    plain = plot_episode(task, tmp_path / "plain.png")
    for p in (right, wrong, plain):
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
    assert red_pixels(right) == 0 and red_pixels(plain) == 0
    assert red_pixels(wrong) > 50
    logits = torch.nn.functional.one_hot(wrong_pred, 3).float()
    from_logits = plot_episode(task, tmp_path / "logits.png", logits, title="demo")
    assert np.array_equal(np.asarray(Image.open(from_logits)), np.asarray(Image.open(wrong)))
    with pytest.raises(ValueError, match="predictions must be 9 labels"):
        plot_episode(task, tmp_path / "x.png", wrong_pred[:4])
    flat = type(task)(task.support_x.flatten(1), task.support_y, task.query_x.flatten(1),
                      task.query_y)
    with pytest.raises(ValueError, match="needs image tasks"):
        plot_episode(flat, tmp_path / "x.png")


def test_data_subcommand(zipped, tmp_path, capsys):
    import argparse

    from metaphi.data import cli

    parser = argparse.ArgumentParser(prog="metaphi")
    cli.add_parser(parser.add_subparsers(dest="command"))
    argv = ["data", "omniglot", "--root", str(zipped), "--cache-dir", str(tmp_path / "c")]
    args = parser.parse_args(argv + ["--partial"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"Omniglot in {zipped}: 3 alphabets, 8 characters, 160 images at 28x28 (decoded" in out
    assert "Vinyals split (rotated-character classes): train 4112, val 688, test 1692" in out
    assert args.func(args) == 0
    assert "(loaded from cache in" in capsys.readouterr().out
    from metaphi.cli import main

    assert main(argv) == 2  # one error path: stderr, exit code 2
    assert "metaphi: error: the Omniglot data in" in capsys.readouterr().err
