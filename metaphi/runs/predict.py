"""``metaphi predict``: adapt a saved learner on a user's labelled support images and label
query images.

The support folder holds one sub-folder of images per class. The query folder holds images,
either loose (they are labelled) or in sub-folders named like the support classes (then the
accuracy is reported too). Images are preprocessed the way the run's training data was.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

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
    if not root.is_dir():
        raise FileNotFoundError(f"query folder {root} does not exist")
    files, truth = [], []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
            truth.append(p.parent.name if p.parent != root else None)
    if not files:
        raise ValueError(f"query folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files, truth


def predict_folder(run_dir: str | Path, support_dir: str | Path, query_dir: str | Path,
                   device: str = "cpu") -> dict:
    """Labels for every query image: ``{"files", "labels", "classes", "accuracy"?, "task"}``."""
    from .run import load_run

    cfg, learner = load_run(run_dir, device)
    if cfg.info.kind != "classification" or cfg.info.input != "image":
        raise ConfigError(f"{run_dir} is a {cfg.info.kind} run on {cfg.info.input} inputs; "
                          "`metaphi predict` labels images with a classification run")
    dev = next(learner.parameters()).device
    load = _image_loader(cfg)
    support = ImageFolderData(support_dir, size=None)
    n_way = len(support.class_names)
    if LEARNERS.get(cfg.learner.name).info["model"] == "head" and n_way != cfg.info.n_way:
        raise ValueError(f"this run was meta-trained for {cfg.info.n_way}-way tasks (its output "
                         f"layer has {cfg.info.n_way} units), but {support_dir} has {n_way} "
                         "classes; give it that many class folders, or use a ProtoNet run, "
                         "which takes any number of classes")
    sx = torch.stack([load(p) for p in support.paths]).to(dev)
    sy = torch.as_tensor(support.labels).to(dev)
    files, truth = _query_files(Path(query_dir))
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
    res = predict_folder(args.run_dir, args.support, args.query, args.device or "cpu")
    out = Path(args.out) if args.out else Path(args.run_dir) / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        for file, label in zip(res["files"], res["labels"]):
            w.writerow([file, label])
            print(f"{file}\t{label}")
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
