"""``metaphi predict``: adapt a saved learner on a user's labelled support examples and label
query examples.

Images: the support folder holds one sub-folder of images per class. The query folder holds
images, either loose (they are labelled) or in sub-folders named like the support classes
(then the accuracy is reported too). Images are preprocessed the way the run's training data
was.

Text (a run on token inputs): the support set is a CSV file with ``text,label`` columns or a
folder of classes (``<class>/*.txt``, a file per example, or ``<class>.txt``, a line per
example); the query set is a CSV file with a ``text`` column (a ``label`` column gives the
accuracy) or a folder of ``.txt`` files (loose: unlabelled; in sub-folders named like the
classes: labelled). Texts are tokenised the way the run's tasks were (for a BPE run, the
vocabulary is learned again from the run's meta-train data, so that data must be there).
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import torch

from ..loops.checkpoint import atomic_write_text
from ..registry import LEARNERS
from ..tasks.fewshot import IMAGE_SUFFIXES, ImageFolderData, load_image
from ..tasks.task import Task
from .config import ConfigError, RunConfig


def _image_loader(cfg: RunConfig):
    """How the run's source reads one file into a model input (its own preprocessing, e.g.
    Omniglot's inverted drawings), else as a plain image of the run's size and channels."""
    own = getattr(cfg.task, "load_file", None)
    if own is not None:
        return own
    channels, side = cfg.info.input_shape[0], cfg.info.input_shape[-1]
    return lambda path: load_image(path, (side, side), grayscale=channels == 1)


def _query_files(root: Path) -> tuple[list[Path], list[str | None]]:
    from ..data.images import check_images

    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"--query {root} {what}; give a folder of images")
    files, truth = [], []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            files.append(p)
            truth.append(p.parent.name if p.parent != root else None)
    if not files:
        raise ValueError(f"query folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    check_images(files)
    return files, truth


def _check_ways(cfg: RunConfig, n_way: int, support: str | Path) -> None:
    if LEARNERS.get(cfg.learner.name).info["model"] == "head" and n_way != cfg.info.n_way:
        raise ValueError(f"this run was meta-trained for {cfg.info.n_way}-way tasks (its output "
                         f"layer has {cfg.info.n_way} units), but {support} has {n_way} "
                         "classes; give it that many classes, or use a ProtoNet run, "
                         "which takes any number of classes")


def predict_folder(run_dir: str | Path, support_dir: str | Path, query_dir: str | Path,
                   device: str = "cpu") -> dict:
    """Labels for every query example: ``{"files", "labels", "classes", "accuracy"?,
    "task"?}`` (images: a folder; text runs: a CSV file or a folder, see the module doc)."""
    from .build import resolve_device
    from .run import load_run, read_run_config

    # the cheap checks first: the run's kind, the device, every image file
    cfg = read_run_config(Path(run_dir))
    if cfg.info.kind != "classification" or cfg.info.input not in ("image", "tokens"):
        raise ConfigError(f"{run_dir} is a {cfg.info.kind} run on {cfg.info.input} inputs; "
                          "`metaphi predict` labels images or texts with a classification run")
    resolve_device(device)
    if cfg.info.input == "tokens":
        cfg, learner = load_run(run_dir, device)
        return predict_texts(cfg, learner, support_dir, query_dir)
    support = ImageFolderData(support_dir, size=None)
    files, truth = _query_files(Path(query_dir))
    _check_ways(cfg, len(support.class_names), support_dir)
    cfg, learner = load_run(run_dir, device)
    dev = next(learner.parameters()).device
    load = _image_loader(cfg)
    sx = torch.stack([load(p) for p in support.paths]).to(dev)
    sy = torch.as_tensor(support.labels).to(dev)
    qx = torch.stack([load(p) for p in files]).to(dev)
    with torch.no_grad():
        pred = learner.adapt(sx, sy)(qx).argmax(-1).cpu()
    names = support.class_names
    out = {"files": [str(f) for f in files], "labels": [names[int(i)] for i in pred],
           "classes": names}
    known = [t is not None and t in names for t in truth]
    if all(known):
        qy = torch.tensor([names.index(t) for t in truth])
        out["accuracy"] = float((pred == qy).float().mean())
    else:
        qy = pred.clone()  # unlabelled queries: nothing to mark as a mistake
    out["task"] = Task(sx.cpu(), sy.cpu(), qx.cpu(), qy, {"classes": names})
    out["predictions"] = pred
    return out


def text_tokenizer(cfg: RunConfig):
    """The tokenizer of a text run: bytes, or the BPE vocabulary its source learns on its
    meta-train text (rebuilt from the run's data)."""
    from ..tasks.text import ByteTokenizer

    if getattr(cfg.task, "tokenizer", "bytes") == "bytes":
        return ByteTokenizer()
    from .build import build_sources

    tok = getattr(build_sources(cfg), "tokenizer", None)
    if tok is None:
        raise ConfigError(f"task source {cfg.task.source!r} does not expose its tokenizer")
    return tok


def _query_texts(path: Path):
    """(texts, where, true labels or None) of a query CSV or folder."""
    from ..data.usertext import read_text_csv
    from ..tasks.text import TextDataError, check_texts, read_utf8

    if path.is_file():
        lt = read_text_csv(path, need_label=False)
        return lt.texts, lt.where, [label or None for label in lt.labels]
    if not path.is_dir():
        raise FileNotFoundError(f"query {path} does not exist: give a CSV file (a text column, "
                                "optionally label) or a folder of .txt files")
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise TextDataError(f"query folder {path} holds no .txt files")
    texts = [read_utf8(f).strip() for f in files]
    check_texts(texts, [str(f) for f in files])
    truth = [f.parent.name if f.parent != path else None for f in files]
    return texts, [str(f) for f in files], truth


def predict_texts(cfg: RunConfig, learner, support: str | Path, query: str | Path) -> dict:
    """Adapt ``learner`` on a support CSV/folder of texts and label the query texts."""
    from ..data.usertext import read_texts
    from ..tasks.text import encode_all, pad_batch

    sup = read_texts(support)
    names = sorted(set(sup.labels))
    _check_ways(cfg, len(names), support)
    texts, where, truth = _query_texts(Path(query))
    tok = text_tokenizer(cfg)
    ids = pad_batch(encode_all(tok, sup.texts + texts), cfg.task.max_len)
    dev = next(learner.parameters()).device
    sx, qx = ids[:len(sup.texts)].to(dev), ids[len(sup.texts):].to(dev)
    sy = torch.tensor([names.index(label) for label in sup.labels], device=dev)
    with torch.no_grad():
        pred = learner.adapt(sx, sy)(qx).argmax(-1).cpu()
    out = {"files": where, "texts": texts, "labels": [names[int(i)] for i in pred],
           "classes": names, "predictions": pred}
    if all(t is not None and t in names for t in truth):
        qy = torch.tensor([names.index(t) for t in truth])
        out["accuracy"] = float((pred == qy).float().mean())
    return out


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.run_dir) / "predictions"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the predictions")
    res = predict_folder(args.run_dir, args.support, args.query, args.device or "cpu")
    text = "texts" in res
    rows = io.StringIO(newline="")
    w = csv.writer(rows)
    w.writerow(["source", "text", "label"] if text else ["file", "label"])
    for i, (file, label) in enumerate(zip(res["files"], res["labels"])):
        w.writerow([file, res["texts"][i], label] if text else [file, label])
        print(f"{file}\t{label}")
    atomic_write_text(out / "predictions.csv", rows.getvalue())
    wrote = [out / "predictions.csv"]
    if "task" in res:
        from ..plots.episodes import plot_episode

        plot_episode(res["task"], out / "episode.png", predictions=res["predictions"],
                     class_names=res["classes"], title="metaphi predict")
        wrote.append(out / "episode.png")
    if "accuracy" in res:
        what = "texts" if text else "images"
        print(f"accuracy {res['accuracy']:.4f} on {len(res['files'])} labelled query {what}")
    print("wrote " + " and ".join(str(p) for p in wrote))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="adapt a saved run on your support examples "
                              "(images or texts) and label query examples")
    p.add_argument("run_dir", help="a finished run folder (from `metaphi train`)")
    p.add_argument("--support", required=True, help="images: a folder with one sub-folder of "
                   "images per class; texts: a CSV file (text,label) or a folder of classes")
    p.add_argument("--query", required=True, help="images: a folder of images to label "
                   "(sub-folders named like the classes give an accuracy); texts: a CSV file "
                   "(text[,label]) or a folder of .txt files")
    p.add_argument("--out", help="output folder (default RUN_DIR/predictions)")
    p.add_argument("--device")
    p.set_defaults(func=run)
    return p
