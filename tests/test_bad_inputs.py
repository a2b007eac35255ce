"""Bad and hostile inputs, by kind: config, CLI, images, text, checkpoints, downloads, writes.

Every case asserts that the failure is a one-line ``metaphi: error:`` (exit code 2, no
traceback) naming the file, option or field at fault, and that nothing that existed before the
command changed (run folders are byte-identical, no run folder or temporary file appears).
metaphi reads no CSV outside forecasting (``metaphi predict`` writes one; the forecasting tool's
CSVs are tested with it), so there is no CSV kind here. Cases are cheap: configs are built in
memory, the CLI runs in-process, the data are a few tiny images, the two runs take a few steps.
"""
from __future__ import annotations

import errno
import http.server
import io
import json
import os
import shutil
import struct
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metaphi.cli import main

SINE = "sinusoid-maml-5shot"
TINY = ["steps=2", "meta_batch=2", "val_every=1", "val_tasks=2", "test_tasks=2",
        "checkpoint_every=1", "model.hidden=[8]", "--no-progress"]
FOLDER = ["omniglot-protonet-5w1s", "task.source=folder", "task.n_way=2", "task.train_n_way=null",
          "task.n_query=1", "task.eval_n_query=1", "task.image_size=8", "model.width=2",
          "model.depth=2", *TINY[:-2], "--no-progress"]


# -- helpers ----------------------------------------------------------------------------------
def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` (or the file itself) with its bytes."""
    out = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(root.rglob("*"))
        out.update({str(p): p.read_bytes() for p in paths if p.is_file()})
    return out


def fails(capsys, argv: list[str], *named: str) -> str:
    """Run the CLI; it must fail with one clear error (exit 2) that contains ``named``."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert err.startswith("metaphi: error: ") and "Traceback" not in err, err
    for text in named:
        assert str(text) in err, (text, err)
    return err


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG that declares ``width`` x ``height`` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def make_images(root: Path, classes: int = 10, per_class: int = 3, size: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"c{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            (d / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 255, (size, size),
                                                                dtype=np.uint8)))
    return root


def write_config(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished tiny sinusoid run and a finished tiny image-folder run (read-only to tests:
    copy them before changing anything)."""
    tmp = tmp_path_factory.mktemp("runs")
    assert main(["train", SINE, "--out", str(tmp / "sine"), *TINY]) == 0
    data = make_images(tmp / "images")
    assert main(["train", *FOLDER, f"task.data_dir={data}", "--out", str(tmp / "folder")]) == 0
    return tmp


@pytest.fixture
def copy_run(runs, tmp_path):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(runs / name, tmp_path / name))
    return copy


# -- config: files and values --------------------------------------------------------------------
CONFIG = "task: {source: sinusoid}\nlearner: {name: maml}\nsteps: 2\n"
CONFIG_FILES = {
    "latin-1 bytes": ("name: caf\xe9\n".encode("latin-1") + CONFIG.encode(), ["UTF-8", "byte 9"]),
    "UTF-16": (CONFIG.encode("utf-16"), ["UTF-16", "save it as UTF-8"]),
    "broken YAML": (CONFIG + "learner: [\n", ["not valid YAML", "line"]),
    "key twice": (CONFIG + "steps: 3\n", ["'steps' is given twice"]),
    "a list": (b"- 1\n- 2\n", ["mapping of config fields"]),
    "tab indentation": ("task:\n\tsource: sinusoid\n", ["not valid YAML", "line 2"]),
    "unknown field": (CONFIG + "stepz: 3\n", ["stepz", "unknown field"]),
    "unknown learner": (CONFIG.replace("maml", "mamll"), ["learner.name", "mamll"]),
    "learner option of another": (CONFIG.replace("{name: maml}", "{name: protonet, inner_lr: 1}"),
                                  ["learner.inner_lr"]),
    "steps not a number": (CONFIG.replace("steps: 2", "steps: abc"), ["steps", "abc"]),
    "steps 0": (CONFIG.replace("steps: 2", "steps: 0"), ["steps", "greater than or equal"]),
    "inner_lr inf": (CONFIG.replace("{name: maml}", "{name: maml, inner_lr: .inf}"),
                     ["learner.inner_lr", "finite"]),
    "lr nan": (CONFIG + "meta_optimizer: {name: adam, lr: .nan}\n",
               ["meta_optimizer.lr", "finite"]),
    "negative seed": (CONFIG + "seed: -3\n", ["seed", "-3"]),
    "negative hidden width": (CONFIG + "model: {name: mlp, hidden: [-1]}\n",
                              ["model.hidden.0"]),
    "amplitude reversed": (CONFIG.replace("{source: sinusoid}",
                                          "{source: sinusoid, amplitude: [5, 1]}"),
                           ["task.amplitude", "low < high"]),
    "learner not a mapping": (CONFIG.replace("{name: maml}", "3"), ["learner", "mapping"]),
    "renamed field": (CONFIG + "optim: {name: adam}\n", ["optim", "renamed to meta_optimizer"]),
    "loss of another kind": (CONFIG + "loss: ce\n", ["loss", "regression"]),
    "population field": (CONFIG + "workers: 2\n", ["workers", "population"]),
    "imports not a list": (CONFIG + "imports: 3\n", ["imports", "list"]),
    "imports missing file": (CONFIG + "imports: [nowhere.py]\n", ["imports", "nowhere.py"]),
    "imports missing module": (CONFIG + "imports: [no_such_module_x]\n",
                               ["imports", "no_such_module_x"]),
    "image source, vector model": (CONFIG.replace("{source: sinusoid}",
                                                  "{source: folder, data_dir: x}") +
                                   "model: {name: mlp}\n", ["model.name", "mlp"]),
    "split fractions": (CONFIG.replace("{source: sinusoid}", "{source: folder, data_dir: x, "
                                       "split_fractions: [0.9, 0.5, 0.1]}").replace(
                                           "maml", "protonet"), ["task.split_fractions"]),
}


@pytest.mark.parametrize("content,named", CONFIG_FILES.values(), ids=CONFIG_FILES.keys())
def test_config_file(capsys, tmp_path, content, named):
    cfg = write_config(tmp_path / "run.yaml", content)
    before = snapshot(tmp_path)
    fails(capsys, ["train", cfg, "--out", tmp_path / "out", "--no-progress"], *named)
    assert snapshot(tmp_path) == before  # no run folder, the config untouched


USER_MODULES = {
    "raises": ("raise RuntimeError('boom')\n", ["bad_ext.py", "RuntimeError: boom", "--debug"]),
    "syntax error": ("def (:\n", ["bad_ext.py", "SyntaxError"]),
    "not UTF-8": (b"x = '\xff'\n", ["bad_ext.py", "SyntaxError"]),
}


@pytest.mark.parametrize("source,named", USER_MODULES.values(), ids=USER_MODULES.keys())
def test_config_imports_a_broken_module(capsys, tmp_path, source, named):
    write_config(tmp_path / "bad_ext.py", source)
    cfg = write_config(tmp_path / "run.yaml", CONFIG + "imports: [bad_ext.py]\n")
    before = snapshot(tmp_path)
    fails(capsys, ["train", cfg, "--out", tmp_path / "out"], *named)
    assert snapshot(tmp_path) == before


CONFIG_PATHS = {
    "a folder": (lambda d: (d / "x.yaml").mkdir() or d / "x.yaml", ["x.yaml", "is a folder"]),
    "missing": (lambda d: d / "none.yaml", ["none.yaml", "does not exist"]),
    "unknown preset": (lambda d: "sinusoid-mam", ["unknown preset", "sinusoid-mam"]),
}


@pytest.mark.parametrize("make,named", CONFIG_PATHS.values(), ids=CONFIG_PATHS.keys())
def test_config_path(capsys, tmp_path, make, named):
    fails(capsys, ["train", make(tmp_path), "--out", tmp_path / "out"], *named)
    assert not (tmp_path / "out").exists()


def test_a_config_with_a_byte_order_mark_is_fine(tmp_path):
    from metaphi.runs.config import load_config_file

    cfg = write_config(tmp_path / "bom.yaml", "\ufeff" + CONFIG)
    assert load_config_file(cfg)["steps"] == 2


# -- CLI options -----------------------------------------------------------------------------
OVERRIDES = {
    "not a section": (["steps.x=1"], ["steps.x", "not a section"]),
    "bad YAML value": (["task.k_shot=[1"], ["task.k_shot=[1", "not valid YAML"]),
    "unknown field": (["learner.inner_lrr=0.1"], ["learner.inner_lrr"]),
    "--seed -3": (["--seed", "-3"], ["seed", "-3"]),
    "--threads -1": (["--threads", "-1"], ["--threads"]),
    "--threads 0": (["--threads", "0"], ["--threads"]),
    "--task-threads 0": (["--task-threads", "0"], ["--task-threads"]),
    "--device gpu": (["--device", "gpu"], ["--device", "gpu"]),
    "--device tpu": (["--device", "tpu"], ["--device", "tpu"]),
    "--device cuda:abc": (["--device", "cuda:abc"], ["--device", "cuda:abc"]),
    "--device empty": (["--device", ""], ["device"]),
}


@pytest.mark.parametrize("extra,named", OVERRIDES.values(), ids=OVERRIDES.keys())
def test_cli_train_option(capsys, tmp_path, extra, named):
    fails(capsys, ["train", SINE, "--out", tmp_path / "out", *TINY, *extra], *named)
    assert not (tmp_path / "out").exists()


def test_cli_device_without_its_hardware(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device in ("cuda", "cuda:1", "mps"):
        fails(capsys, ["train", SINE, "--out", tmp_path / "out", *TINY, "--device", device],
              "--device", device)
    assert not (tmp_path / "out").exists()


def test_cli_out_is_a_file_or_under_one(capsys, tmp_path):
    (tmp_path / "f").write_text("keep me")
    fails(capsys, ["train", SINE, "--out", tmp_path / "f", *TINY], "--out", "is a file")
    fails(capsys, ["train", SINE, "--out", tmp_path / "f" / "run", *TINY], "--out", "is a file")
    assert (tmp_path / "f").read_text() == "keep me" and len(list(tmp_path.iterdir())) == 1


def test_cli_out_not_writable(capsys, tmp_path, monkeypatch):
    import metaphi.runs.run as run_module

    # (the tests may run as root, who may write anywhere: the permission is simulated)
    monkeypatch.setattr(run_module.os, "access", lambda path, mode: False)
    fails(capsys, ["train", SINE, "--out", tmp_path / "ro" / "run", *TINY], "--out",
          "not writable")
    assert not (tmp_path / "ro").exists()


def test_cli_out_holds_a_run(capsys, copy_run, tmp_path):
    run = copy_run("sine")
    before = snapshot(run)
    fails(capsys, ["train", SINE, "--out", run, *TINY], str(run), "--resume")
    # a population config into a gradient run's folder: refused before its config is written
    fails(capsys, ["train", SINE, "--out", run, *TINY, "meta_optimizer={name: es, popsize: 4}",
                   "workers=0"], str(run))
    fails(capsys, ["train", SINE, "--out", run, *TINY, "--resume", "learner.inner_lr=0.5"],
          "learner.inner_lr", "config.yaml")
    assert snapshot(run) == before


def test_cli_resume_without_a_run(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    fails(capsys, ["train", SINE, "--out", tmp_path / "empty", *TINY, "--resume"],
          "--resume", "no config.yaml")
    assert list((tmp_path / "empty").iterdir()) == []


TEST_OPTIONS = {
    "--tasks 0": (["--tasks", "0"], ["--tasks"]),
    "--tasks -5": (["--tasks", "-5"], ["--tasks"]),
    "--seed -3": (["--seed", "-3"], ["--seed"]),
    "--device tpu": (["--device", "tpu"], ["--device", "tpu"]),
    "--device cuda:abc": (["--device", "cuda:abc"], ["--device", "cuda:abc"]),
    "learner.inner_lr=-1": (["learner.inner_lr=-1"], ["inner_lr"]),
}


@pytest.mark.parametrize("extra,named", TEST_OPTIONS.values(), ids=TEST_OPTIONS.keys())
def test_cli_test_option(capsys, runs, extra, named):
    before = snapshot(runs / "sine")
    fails(capsys, ["test", runs / "sine", "--no-progress", *extra], *named)
    assert snapshot(runs / "sine") == before


def test_cli_test_takes_learner_options_that_leave_phi_alone(capsys, runs):
    got = {}
    for steps in (1, 8):
        assert main(["test", str(runs / "sine"), "--tasks", "5", "--no-progress", "--json",
                     f"learner.eval_inner_steps={steps}"]) == 0
        got[steps] = json.loads(capsys.readouterr().out)["meta_test"]["mean"]
    assert got[1] != got[8]  # the same φ and tasks, adapted with other inner steps


def test_cli_test_not_a_run_folder(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    fails(capsys, ["test", tmp_path / "nowhere"], "nowhere", "does not exist")
    fails(capsys, ["test", tmp_path / "file"], "file", "not a run folder")
    fails(capsys, ["test", tmp_path], str(tmp_path), "not a run folder")


def test_cli_predict_bad_folders(capsys, runs, tmp_path):
    images = runs / "images"
    (tmp_path / "f").write_text("x")
    (tmp_path / "flat").mkdir()
    shutil.copy(images / "c0" / "0.png", tmp_path / "flat")
    before = snapshot(runs / "folder")
    run = ["predict", runs / "folder"]
    fails(capsys, [*run, "--support", images, "--query", images / "c0", "--out", tmp_path / "f"],
          "--out", "is a file")
    fails(capsys, [*run, "--support", images, "--query", images / "c0" / "0.png"],
          "--query", "is a file")
    fails(capsys, [*run, "--support", tmp_path / "none", "--query", images / "c0"],
          "none", "does not exist")
    fails(capsys, [*run, "--support", tmp_path / "flat", "--query", images / "c0"],
          "flat", "no class sub-folders")
    fails(capsys, [*run, "--support", images, "--query", images / "c0", "--device", "gpu"],
          "--device")
    assert snapshot(runs / "folder") == before and not (runs / "folder" / "predictions").exists()


def test_cli_predict_on_a_regression_run(capsys, runs):
    before = snapshot(runs / "sine")
    fails(capsys, ["predict", runs / "sine", "--support", runs / "images", "--query",
                   runs / "images" / "c0"], str(runs / "sine"), "regression run")
    assert snapshot(runs / "sine") == before


def test_cli_data_omniglot(capsys, tmp_path):
    fails(capsys, ["data", "omniglot", "--root", tmp_path / "none"], "no Omniglot data in",
          "none")
    fails(capsys, ["data", "omniglot", "--root", tmp_path, "--image-size", "0"],
          "--image-size")
    assert list(tmp_path.iterdir()) == []


# -- images: a user's training folder and `metaphi predict` ---------------------------------------
def _truncated_png() -> bytes:
    full = png_bytes(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
    return full[: len(full) * 2 // 3]


BAD_IMAGES = {
    "not an image": ("bad.png", lambda: b"\x89PNG garbage", "cannot read image"),
    "empty file": ("bad.png", lambda: b"", "cannot read image"),
    "text named .jpg": ("bad.jpg", lambda: b"hello", "cannot read image"),
    "truncated PNG": ("bad.png", _truncated_png, "cannot read image"),
    "100 megapixels": ("bad.png", lambda: png_header(10_000, 10_000), "pixels"),
    "400 megapixels": ("bad.png", lambda: png_header(20_000, 20_000), "pixels"),
}


@pytest.mark.parametrize("name,make,said", BAD_IMAGES.values(), ids=BAD_IMAGES.keys())
def test_image_in_a_training_folder(capsys, runs, tmp_path, name, make, said):
    data = Path(shutil.copytree(runs / "images", tmp_path / "images"))
    (data / "c3" / name).write_bytes(make())
    before = snapshot(data)
    t0 = time.perf_counter()
    fails(capsys, ["train", *FOLDER, f"task.data_dir={data}", "--out", tmp_path / "out"],
          f"c3/{name}", said)
    assert time.perf_counter() - t0 < 5  # refused when the folder is read, before training
    assert snapshot(data) == before and not (tmp_path / "out").exists()


def test_image_problems_are_listed_together(tmp_path):
    from metaphi.data.images import ImageFileError, check_images

    paths = []
    for i in range(12):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(b"junk")
    with pytest.raises(ImageFileError, match=r"12 of 12 image files cannot be used(.|\n)*"
                                             r"0.png(.|\n)*and 2 more"):
        check_images(paths)


FOLDER_LAYOUTS = {
    "data_dir missing": (lambda d: d / "none", ["none", "does not exist"]),
    "data_dir a file": (lambda d: (d / "f.png").write_bytes(b"x") and d / "f.png",
                        ["f.png", "is a file"]),
    "no class folders": (lambda d: (d / "flat").mkdir() or d / "flat", ["no class sub-folders"]),
    "a class without images": (lambda d: make_images(d / "e", 5) and (d / "e" / "c9").mkdir()
                               or d / "e", ["c9", "holds no images"]),
    "too few images a class": (lambda d: make_images(d / "s", 6, 1), ["k_shot + n_query"]),
    "too few classes": (lambda d: make_images(d / "t", 2), ["2-way", "classes"]),
}


@pytest.mark.parametrize("make,named", FOLDER_LAYOUTS.values(), ids=FOLDER_LAYOUTS.keys())
def test_image_folder_layout(capsys, tmp_path, make, named):
    data = make(tmp_path)
    fails(capsys, ["train", *FOLDER, f"task.data_dir={data}", "--out", tmp_path / "out"], *named)
    assert not (tmp_path / "out").exists()


def test_image_bad_query_for_predict(capsys, runs, tmp_path):
    query = tmp_path / "query"
    query.mkdir()
    shutil.copy(runs / "images" / "c0" / "0.png", query / "good.png")
    (query / "bad.png").write_bytes(png_header(20_000, 20_000))
    before = snapshot(runs / "folder")
    fails(capsys, ["predict", runs / "folder", "--support", runs / "images", "--query", query,
                   "--out", tmp_path / "pred"], "bad.png", "pixels")
    assert snapshot(runs / "folder") == before and not (tmp_path / "pred").exists()


def test_image_hidden_resource_forks_are_not_images(tmp_path):
    from metaphi.tasks.fewshot import ImageFolderData

    data = make_images(tmp_path / "d", 2, 2)
    (data / "c0" / "._0.png").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    assert len(ImageFolderData(data).paths) == 4


# -- text: encodings and damaged text files metaphi reads ----------------------------------------
RUN_CONFIGS = {
    "undecodable bytes": (b"name: \xff\xfe\xfa\n", ["config.yaml", "not UTF-8", "restore"]),
    "broken YAML": (b"task: [\n", ["config.yaml", "not valid YAML", "restore"]),
    "a list": (b"- a\n", ["config.yaml", "damaged"]),
    "key twice": (b"seed: 1\nseed: 2\n", ["config.yaml", "'seed' is given twice"]),
    "invalid value": (b"task: {source: sinusoid}\nlearner: {name: maml}\nsteps: -1\n",
                      ["steps"]),
}


@pytest.mark.parametrize("content,named", RUN_CONFIGS.values(), ids=RUN_CONFIGS.keys())
def test_text_damaged_run_config(capsys, copy_run, content, named):
    run = copy_run("sine")
    (run / "config.yaml").write_bytes(content)
    before = snapshot(run)
    fails(capsys, ["test", run, "--no-progress"], *named)
    fails(capsys, ["train", SINE, "--out", run, *TINY, "--resume"], *named)
    assert snapshot(run) == before


def test_text_split_files(tmp_path):
    from metaphi.data.omniglot import OmniglotError, read_split

    (tmp_path / "train.txt").write_bytes("Gr\xe8ek/character01/rot000\n".encode("latin-1"))
    with pytest.raises(OmniglotError, match="train.txt is not UTF-8"):
        read_split(tmp_path, "train")
    (tmp_path / "val.txt").write_text("Greek/character01/rot000\nGreek/char 2\n")
    with pytest.raises(OmniglotError, match=r"val.txt:2: 'Greek/char 2'"):
        read_split(tmp_path, "val")


def test_text_damaged_metrics_log(capsys, copy_run):
    run = copy_run("sine")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "{garbage", *lines[1:]]) + "\n")
    before = snapshot(run)
    fails(capsys, ["train", SINE, "--out", run, *TINY, "steps=3", "--resume"],
          "metrics.jsonl:2", "damaged")
    assert snapshot(run) == before


# -- checkpoints --------------------------------------------------------------------------------
def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/metaphi_bad_inputs_marker",))


CHECKPOINTS = {
    "empty best.pt": ("best.pt", lambda r: b"", ["best.pt", "ends too early"]),
    "garbage best.pt": ("best.pt", lambda r: b"\x00garbage", ["best.pt", "cannot load"]),
    "truncated best.pt": ("best.pt", lambda r: (r / "best.pt").read_bytes()[:200],
                          ["best.pt", "cannot load"]),
    "code in best.pt": ("best.pt", lambda r: _torch_bytes({"learner": _Evil()}),
                        ["best.pt", "refused by the safe loader"]),
    "plain state_dict": ("best.pt", lambda r: _torch_bytes({"w": torch.zeros(2)}),
                         ["best.pt", "not a metaphi checkpoint", "'learner'"]),
    "a list": ("best.pt", lambda r: _torch_bytes([1, 2]), ["best.pt", "not a metaphi"]),
    "another run's best.pt": ("best.pt", lambda r: (r.parent / "folder" / "best.pt").read_bytes(),
                              ["best.pt", "written by another run"]),
    "garbage checkpoint.pt": ("checkpoint.pt", lambda r: b"garbage",
                              ["checkpoint.pt", "cannot load"]),
    "checkpoint without a step": ("checkpoint.pt", lambda r: _torch_bytes({"learner": {}}),
                                  ["checkpoint.pt", "no step or generation"]),
}


@pytest.mark.parametrize("name,make,named", CHECKPOINTS.values(), ids=CHECKPOINTS.keys())
def test_checkpoint(capsys, runs, copy_run, name, make, named):
    marker = Path("/tmp/metaphi_bad_inputs_marker")
    marker.unlink(missing_ok=True)
    run = copy_run("sine")
    (run / name).write_bytes(make(runs / "sine"))
    before = snapshot(run)
    fails(capsys, ["test", run, "--no-progress"], *named)
    assert snapshot(run) == before and not marker.exists()


def test_checkpoint_of_another_shape_without_fingerprint(capsys, copy_run):
    run = copy_run("sine")
    state = torch.load(run / "best.pt", weights_only=True)
    del state["fingerprint"]  # (weights saved before fingerprints, or edited by hand)
    state["learner"] = {k: torch.zeros(3, 3) for k in state["learner"]}
    (run / "best.pt").write_bytes(_torch_bytes(state))
    before = snapshot(run)
    fails(capsys, ["test", run, "--no-progress"], "best.pt", "does not fit")
    assert snapshot(run) == before


def test_checkpoint_damaged_on_resume(capsys, copy_run):
    run = copy_run("sine")
    (run / "checkpoint.pt").write_bytes(b"\x80\x02garbage")
    before = snapshot(run)
    fails(capsys, ["train", SINE, "--out", run, *TINY, "--resume"], "checkpoint.pt")
    assert snapshot(run) == before


# -- writes: a full disk, a read-only run folder ---------------------------------------------------
def _full_disk_for(name: str):
    """os.fsync that fails with ENOSPC for the temporary file of ``name`` (a disk that fills
    up while the file is written)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)
    return fsync


@pytest.mark.parametrize("name", ["config.yaml", "checkpoint.pt", "best.pt", "results.json",
                                  "learning_curve.png"])
def test_write_full_disk_during_a_run(capsys, tmp_path, monkeypatch, name):
    monkeypatch.setattr(os, "fsync", _full_disk_for(name))
    out = tmp_path / "run"
    fails(capsys, ["train", SINE, "--out", out, *TINY], name, "No space left",
          "Nothing was half-written")
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files
    assert not (out / name).exists()


def test_write_full_disk_on_resume_keeps_the_checkpoint(capsys, copy_run, monkeypatch):
    run = copy_run("sine")
    kept = snapshot(run / "checkpoint.pt", run / "best.pt", run / "results.json")
    monkeypatch.setattr(os, "fsync", _full_disk_for("checkpoint.pt"))
    fails(capsys, ["train", SINE, "--out", run, *TINY, "steps=3", "--resume"],
          "checkpoint.pt", "No space left")
    assert snapshot(run / "checkpoint.pt", run / "best.pt", run / "results.json") == kept
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_write_full_disk_for_predictions(capsys, runs, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", _full_disk_for("predictions.csv"))
    fails(capsys, ["predict", runs / "folder", "--support", runs / "images", "--query",
                   runs / "images" / "c0", "--out", tmp_path / "pred"], "predictions.csv",
          "No space left")
    assert list((tmp_path / "pred").iterdir()) == []


def test_write_metrics_log_full_disk(tmp_path, monkeypatch):
    from metaphi.files import WriteError
    from metaphi.loops.train import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")

    class Full(io.StringIO):
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    log._f.close()
    log._f = Full()
    with pytest.raises(WriteError, match="metrics.jsonl: No space left"):
        log.write({"step": 0})


def test_write_test_results_to_a_read_only_run_folder(capsys, copy_run, monkeypatch):
    import metaphi.runs.run as run_module
    from metaphi.files import WriteError

    run = copy_run("sine")
    before = snapshot(run)

    def read_only(path, obj):
        raise WriteError(path, OSError(errno.EROFS, "Read-only file system"))
    monkeypatch.setattr(run_module, "atomic_write_json", read_only)
    assert main(["test", str(run), "--tasks", "2", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "meta-test" in out and "warning: cannot write" in err and "test_seed1.json" in err
    assert snapshot(run) == before


# -- downloads and archives ----------------------------------------------------------------------
class _Trickle(http.server.BaseHTTPRequestHandler):
    """Serves /slow one byte every 50 ms (of a declared 100), /fast 10 bytes at once; anything
    else is a 404."""

    def do_GET(self):  # noqa: N802
        if self.path == "/fast":
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.write(b"0123456789")
            return
        if self.path != "/slow":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        try:
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass  # the client gave up

    def log_message(self, *args):
        pass


@pytest.fixture
def trickle(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_that_trickles_ends_at_its_deadline(trickle, tmp_path):
    from metaphi.data import DownloadError, RemoteFile, download

    t0 = time.perf_counter()
    with pytest.raises(DownloadError, match=r"/slow: not finished after 0.3 s .*bytes received"):
        download(RemoteFile("slow.zip", f"{trickle}/slow"), tmp_path, timeout=5, max_seconds=0.3,
                 progress=False)
    assert time.perf_counter() - t0 < 3
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary file


@pytest.mark.parametrize("case", ["404", "checksum"])
def test_download_refused_leaves_nothing(trickle, tmp_path, case):
    from metaphi.data import ChecksumError, DownloadError, RemoteFile, download

    (tmp_path / "keep.zip").write_bytes(b"old")
    url, sums, err = ((f"{trickle}/missing", (), DownloadError) if case == "404" else
                      (f"{trickle}/fast", (("sha256", "0" * 64),), ChecksumError))
    with pytest.raises(err, match="missing|checksum mismatch for new.zip"):
        download(RemoteFile("new.zip", url, sums), tmp_path, timeout=5, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.zip"]


def forged_zip(path: Path, member: str, claimed: int) -> Path:
    """A tiny zip whose headers claim ``claimed`` unpacked bytes for ``member``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, b"x" * 100)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, data.find(b"PK\x03\x04") + 22, claimed)
    struct.pack_into("<I", data, data.rfind(b"PK\x01\x02") + 24, claimed)
    path.write_bytes(bytes(data))
    return path


ARCHIVES = {
    "zip bomb": (lambda p: forged_zip(p, "images_background/Latin/character01/0001_01.png",
                                      3_000_000_000), ["images_background.zip", "unpacks to"]),
    "huge member": (lambda p: forged_zip(p, "images_background/Latin/character01/0001_01.png",
                                         5_000_000), ["images_background.zip", "too large"]),
    "path traversal": (lambda p: forged_zip(p, "../../evil.png", 10), ["'../../evil.png'"]),
    "not a zip": (lambda p: p.write_bytes(b"<html>rate limited</html>"),
                  ["images_background.zip", "not a valid zip"]),
}


@pytest.mark.parametrize("make,named", ARCHIVES.values(), ids=ARCHIVES.keys())
def test_archive_placed_by_hand(capsys, tmp_path, make, named):
    folder = tmp_path / "omniglot"
    folder.mkdir()
    make(folder / "images_background.zip")
    before = snapshot(tmp_path)
    fails(capsys, ["data", "omniglot", "--root", folder, "--partial", "--cache-dir",
                   tmp_path / "cache"], *named)
    assert snapshot(tmp_path) == before


def test_cli_option_values_stay_strings(capsys, tmp_path):
    # (--data-dir and --device are not YAML: `yes` is not a boolean, `a: b` not a mapping)
    for value in ("yes", "a: b"):
        fails(capsys, ["train", *FOLDER, "--data-dir", tmp_path / value, "--out",
                       tmp_path / "out"], f"image folder {tmp_path / value} does not exist")
    fails(capsys, ["train", SINE, "--out", tmp_path / "out", *TINY, "--device", "yes"],
          "--device 'yes' is not a device")
    assert not (tmp_path / "out").exists()


# -- regression tests of the other findings of issue 31 ----------------------------------------
def _drawing(size: int = 16) -> np.ndarray:
    """A black stroke on white (uint8, 0 = ink)."""
    a = np.full((size, size), 255, np.uint8)
    a[4:12, 7:9] = 0
    a[7:9, 3:13] = 0
    return a


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_drawings_read_as_drawn(tmp_path, mode):
    """A drawing exported with a transparent background (black ink, alpha 0 elsewhere) is read
    like the same drawing on white, by folder sources and `metaphi predict`; it used to read as
    all black."""
    from metaphi.tasks.fewshot import load_image

    ink = _drawing() == 0
    opaque = tmp_path / "opaque.png"
    opaque.write_bytes(png_bytes(_drawing()))
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 3] = np.where(ink, 255, 0)  # transparent background, the RGB there is black
    im = Image.fromarray(rgba, "RGBA")
    im = {"RGBA": im, "LA": im.convert("LA"), "P": im.convert("P")}[mode]
    transparent = tmp_path / "transparent.png"
    im.save(transparent)
    for grayscale in (True, False):
        a = load_image(opaque, (8, 8), grayscale)
        b = load_image(transparent, (8, 8), grayscale)
        assert torch.allclose(a, b, atol=2 / 255), (grayscale, a, b)


def test_transparent_queries_get_the_labels_of_opaque_ones(capsys, runs, tmp_path):
    support, opaque, clear = tmp_path / "support", tmp_path / "opaque", tmp_path / "clear"
    for c in ("c0", "c1"):
        (support / c).mkdir(parents=True)
        shutil.copy(runs / "images" / c / "0.png", support / c / "0.png")
        for d in (opaque, clear):
            (d / c).mkdir(parents=True)
        for i in (1, 2):
            src = runs / "images" / c / f"{i}.png"
            shutil.copy(src, opaque / c / src.name)
            gray = np.asarray(Image.open(src).convert("L"))
            # the same picture as dark ink with transparency (alpha = darkness) on black
            rgba = np.zeros(gray.shape + (4,), np.uint8)
            rgba[..., 3] = 255 - gray
            Image.fromarray(rgba, "RGBA").save(clear / c / src.name)
    labels = []
    for query in (opaque, clear):
        assert main(["predict", str(runs / "folder"), "--support", str(support), "--query",
                     str(query), "--out", str(tmp_path / query.name / "pred")]) == 0
        labels.append([line.split("\t")[1] for line in capsys.readouterr().out.splitlines()
                       if "\t" in line])
    assert labels[0] == labels[1] and len(labels[0]) == 4


def test_stale_temporaries_are_removed_live_ones_kept(copy_run, tmp_path):
    from metaphi.files import STALE_SECONDS
    from metaphi.loops.checkpoint import save_checkpoint

    run = copy_run("sine")
    old = time.time() - STALE_SECONDS - 60
    names = {".checkpoint.pt.ab12cd34.tmp": old, ".config.yaml.k3j_9xq2.tmp": old,  # killed
             ".checkpoint.pt.0123abcd.tmp": time.time(),  # a live writer's
             ".notes.tmp": old, "draft.tmp": old}  # not ours
    for name, mtime in names.items():
        (run / name).write_bytes(b"partial")
        os.utime(run / name, (mtime, mtime))
    save_checkpoint(run / "checkpoint.pt", torch.load(run / "checkpoint.pt", weights_only=True))
    assert not (run / ".checkpoint.pt.ab12cd34.tmp").exists()
    assert (run / ".config.yaml.k3j_9xq2.tmp").exists()  # (another file's: left to its writer)
    # preparing the run folder removes every stale temporary of an atomic write in it
    assert main(["train", SINE, "--out", str(run), *TINY, "--resume"]) == 0
    left = sorted(p.name for p in run.iterdir() if "tmp" in p.name)
    assert left == [".checkpoint.pt.0123abcd.tmp", ".notes.tmp", "draft.tmp"]


def test_stale_download_and_extraction_leftovers_are_removed(trickle, tmp_path):
    from metaphi.data import RemoteFile, download
    from metaphi.data.omniglot import download_omniglot
    from metaphi.files import STALE_SECONDS

    old = time.time() - STALE_SECONDS - 60
    part = tmp_path / ".fast.bin.a1b2c3d4.part"
    part.write_bytes(b"01")
    os.utime(part, (old, old))
    download(RemoteFile("fast.bin", f"{trickle}/fast"), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.bin"]
    # an extraction killed half-way: a hidden folder beside the archive
    from omniglot_fixture import make_omniglot_fixture

    folder = make_omniglot_fixture(tmp_path / "omniglot", {"images_background": {"Latin": 1},
                                                           "images_evaluation": {"Angelic": 1}})
    left = folder / ".images_background.x7_k2m9q"
    (left / "images_background").mkdir(parents=True)
    for p in (left / "images_background", left):
        os.utime(p, (old, old))
    # (the archives are there: nothing is fetched, they are only unpacked)
    download_omniglot(folder, base_url="http://127.0.0.1:9", checksums={}, extract=True)
    assert not left.exists() and (folder / "images_background" / "Latin").is_dir()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_get_the_users_umask(trickle, tmp_path, umask):
    """Run files, checkpoints, caches and downloads are created like any other tool's files
    (mode 0666 minus the umask); they used to be private (0600)."""
    import matplotlib.figure

    from metaphi.data import RemoteFile, download, save_arrays
    from metaphi.files import save_figure
    from metaphi.loops.checkpoint import atomic_write_json, save_checkpoint

    previous = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "c.pt", {"step": 1})
        atomic_write_json(tmp_path / "r.json", {"a": 1})
        save_arrays(tmp_path / "cache.npz", "k", {"x": np.zeros(2)})
        save_figure(matplotlib.figure.Figure(), tmp_path / "f.png")
        download(RemoteFile("d.bin", f"{trickle}/fast"), tmp_path, progress=False)
    finally:
        os.umask(previous)
    for p in tmp_path.iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


def test_results_are_strict_json(tmp_path):
    import json

    from metaphi.loops.checkpoint import atomic_write_json

    atomic_write_json(tmp_path / "r.json", {"mean": float("nan"), "ci": [float("inf"), 1.0]})
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {"mean": None,
                                                                        "ci": [None, 1.0]}


def test_download_shows_progress(trickle, tmp_path, capsys):
    from metaphi.data import RemoteFile, download

    download(RemoteFile("shown.bin", f"{trickle}/fast"), tmp_path, progress=True)
    assert "shown.bin" in capsys.readouterr().err
