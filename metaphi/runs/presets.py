"""Named presets: complete, validated run configurations with the papers' protocols."""
from __future__ import annotations

from typing import Any

from .config import RunConfig, validate_config

Preset = dict[str, Any]


def _sinusoid(learner: str, k: int) -> Preset:
    # Finn et al. (2017): MLP 1-40-40-1 (ReLU), inner lr 0.01, Adam 1e-3, meta-batch 25.
    inner: dict[str, Any] = {"name": learner, "inner_lr": 0.01, "inner_steps": 1,
                             "eval_inner_steps": 1}
    optim: dict[str, Any] = {"name": "adam", "lr": 1e-3}
    if learner == "reptile":
        # Nichol et al. (2018): Reptile needs several inner steps on the whole task; it is
        # evaluated after the same number of steps on the support set.
        inner.update(inner_steps=8, eval_inner_steps=8, inner_lr=0.02)
        optim = {"name": "sgd", "lr": 0.5, "schedule": "cosine"}
    return {
        "name": f"sinusoid-{learner}-{k}shot",
        "task": {"source": "sinusoid", "k_shot": k, "q_queries": 10, "eval_q_queries": 100},
        "model": {"name": "mlp", "hidden": [40, 40]},
        "learner": inner,
        "optim": optim,
        "steps": 30000, "meta_batch": 25, "val_every": 1000, "val_tasks": 300,
        "test_tasks": 1000, "checkpoint_every": 1000,
    }


def _omniglot(learner: str, n_way: int, k_shot: int) -> Preset:
    inner: dict[str, Any] = {"name": learner}
    optim: dict[str, Any] = {"name": "adam", "lr": 1e-3}
    steps, meta_batch = 20000, 32
    if learner in ("maml", "fomaml", "metasgd", "anil"):
        # Finn et al.: inner lr 0.4, 1 step (5-way) / 5 steps (20-way) at meta-train.
        inner.update(inner_lr=0.4, inner_steps=1 if n_way == 5 else 5,
                     eval_inner_steps=3 if n_way == 5 else 5)
        meta_batch = 32 if n_way == 5 else 16
        steps = 30000 if n_way == 5 else 40000
    elif learner == "reptile":
        inner.update(inner_lr=0.001 * 10, inner_steps=5, eval_inner_steps=50)
        optim = {"name": "sgd", "lr": 1.0, "schedule": "cosine"}
        steps = 100000
    else:  # protonet, matchingnet, r2d2
        meta_batch = 1 if learner != "r2d2" else 8
        optim = {"name": "adam", "lr": 1e-3, "schedule": "step", "step_size": 2000, "gamma": 0.5}
        steps = 10000
    task = {"source": "omniglot", "n_way": n_way, "k_shot": k_shot, "q_queries": 15,
            "eval_q_queries": 15}
    if learner in ("matchingnet", "r2d2"):
        # Both heads' logits start in about [0, 1] (raw cosines after Conv-4's last ReLU; ridge
        # outputs that approximate one-hot labels), a nearly flat softmax at the papers' scale
        # of 1, and Adam at 1e-3 grows a learned scale by only ~1 per 1000 steps. A meta-learned
        # scale starting at 10: Matching Networks 5w1s 86.6% -> 96.8% after all 10000 episodes;
        # R2-D2 meta-val 91.7% -> 95.5% after 500 steps (benchmarks/RESULTS.md). The papers'
        # form: learner.scale=null learner.learn_scale=null.
        inner.update(scale=10.0, learn_scale=True)
    if learner == "protonet":
        # Snell et al. (2017): 60-way episodes with 5 queries per class at meta-train, for
        # every test setting; wider episodes than the test's generalise better. Their code
        # meta-tests with BatchNorm's running statistics (model.eval()): population statistics
        # here, +0.00 to +0.07 points over episode statistics on the same φ in all four
        # settings (benchmarks/RESULTS.md, omniglot_batchnorm).
        task.update(train_n_way=60, q_queries=5)
        inner.update(batchnorm="population")
    return {
        "name": f"omniglot-{learner}-{n_way}w{k_shot}s",
        "task": task,
        "model": {"name": "conv4", "width": 64, "depth": 4, "image_size": 28},
        "learner": inner,
        "optim": optim,
        "steps": steps, "meta_batch": meta_batch, "val_every": 500, "val_tasks": 200,
        "test_tasks": 1000, "checkpoint_every": 500,
    }


def _build() -> dict[str, Preset]:
    presets: dict[str, Preset] = {}
    for learner in ("maml", "fomaml", "metasgd", "anil", "reptile"):
        for k in (5, 10, 20):
            p = _sinusoid(learner, k)
            presets[p["name"]] = p
    for learner in ("protonet", "maml", "fomaml", "anil", "metasgd", "matchingnet", "r2d2",
                    "reptile"):
        for n, k in ((5, 1), (5, 5), (20, 1), (20, 5)):
            p = _omniglot(learner, n, k)
            presets[p["name"]] = p
    return presets


PRESETS = _build()
DESCRIPTIONS = {
    "sinusoid": "few-shot sinusoid regression (Finn et al. 2017 protocol; no download)",
    "omniglot": "Omniglot few-shot classification, Vinyals split, rotations as classes "
                "(needs the dataset: --data-dir or METAPHI_DATA)",
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        close = [p for p in PRESETS if name.split("-")[0] in p][:8]
        raise KeyError(f"unknown preset {name!r}; `metaphi presets` lists them"
                       + (f" (e.g. {', '.join(close)})" if close else ""))
    return PRESETS[name]


def preset_config(name: str) -> RunConfig:
    return validate_config(get_preset(name))
