"""Named presets: complete, validated run configurations with the papers' protocols.

Extensions add theirs with :func:`register_preset`; ``metaphi presets`` lists them all.
"""
from __future__ import annotations

from typing import Any

from .config import RunConfig, validate_config

Preset = dict[str, Any]

PRESETS: dict[str, Preset] = {}
DESCRIPTIONS: dict[str, str] = {}


def register_preset(preset: Preset, description: str = "") -> Preset:
    """Add a named preset (``preset["name"]`` is its name); returns it."""
    PRESETS[preset["name"]] = preset
    DESCRIPTIONS[preset["name"]] = description
    return preset


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
        "task": {"source": "sinusoid", "k_shot": k, "n_query": 10, "eval_n_query": 100},
        "model": {"name": "mlp", "hidden": [40, 40]},
        "learner": inner,
        "meta_optimizer": optim,
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
    task = {"source": "omniglot", "n_way": n_way, "k_shot": k_shot, "n_query": 15,
            "eval_n_query": 15}
    if learner in ("matchingnet", "r2d2"):
        # Both heads' logits start in about [0, 1] (raw cosines after Conv-4's last ReLU; ridge
        # outputs that approximate one-hot labels): a nearly flat softmax at the papers' scale
        # of 1, which a learned scale leaves only slowly. Start a meta-learned scale at 10
        # (the Omniglot results page compares both); the papers' form: learner.scale=1
        # learner.learn_scale=false.
        inner.update(scale=10.0, learn_scale=True)
    if learner == "protonet":
        # Snell et al. (2017): 60-way episodes with 5 queries per class at meta-train, for
        # every test setting; wider episodes than the test's generalise better. Their code
        # meta-tests with BatchNorm's running statistics (model.eval()), as here.
        task.update(train_n_way=60, n_query=5)
        inner.update(batchnorm="running")
    return {
        "name": f"omniglot-{learner}-{n_way}w{k_shot}s",
        "task": task,
        "model": {"name": "conv4", "width": 64, "depth": 4},
        "learner": inner,
        "meta_optimizer": optim,
        "steps": steps, "meta_batch": meta_batch, "val_every": 500, "val_tasks": 200,
        "test_tasks": 1000, "checkpoint_every": 500,
    }


def _mamlpp(n_way: int, k_shot: int) -> Preset:
    # Antoniou et al. (2019) and their released Omniglot configurations: Conv-4 (64 filters),
    # 5 inner steps at meta-train and meta-test, per-layer per-step inner learning rates from
    # 0.1, per-step BatchNorm weights, biases and statistics, the multi-step loss annealed
    # over the first 10 epochs of 500 outer steps, 100 epochs, meta-batch 8, 1 query per class
    # at meta-train, Adam 1e-3 with cosine annealing; first-order meta-gradients for the first
    # 50 epochs (the paper's derivative-order annealing; the released configurations train
    # second order throughout: learner.first_order_steps=0).
    return {
        "name": f"omniglot-mamlpp-{n_way}w{k_shot}s",
        "task": {"source": "omniglot", "n_way": n_way, "k_shot": k_shot, "n_query": 1,
                 "eval_n_query": 15},
        "model": {"name": "conv4", "width": 64, "depth": 4},
        "learner": {"name": "mamlpp", "inner_lr": 0.1, "inner_steps": 5, "eval_inner_steps": 5,
                    "multi_step_loss_steps": 5000, "first_order_steps": 25000,
                    "batchnorm": "running"},
        "meta_optimizer": {"name": "adam", "lr": 1e-3, "schedule": "cosine"},
        "steps": 50000, "meta_batch": 8, "val_every": 500, "val_tasks": 200,
        "test_tasks": 1000, "checkpoint_every": 500,
    }


def _imaml_5w1s() -> Preset:
    # Rajeswaran et al. (2019), the authors' Omniglot 5-way 1-shot command: Conv-4, 16 inner SGD
    # steps of 0.1, λ = 2, 5 conjugate-gradient steps, meta-batch 32, Adam 1e-3, 20000 steps.
    return {
        "name": "omniglot-imaml-5w1s",
        "task": {"source": "omniglot", "n_way": 5, "k_shot": 1, "n_query": 15,
                 "eval_n_query": 15},
        "model": {"name": "conv4", "width": 64, "depth": 4},
        "learner": {"name": "imaml", "inner_lr": 0.1, "inner_steps": 16, "eval_inner_steps": 16,
                    "lam": 2.0, "cg_steps": 5},
        "meta_optimizer": {"name": "adam", "lr": 1e-3},
        "steps": 20000, "meta_batch": 32, "val_every": 500, "val_tasks": 200,
        "test_tasks": 1000, "checkpoint_every": 500,
    }


def _build() -> None:
    for learner in ("maml", "fomaml", "metasgd", "anil", "reptile"):
        for k in (5, 10, 20):
            register_preset(_sinusoid(learner, k), "few-shot sinusoid regression (Finn et al. "
                            "2017 protocol; no download)")
    for learner in ("protonet", "maml", "fomaml", "anil", "metasgd", "matchingnet", "r2d2",
                    "reptile"):
        for n, k in ((5, 1), (5, 5), (20, 1), (20, 5)):
            register_preset(_omniglot(learner, n, k), "Omniglot few-shot classification, "
                            "Vinyals split, rotations as classes (needs the dataset: --data-dir "
                            "or METAPHI_DATA)")
    for n, k in ((5, 1), (5, 5), (20, 1), (20, 5)):
        register_preset(_mamlpp(n, k), "MAML++ on Omniglot (Antoniou et al. 2019 protocol; "
                        "needs the dataset: --data-dir or METAPHI_DATA)")
    register_preset(_imaml_5w1s(), "iMAML on Omniglot 5-way 1-shot (Rajeswaran et al. 2019 "
                    "protocol; needs the dataset: --data-dir or METAPHI_DATA)")
    from .task_presets import register_task_presets

    register_task_presets(register_preset)


_build()
from . import presets_extra  # noqa: E402,F401  (registers its presets; it imports this module)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        close = [p for p in PRESETS if name.split("-")[0] in p][:8]
        raise KeyError(f"unknown preset {name!r}; `metaphi presets` lists them"
                       + (f" (e.g. {', '.join(close)})" if close else ""))
    return PRESETS[name]


def preset_config(name: str) -> RunConfig:
    return validate_config(get_preset(name))


from . import language_presets  # noqa: E402,F401  (registers the language presets)
