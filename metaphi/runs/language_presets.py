"""Presets of the language settings: cross-lingual few-shot topic classification (SIB-200),
few-shot language identification (UDHR), domain generalisation over languages (SIB-200, ERM
vs MLDG vs Fish) and cross-domain relation classification (FewRel 2.0's setting).

Budgets are in outer steps, sized so that each trains within 30 minutes on 2 CPU cores with
the default hashed n-gram encoder; the language results pages are measured with them.
"""
from __future__ import annotations

from typing import Any

from .presets import register_preset

Preset = dict[str, Any]

DATA = "(needs the dataset: --data-dir or METAPHI_DATA)"


# The hashed n-gram bag with 4096 lexical (hashed n-gram count) features beside the learned
# 64-d embedding, centred with each episode's statistics: the learned part transfers what
# meta-training taught, the lexical part matches n-grams with the support set in any script.
BAG = {"name": "ngram_bag", "dim": 64, "lexical": 4096, "center": True}


def _fewshot(name: str, task: dict[str, Any], learner: str, steps: int, meta_batch: int,
             model: dict[str, Any] | None = None) -> Preset:
    inner: dict[str, Any] = {"name": learner}
    optim: dict[str, Any] = {"name": "adam", "lr": 3e-3}
    if learner in ("maml", "fomaml", "anil", "metasgd"):
        inner.update(inner_lr=0.5, inner_steps=5, eval_inner_steps=10)
    else:
        # the task-batched path runs the n-gram bag item by item under vmap: slower than the loop
        inner.update(batched=False)
    if learner == "protonet_tfidf":
        # cosine logits (scale learned from 10) are on the TF-IDF cosines' scale; squared
        # distances in the centred 4160-d embedding would drown them
        inner.update(distance="cosine")
    return {
        "name": name, "task": task,
        "model": model or dict(BAG),
        "learner": inner, "meta_optimizer": optim,
        "steps": steps, "meta_batch": meta_batch, "val_every": max(steps // 10, 1),
        "val_tasks": 200, "test_tasks": 1000, "checkpoint_every": max(steps // 10, 1),
    }


def _dg(learner: str) -> Preset:
    inner: dict[str, Any] = {"name": learner}
    optim: dict[str, Any] = {"name": "adam", "lr": 3e-3}
    if learner == "mldg":
        inner.update(inner_lr=0.5, beta=1.0, meta_test_tasks=3)
    elif learner == "fish":
        # Shi et al.: SGD steps on the domains in turn; their meta step ε (θ̃ - θ) is
        # meta_optimizer {name: sgd, lr: ε}. Here Adam takes θ - θ̃ as its gradient, so that
        # Fish gets the same short budget and step rule as ERM and MLDG (a variant).
        inner.update(inner_lr=0.1)
    return {
        "name": f"sib200dg-{learner}",
        "task": {"source": "sib200_dg"},
        "model": {"name": "ngram_bag", "dim": 64, "lexical": 4096},
        "learner": inner, "meta_optimizer": optim,
        "steps": 150, "meta_batch": 8, "val_every": 25, "val_tasks": 100,
        "test_tasks": 1000, "checkpoint_every": 25,
    }


# The few-shot settings: source -> (ways, meta-train queries per class, outer steps,
# meta-batch, what is measured, the learners with a preset)
FEWSHOT = {
    "sib200": (7, 10, 600, 4, "SIB-200 cross-lingual topic classification, held-out languages",
               ("protonet", "anil", "protonet_tfidf")),
    "udhr": (20, 5, 400, 2, "UDHR language identification, unseen languages",
             ("protonet", "protonet_tfidf")),
    "fewrel": (5, 5, 400, 4, "FewRel cross-domain relations, wiki+nyt+semeval -> pubmed",
               ("protonet", "protonet_tfidf")),
}
LEARNER_NAMES = {"protonet": "ProtoNet", "anil": "ANIL (head adapted)",
                 "protonet_tfidf": "ProtoNet + support-only TF-IDF"}


def _build() -> None:
    for source, (ways, n_query, steps, batch, what, learners) in FEWSHOT.items():
        for k in (1, 5):
            task = {"source": source, "n_way": ways, "k_shot": k, "n_query": n_query,
                    "eval_n_query": 10}
            for learner in learners:
                name = f"{source}-{learner}-{ways}w{k}s"
                register_preset(_fewshot(name, dict(task), learner, steps, batch),
                                f"{what}, {ways}-way {k}-shot, {LEARNER_NAMES[learner]} {DATA}")
    for learner in ("erm", "mldg", "fish"):
        register_preset(_dg(learner), f"SIB-200 domain generalisation over languages "
                        f"({learner.upper()}; no support set in a target language) {DATA}")


_build()
