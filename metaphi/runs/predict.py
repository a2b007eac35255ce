"""``metaphi predict``: adapt a saved learner on a user's labelled support images and label
query images.

The support folder holds one sub-folder of images per class. The query folder holds images,
either loose (they are labelled) or in sub-folders named like the support classes (then the
accuracy is reported too). Images are preprocessed the way the run's training data was.
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


def predict_folder(run_dir: str | Path, support_dir: str | Path, query_dir: str | Path,
                   device: str = "cpu") -> dict:
    """Labels for every query image: ``{"files", "labels", "classes", "accuracy"?, "task"}``."""
    from .build import resolve_device
    from .run import load_run, read_run_config

    # the cheap checks first: the run's kind, the device, every image file
    cfg = read_run_config(Path(run_dir))
    if cfg.info.kind != "classification" or cfg.info.input != "image":
        raise ConfigError(f"{run_dir} is a {cfg.info.kind} run on {cfg.info.input} inputs; "
                          "`metaphi predict` labels images with a classification run")
    resolve_device(device)
    support = ImageFolderData(support_dir, size=None)
    files, truth = _query_files(Path(query_dir))
    n_way = len(support.class_names)
    if LEARNERS.get(cfg.learner.name).info["model"] == "head" and n_way != cfg.info.n_way:
        raise ValueError(f"this run was meta-trained for {cfg.info.n_way}-way tasks (its output "
                         f"layer has {cfg.info.n_way} units), but {support_dir} has {n_way} "
                         "classes; give it that many class folders, or use a ProtoNet run, "
                         "which takes any number of classes")
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


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.run_dir) / "predictions"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the predictions")
    res = predict_folder(args.run_dir, args.support, args.query, args.device or "cpu")
    rows = io.StringIO(newline="")
    w = csv.writer(rows)
    w.writerow(["file", "label"])
    for file, label in zip(res["files"], res["labels"]):
        w.writerow([file, label])
        print(f"{file}\t{label}")
    atomic_write_text(out / "predictions.csv", rows.getvalue())
    from ..plots.episodes import plot_episode

    plot_episode(res["task"], out / "episode.png", predictions=res["predictions"],
                 class_names=res["classes"], title="metaphi predict")
    if "accuracy" in res:
        print(f"accuracy {res['accuracy']:.4f} on {len(res['files'])} labelled query images")
    print(f"wrote {out / 'predictions.csv'} and {out / 'episode.png'}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="adapt a saved run on your support images and "
                              "label query images")
    p.add_argument("run_dir", help="a finished run folder (from `metaphi train`)")
    p.add_argument("--support", required=True, help="folder with one sub-folder of images per class")
    p.add_argument("--query", required=True, help="folder of images to label (sub-folders named "
                   "like the classes give an accuracy)")
    p.add_argument("--out", help="output folder (default RUN_DIR/predictions)")
    p.add_argument("--device")
    p.set_defaults(func=run)
    return p
