"""Presets of the task-construction benchmarks: task-poor Omniglot, the Omniglot and
forecasting transfer matrices and leave-one-family-out regression (``metaphi presets`` lists
them).

The lists below are the protocol, written down once; the benchmarks and the docs read them.
"""
from __future__ import annotations

from typing import Any

from ..tasks.regression import FAMILIES

# Task-poor Omniglot: meta-train on the characters (as drawn, no rotated classes) of the first
# 5 or 10 background alphabets in alphabetical order, leaving out the 5 alphabets of Vinyals'
# meta-val list; meta-test on Vinyals' test classes.
VINYALS_VAL_ALPHABETS = ("Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
TASK_POOR_ALPHABETS: dict[int, tuple[str, ...]] = {
    5: ("Alphabet_of_the_Magi", "Anglo-Saxon_Futhorc", "Arcadian", "Asomtavruli_(Georgian)",
        "Balinese"),
    10: ("Alphabet_of_the_Magi", "Anglo-Saxon_Futhorc", "Arcadian", "Asomtavruli_(Georgian)",
         "Balinese", "Blackfoot_(Canadian_Aboriginal_Syllabics)", "Braille", "Burmese_(Myanmar)",
         "Cyrillic", "Futurama"),
}

# Omniglot domains for the transfer matrix: alphabets grouped by script family. Within a
# group, in alphabetical order, the 1st, 3rd, 5th... alphabets are its meta-train alphabets and
# the 2nd, 4th, 6th... its meta-test alphabets, so every cell tests on unseen alphabets.
ALPHABET_GROUPS: dict[str, tuple[str, ...]] = {
    # Brahmic scripts of South and Southeast Asia
    "brahmic": ("Balinese", "Bengali", "Burmese_(Myanmar)", "Grantha", "Gujarati", "Gurmukhi",
                "Kannada", "Malayalam", "Manipuri", "Oriya", "Sanskrit", "Sylheti", "Tagalog",
                "Tibetan"),
    # alphabets of Europe and the Caucasus descended from Greek, and the runes
    "european": ("Anglo-Saxon_Futhorc", "Armenian", "Asomtavruli_(Georgian)", "Cyrillic",
                 "Glagolitic", "Greek", "Latin", "Mkhedruli_(Georgian)",
                 "Old_Church_Slavonic_(Cyrillic)"),
    # scripts invented for fiction, games or magic
    "invented": ("Alphabet_of_the_Magi", "Angelic", "Atemayar_Qelisayer", "Atlantean",
                 "Aurek-Besh", "Futurama", "Keble", "Tengwar", "ULOG"),
}


# Forecasting domains for the transfer matrix: the frequency subsets of M3 and Tourism, all
# forecast 4 steps ahead (Tourism's yearly test period is 4 values long). The cross-frequency
# row meta-trains on the yearly and quarterly series of both and is meta-tested on monthly.
FORECAST_DOMAINS = ("m3-yearly", "m3-quarterly", "m3-monthly", "tourism-yearly",
                    "tourism-quarterly", "tourism-monthly")
FORECAST_ROWS: dict[str, tuple[str, ...]] = {
    **{d: (d,) for d in FORECAST_DOMAINS},
    "yearly+quarterly": ("m3-yearly", "m3-quarterly", "tourism-yearly", "tourism-quarterly"),
}


def group_split(group: str) -> dict[str, list[str]]:
    """``{"train": [...], "test": [...]}``: a group's meta-train and meta-test alphabets."""
    alphabets = sorted(ALPHABET_GROUPS[group])
    return {"train": alphabets[0::2], "test": alphabets[1::2]}


def _conv4() -> dict[str, Any]:
    return {"name": "conv4", "width": 64, "depth": 4}


def task_poor(learner: str, n_alphabets: int, n_way: int = 20) -> dict[str, Any]:
    """Task-poor Omniglot (module doc), ``n_way``-way 1-shot meta-test with 5 queries a class
    on Vinyals' test classes; no meta-validation (φ of the last step), so that every run
    spends its budget on the same outer steps."""
    task: dict[str, Any] = {
        "source": "omniglot", "n_way": n_way, "k_shot": 1, "n_query": 5, "eval_n_query": 5,
        "rotations": [0],
        "classes": {"train": list(TASK_POOR_ALPHABETS[n_alphabets]),
                    "test": ["split:vinyals/test"]}}
    if learner == "protonet":
        learn: dict[str, Any] = {"name": "protonet"}
        meta_batch = 1
    else:  # the MAML family (Finn et al.'s Omniglot settings)
        learn = {"name": learner, "inner_lr": 0.4, "inner_steps": 1 if n_way == 5 else 5,
                 "eval_inner_steps": 3 if n_way == 5 else 5}
        meta_batch = 8
    name = f"taskpoor-{learner}-{n_alphabets}alph" + ("" if learner == "protonet"
                                                      else f"-{n_way}w")
    return {"name": name, "task": task, "model": _conv4(), "learner": learn,
            "meta_optimizer": {"name": "adam", "lr": 1e-3}, "steps": 1000,
            "meta_batch": meta_batch, "val_every": 1000, "val_tasks": 100, "test_tasks": 1000,
            "checkpoint_every": 250}


def transfer(group: str) -> dict[str, Any]:
    """ProtoNet meta-trained on one alphabet group's meta-train alphabets (5-way 1-shot,
    characters as drawn); meta-tested on its meta-test alphabets."""
    split = group_split(group)
    return {"name": f"transfer-protonet-{group}",
            "task": {"source": "omniglot", "n_way": 5, "k_shot": 1, "n_query": 5,
                     "eval_n_query": 5, "train_n_way": 20, "rotations": [0],
                     "classes": {"train": split["train"], "test": split["test"]}},
            "model": _conv4(), "learner": {"name": "protonet"},
            "meta_optimizer": {"name": "adam", "lr": 1e-3}, "steps": 1000, "meta_batch": 1,
            "val_every": 1000, "val_tasks": 100, "test_tasks": 1000, "checkpoint_every": 250}


def forecast(row: str) -> dict[str, Any]:
    """MAML on N-BEATS meta-trained on the series of ``FORECAST_ROWS[row]`` (each series a
    task: 8 support windows, 12 values -> the next 4), meta-tested on every forecasting
    domain's meta-test series (``meta_test.by_domain`` is the row of the transfer matrix)."""
    return {"name": f"forecast-maml-{row}",
            "task": {"source": "forecast", "domains": list(FORECAST_ROWS[row]),
                     "test_domains": list(FORECAST_DOMAINS), "horizon": 4, "lookback": 3,
                     "k_shot": 8},
            "model": {"name": "nbeats", "width": 128, "blocks": 3, "layers": 2},
            "learner": {"name": "maml", "inner_lr": 0.01, "inner_steps": 2,
                        "eval_inner_steps": 3},
            "loss": "mae", "meta_optimizer": {"name": "adam", "lr": 1e-3}, "steps": 1000,
            "meta_batch": 16, "val_every": 250, "val_tasks": 300, "test_tasks": 1000,
            "checkpoint_every": 250}


def regression(train: list[str], test: list[str], name: str) -> dict[str, Any]:
    """MAML on regression families (1-40-40-1 MLP, 10-shot, 5 inner steps)."""
    return {"name": name,
            "task": {"source": "regression", "families": train, "test_families": test,
                     "k_shot": 10, "n_query": 10, "eval_n_query": 100},
            "model": {"name": "mlp", "hidden": [40, 40]},
            "learner": {"name": "maml", "inner_lr": 0.01, "inner_steps": 5,
                        "eval_inner_steps": 5},
            "meta_optimizer": {"name": "adam", "lr": 1e-3}, "steps": 5000, "meta_batch": 25,
            "val_every": 1000, "val_tasks": 200, "test_tasks": 1000, "checkpoint_every": 1000}


def register_task_presets(register) -> None:
    """Register every preset of this module with ``register(preset, description)``."""
    for n in TASK_POOR_ALPHABETS:
        register(task_poor("protonet", n), f"task-poor Omniglot: ProtoNet meta-trained on {n} "
                 "background alphabets, 20-way 1-shot meta-test (task.augment: [...] adds "
                 "augmentation; test 5-way with `metaphi test RUN task.n_way=5`)")
        for w in (5, 20):
            register(task_poor("maml", n, w), f"task-poor Omniglot: MAML meta-trained on {n} "
                     f"background alphabets, {w}-way 1-shot")
    for g in ALPHABET_GROUPS:
        register(transfer(g), f"Omniglot transfer matrix: ProtoNet on the {g} alphabets "
                 "(test other groups with `metaphi test RUN --on omniglot "
                 "task.classes.test=[...]`)")
    for r in FORECAST_ROWS:
        register(forecast(r), f"forecasting transfer matrix: MAML on N-BEATS meta-trained on "
                 f"{' + '.join(FORECAST_ROWS[r])} series, meta-tested on every M3 and Tourism "
                 "frequency subset")
    families = list(FAMILIES)
    register(regression(families, families, "regression-all"), "MAML on a mixture of all "
             "regression families (cross-problem training; metrics per family)")
    for f in families:
        others = [g for g in families if g != f]
        register(regression(others, [f], f"regression-lofo-{f}"), f"leave-one-family-out: "
                 f"MAML meta-trained on every regression family but {f}, meta-tested on {f}")
        register(regression([f], [f], f"regression-{f}"), f"MAML meta-trained and tested on "
                 f"the {f} regression family (the in-family ceiling)")
