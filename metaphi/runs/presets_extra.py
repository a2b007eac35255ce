"""Presets of the fine-tuning baselines, Relation Networks, MetaOptNet-SVM and the learned
optimiser: the papers' choices where they carry over to Omniglot (Conv-4, 28 px), otherwise
those of the closest learner in :mod:`metaphi.runs.presets`."""
from __future__ import annotations

from typing import Any

from .presets import Preset, _omniglot, _sinusoid, register_preset

SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))
OMNIGLOT = ("Omniglot few-shot classification, Vinyals split, rotations as classes (needs the "
            "dataset: --data-dir or METAPHI_DATA)")
# Sung et al. (2018): query images per class at meta-train, by setting
RELATION_QUERIES = {(5, 1): 19, (5, 5): 15, (20, 1): 10, (20, 5): 5}


def omniglot_preset(learner: str, n_way: int, k_shot: int) -> Preset:
    """The Omniglot preset of one of this module's learners."""
    if learner == "learned_opt":
        # MAML's protocol (Finn et al. 2017), the learned rule in place of SGD: it starts as
        # SGD with MAML's inner lr and the same inner steps
        p = _omniglot("maml", n_way, k_shot)
        p["learner"] = {**p["learner"], "name": "learned_opt"}
        p["name"] = f"omniglot-learned_opt-{n_way}w{k_shot}s"
        return p
    p = _omniglot("r2d2", n_way, k_shot)  # conv4, Adam 1e-3 halved every 2000 steps
    p["name"] = f"omniglot-{learner}-{n_way}w{k_shot}s"
    inner: dict[str, Any] = {"name": learner}
    if learner in ("baseline", "baselinepp"):
        # Chen et al. (2019): supervised pre-training with Adam 1e-3; the reference code
        # evaluates with BatchNorm's running statistics (model.eval())
        inner["batchnorm"] = "running"
        p["meta_batch"] = 4
    elif learner == "relationnet":
        # Sung et al.: one episode per step, Adam 1e-3
        p["task"]["n_query"] = RELATION_QUERIES[(n_way, k_shot)]
        p["meta_batch"] = 1
    elif learner == "metaoptnet":
        # Lee et al.: C = 0.1, 8 episodes per step
        p["meta_batch"] = 8
    p["learner"] = inner
    return p


def _build() -> None:
    for learner in ("baseline", "baselinepp", "relationnet", "metaoptnet", "learned_opt"):
        for n, k in SETTINGS:
            register_preset(omniglot_preset(learner, n, k), OMNIGLOT)
    for k in (5, 10, 20):
        p = _sinusoid("maml", k)
        p["name"] = f"sinusoid-learned_opt-{k}shot"
        p["learner"] = {**p["learner"], "name": "learned_opt"}
        register_preset(p, "few-shot sinusoid regression (Finn et al. 2017 protocol) with a "
                        "learned inner-loop optimiser; no download")


_build()
