"""Task construction: mixtures with per-domain metrics, task augmentation, user class lists,
Meta-Dataset episodes, regression families, cross-domain testing (`metaphi test --on`) with
BatchNorm choices, and exact resume with a mixture and augmentation. Tiny generated data."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from metaphi.cli import main
from metaphi.learners import ProtoNet
from metaphi.loops.checkpoint import load_checkpoint
from metaphi.loops.evaluate import evaluate
from metaphi.models import conv4_features
from metaphi.runs import ConfigError, validate_config
from metaphi.runs.build import build_sources
from metaphi.tasks import FewShotSource, TensorData, fixed_tasks, task_rng
from metaphi.tasks.augment import MLTI, Affine, Rotate, permute_labels
from metaphi.tasks.class_lists import ClassLists
from metaphi.tasks.combinators import MapSource, MixtureSource
from metaphi.tasks.regression import FAMILIES, FunctionSource
from metaphi.tasks.variable import VariableEpisodeSource

SIDE = 8


def tensor_source(n_classes: int = 8, per_class: int = 6, n_way: int = 3, k_shot: int = 2,
                  n_query: int = 2, seed: int = 0) -> FewShotSource:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_classes * per_class, 1, SIDE, SIDE, generator=g)
    y = np.repeat(np.arange(n_classes), per_class)
    return FewShotSource(TensorData(x, y), range(n_classes), n_way, k_shot, n_query)


def image_folder(root: Path, n_classes: int = 8, per_class: int = 6, seed: int = 0) -> Path:
    """Class folders of small grayscale PNGs: a template per class plus noise."""
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        template = rng.uniform(0, 255, (SIDE, SIDE))
        d = root / f"class{c:02d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(template + rng.normal(0, 20, (SIDE, SIDE)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")
    return root


def folder_part(root: Path, **kw) -> dict:
    return {"source": "folder", "data_dir": str(root), "image_size": SIDE, "n_way": 2,
            "k_shot": 1, "n_query": 2, "split_fractions": [0.5, 0.25, 0.25], **kw}


TINY = {"model": {"name": "conv4", "width": 4, "depth": 2}, "meta_batch": 2, "val_tasks": 4,
        "test_tasks": 12, "meta_optimizer": {"name": "adam", "lr": 0.01}}


# -- mixtures -----------------------------------------------------------------------------------
def test_a_mixture_records_each_tasks_domain_and_reports_metrics_per_domain(tmp_path):
    a, b = tensor_source(seed=0), tensor_source(seed=1)
    mix = MixtureSource([a, b], weights=[3, 1], names=["alpha", "beta"])
    tasks = list(fixed_tasks(mix, 0, "test", 40))
    domains = [t.meta["domain"] for t in tasks]
    assert set(domains) == {"alpha", "beta"} and domains.count("alpha") > domains.count("beta")
    assert [t.meta["domain"] for t in fixed_tasks(mix, 0, "test", 40)] == domains  # pure in rng
    learner = ProtoNet(conv4_features(1, 4, 2)).eval()
    res = evaluate(learner, tasks)
    by = res["by_domain"]
    assert list(by) == ["alpha", "beta"] or list(by) == ["beta", "alpha"]
    assert by["alpha"]["tasks"] + by["beta"]["tasks"] == 40 == res["tasks"]
    pooled = (by["alpha"]["mean"] * by["alpha"]["tasks"] + by["beta"]["mean"] * by["beta"]["tasks"]) / 40
    assert pooled == pytest.approx(res["mean"])
    # without domains the summary is what it was
    assert "by_domain" not in evaluate(learner, list(fixed_tasks(a, 0, "test", 5)))
    # a mixture in a mixture keeps both names
    nested = MixtureSource([mix], names=["outer"]).sample(task_rng(0, "test", 0))
    assert nested.meta["domain"].startswith("outer/")


def test_a_mixture_config_writes_by_domain_results_and_plot(tmp_path):
    one, two = image_folder(tmp_path / "one", seed=1), image_folder(tmp_path / "two", seed=2)
    cfg = {**TINY, "name": "mix", "steps": 2, "val_every": 2, "checkpoint_every": 2,
           "task": {"source": "mixture", "parts": [folder_part(one), folder_part(two)],
                    "names": ["one", "two"]},
           "learner": {"name": "protonet"}}
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    by = res["meta_test"]["by_domain"]
    assert set(by) == {"one", "two"} and sum(d["tasks"] for d in by.values()) == 12
    assert (out / "by_domain.png").exists()
    with pytest.raises(ConfigError, match=r"parts\.1: its tasks"):
        validate_config({**cfg, "task": {"source": "mixture", "parts": [
            folder_part(one), {"source": "sinusoid"}]}})


# -- augmentation -----------------------------------------------------------------------------
def test_each_augmentation_is_drawn_per_task_and_reproducible_from_the_seed():
    src = tensor_source()
    maps = {"rotate": Rotate(), "affine": Affine(), "mlti": MLTI(src, p=1.0),
            "permute_labels": permute_labels}
    for name, fn in maps.items():
        aug = MapSource(src, fn)
        t1, t2 = aug.sample(task_rng(3, "train", 7)), aug.sample(task_rng(3, "train", 7))
        for f in ("support_x", "support_y", "query_x", "query_y"):
            # the same (seed, stream, step, index): the same augmented task
            assert torch.equal(getattr(t1, f), getattr(t2, f)), name
        base = src.sample(task_rng(3, "train", 7))  # the task before the map
        assert base.meta["classes"] == t1.meta["classes"]
        others = [aug.sample(task_rng(3, "train", 7, i)) for i in range(1, 6)]
        if name == "rotate":
            turns = t1.meta["rotations"]
            for c, deg in enumerate(turns):  # a whole class (support and query) turns alike
                for xa, xb, y in ((t1.support_x, base.support_x, base.support_y),
                                  (t1.query_x, base.query_x, base.query_y)):
                    assert torch.equal(xa[y == c], torch.rot90(xb[y == c], deg // 90, (-2, -1)))
            assert len({tuple(o.meta["rotations"]) for o in others + [t1]}) > 1  # per task
        elif name == "affine":
            assert not torch.equal(t1.support_x, base.support_x)
            assert torch.equal(t1.support_y, base.support_y)
            diff = (t1.query_x - base.query_x).flatten(1).abs().sum(1)
            assert (diff > 0).all()
        elif name == "mlti":
            lam = t1.meta["mlti"]["lam"]
            assert 0 < lam < 1 and torch.equal(t1.support_y, base.support_y)
            assert len({o.meta["mlti"]["lam"] for o in others}) == len(others)
        else:
            perm = t1.meta["label_permutation"]
            assert torch.equal(t1.support_y, torch.tensor(perm)[base.support_y])
            assert torch.equal(t1.support_x, base.support_x)
    # MLTI: the mixed inputs are lam * x1 + (1 - lam) * x2 of a second task drawn after the first
    rng = task_rng(0, "train", 0)
    mixed = MapSource(src, MLTI(src, alpha=2.0, p=1.0)).sample(rng)
    rng = task_rng(0, "train", 0)
    first = src.sample(rng)
    rng.uniform()
    second = src.sample(rng)
    lam = mixed.meta["mlti"]["lam"]
    assert torch.allclose(mixed.support_x, lam * first.support_x + (1 - lam) * second.support_x)


def test_augment_in_a_config_touches_meta_train_tasks_only_and_is_checked(tmp_path):
    root = image_folder(tmp_path / "imgs")
    cfg = validate_config({**TINY, "task": folder_part(root, augment=["rotate", "affine"]),
                           "learner": {"name": "protonet"}})
    plain = build_sources(validate_config({**TINY, "task": folder_part(root),
                                           "learner": {"name": "protonet"}}))
    aug = build_sources(cfg)
    r = task_rng(0, "train", 0)
    assert "rotations" in aug.train.sample(r).meta
    for which in ("val", "test"):
        a = getattr(aug, which).sample(task_rng(0, which, 0))
        b = getattr(plain, which).sample(task_rng(0, which, 0))
        assert torch.equal(a.query_x, b.query_x)
    with pytest.raises(ConfigError, match=r"permute_labels' with 'protonet'"):
        validate_config({**TINY, "task": folder_part(root, augment=["permute_labels"]),
                         "learner": {"name": "protonet"}})
    with pytest.raises(ConfigError, match=r"augment\.0\.name: unknown task augmentation 'rotat'"):
        validate_config({**TINY, "task": folder_part(root, augment=["rotat"]),
                         "learner": {"name": "protonet"}})


# -- Meta-Dataset episodes --------------------------------------------------------------------
def test_variable_way_variable_shot_episodes_follow_meta_datasets_rule():
    counts = np.array([4, 6, 9, 12, 20, 25, 30, 40, 60, 250] * 7)  # 70 classes of varying size
    y = np.repeat(np.arange(len(counts)), counts)
    data = TensorData(torch.zeros(len(y), 1), y)
    src = VariableEpisodeSource(data, range(len(counts)))
    ways = []
    for i in range(150):
        rng = task_rng(0, "train", i)
        task = src.sample(rng)
        n, shots, q = task.meta["n_way"], np.array(task.meta["shots"]), task.meta["n_query"]
        ways.append(n)
        assert 5 <= n <= 50 and len(set(task.meta["classes"])) == n
        # the rule, recomputed from the same draws (Triantafillou et al. 2020, Appendix)
        r = task_rng(0, "train", i)
        n_ = int(r.integers(5, min(50, len(counts)) + 1))
        chosen = r.choice(len(counts), size=n_, replace=False)
        c = counts[chosen]
        assert n_ == n and [str(k) for k in chosen] == task.meta["classes"]
        assert q == min(10, int((c // 2).min()))
        remaining = c - q
        size = min(int(np.floor(r.uniform() * np.minimum(100, remaining) + 1).sum()), 500)
        w = c * np.exp(r.uniform(math.log(0.5), math.log(2.0), n))
        want = np.minimum(np.floor(w / w.sum() * (size - n)).astype(int) + 1, remaining)
        np.testing.assert_array_equal(shots, want)
        assert (shots >= 1).all() and shots.sum() <= 500 and (shots + q <= c).all()
        assert task.support_x.shape[0] == shots.sum() and task.query_x.shape[0] == n * q
        assert torch.equal(torch.bincount(task.support_y, minlength=n), torch.as_tensor(shots))
    assert min(ways) < 15 and max(ways) > 40  # uniform over 5..50
    # a 7-class split caps the ways at 7
    small = VariableEpisodeSource(data, range(7))
    assert {small.sample(task_rng(1, "train", i)).meta["n_way"] for i in range(40)} <= {5, 6, 7}
    # metric learners take the episodes; learners with an n_way output layer are refused
    learner = ProtoNet(conv4_features(1, 4, 2))
    episodes = [VariableEpisodeSource(TensorData(torch.rand(60 * 4, 1, SIDE, SIDE),
                                                 np.repeat(np.arange(60), 4)), range(60))
                .sample(task_rng(0, "train", i)) for i in range(2)]
    assert math.isfinite(learner.meta_backward(episodes)["loss"])
    task = {"source": "omniglot", "sampler": "meta-dataset"}
    with pytest.raises(ConfigError, match=r"task\.sampler: 'meta-dataset' episodes have 5 to 50 "
                                          r"ways, but 'maml'"):
        validate_config({"task": task, "learner": {"name": "maml"}})
    assert validate_config({"task": task, "learner": {"name": "protonet"}}).task.sampler == \
        "meta-dataset"


# -- class lists --------------------------------------------------------------------------------
def test_user_class_lists_for_a_folder_and_for_omniglot(tmp_path):
    from omniglot_fixture import make_omniglot_fixture

    from metaphi.data.omniglot import load_omniglot, omniglot_sources

    root = image_folder(tmp_path / "imgs", n_classes=6)
    lists = tmp_path / "test.txt"
    lists.write_text("# held-out classes\nclass04\nclass05\n")
    cfg = validate_config({**TINY, "task": folder_part(root, classes={
        "train": ["class00", "class01", "class02"], "test": str(lists)}),
        "learner": {"name": "protonet"}})
    s = build_sources(cfg)
    assert s.val is None and list(s.test.classes) == [4, 5] and list(s.train.classes) == [0, 1, 2]
    with pytest.raises(ValueError, match="in both train and test"):
        build_sources(validate_config({**TINY, "task": folder_part(root, classes={
            "train": ["class00", "class01"], "test": ["class01", "class02"]}),
            "learner": {"name": "protonet"}}))
    star = build_sources(validate_config({**TINY, "task": folder_part(root, classes={
        "train": ["class00", "class01"], "test": ["*"]}), "learner": {"name": "protonet"}}))
    assert list(star.test.classes) == [2, 3, 4, 5]

    images = load_omniglot(make_omniglot_fixture(tmp_path / "omniglot"),
                           cache_dir=tmp_path / "cache", strict=False)
    train, val, test = omniglot_sources(images=images, n_way=2, k_shot=1, n_query=2,
                                        classes=ClassLists(train=["images_background"],
                                                           test=["images_evaluation"]),
                                        rotations=[0])
    names = train.data.class_names
    assert val is None and {names[c] for c in test.classes} == {
        f"Angelic/character0{i}/rot000" for i in (1, 2, 3)}
    assert len(train.classes) == 5  # Latin 3 + Greek 2 characters, as drawn
    train, _, test = omniglot_sources(images=images, n_way=2, k_shot=1, n_query=2,
                                      classes=ClassLists(train=["Latin", "Greek/character01"],
                                                         test=["Angelic/character01/rot090",
                                                               "Angelic/character02"]))
    assert len(train.classes) == 4 * 4 and len(test.classes) == 1 + 4
    with pytest.raises(ValueError, match="Klingon"):
        omniglot_sources(images=images, classes=ClassLists(train=["Klingon"], test=["Angelic"]))


# -- regression families ------------------------------------------------------------------------
def test_regression_families_and_leave_one_family_out():
    for family in FAMILIES:
        src = FunctionSource(family, k_shot=5, n_query=7)
        t = src.sample(task_rng(0, "train", 0))
        assert t.shapes == ((5, 1), (5, 1), (7, 1), (7, 1)) and t.meta["family"] == family
        assert torch.isfinite(t.query_y).all() and float(t.query_y.abs().max()) < 12
        x, y = src.curve(t.meta)  # the task's function on a grid
        assert len(x) == len(y)
        assert src.sample(task_rng(0, "train", 0)).meta == t.meta
    cfg = validate_config({"task": {"source": "regression", "families": ["line", "cubic"],
                                    "test_families": ["bumps"]}, "learner": {"name": "maml"}})
    s = build_sources(cfg)
    assert {s.train.sample(task_rng(0, "train", i)).meta["domain"] for i in range(20)} == {
        "line", "cubic"}
    assert s.test.sample(task_rng(0, "test", 0)).meta["domain"] == "bumps"
    with pytest.raises(ConfigError, match="families"):
        validate_config({"task": {"source": "regression", "families": ["sines"]},
                         "learner": {"name": "maml"}})


# -- cross-domain testing -----------------------------------------------------------------------
def test_metaphi_test_on_another_source_with_batchnorm_choices(tmp_path, capsys):
    home, away = image_folder(tmp_path / "home", seed=3), image_folder(tmp_path / "away", seed=4)
    cfg = {**TINY, "name": "home", "steps": 2, "val_every": 2, "checkpoint_every": 2,
           "task": folder_part(home), "learner": {"name": "protonet"}}
    (tmp_path / "home.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "home.yaml"), "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    got = {}
    for bn in ("episode", "running", "support", "target"):
        assert main(["test", str(run), "--on", str(away), "--tasks", "10", "--batchnorm", bn,
                     "--no-progress", "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["meta_test"]["tasks"] == 10 and res["on"]["source"] == str(away)
        assert Path(res["path"]).name == f"test_seed1_on-away_{bn}.json"
        got[bn] = res["meta_test"]["loss"]
    assert len(set(got.values())) > 1  # the statistics matter
    # a mixture target: per-domain results, from a registered source with task.* options
    mix = [folder_part(home), folder_part(away)]
    assert main(["test", str(run), "--on", "mixture", f"task.parts={json.dumps(mix)}",
                 "task.names=[home, away]", "--tasks", "10", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "home:" in out and "away:" in out
    saved = json.loads(Path(out.strip().split("wrote ")[-1]).read_text())
    assert set(saved["meta_test"]["by_domain"]) == {"home", "away"}
    # targets that cannot serve the run are refused with the reason
    assert main(["test", str(run), "--on", "sinusoid", "--no-progress"]) == 2
    assert "regression" in capsys.readouterr().err
    assert main(["test", str(run), "--on", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "neither a task source" in capsys.readouterr().err


def test_support_statistics_make_each_query_independent_of_the_others():
    learner = ProtoNet(conv4_features(1, 4, 2), batchnorm="support").eval()
    task = tensor_source().sample(task_rng(0, "test", 0))
    model = learner.adapt(task.support_x, task.support_y)
    all_q = model(task.query_x)
    one_by_one = torch.cat([model(task.query_x[i:i + 1]) for i in range(len(task.query_x))])
    assert torch.allclose(all_q, one_by_one, atol=1e-5)
    episode = ProtoNet(conv4_features(1, 4, 2)).eval()
    episode.load_state_dict(learner.state_dict())
    assert not torch.allclose(episode.adapt(task.support_x, task.support_y)(task.query_x), all_q)


# -- exact resume --------------------------------------------------------------------------------
@pytest.mark.parametrize("learner", ["protonet", "maml"])
def test_resume_is_exact_with_a_mixture_and_augmentation(tmp_path, learner):
    one, two = image_folder(tmp_path / "one", seed=5), image_folder(tmp_path / "two", seed=6)
    augment = (["rotate", {"name": "mlti", "p": 0.5}, "affine"] if learner == "protonet"
               else ["rotate", "permute_labels"])
    cfg = {**TINY, "steps": 6, "val_every": 3, "checkpoint_every": 3, "test_tasks": 4,
           "task": {"source": "mixture", "parts": [folder_part(one), folder_part(two)],
                    "weights": [2, 1], "augment": augment},
           "learner": {"name": learner, **({"inner_lr": 0.1} if learner == "maml" else {})}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(["train", str(path), "--out", str(full), "--no-progress"]) == 0
    assert main(["train", str(path), "--out", str(split), "--no-progress", "steps=3"]) == 0
    assert main(["train", str(path), "--out", str(split), "--no-progress", "--resume"]) == 0
    rows = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
             for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (full, split)]
    assert rows[0] == rows[1] and len(rows[0]) == 6
    a, b = load_checkpoint(full / "best.pt"), load_checkpoint(split / "best.pt")
    for k in a["learner"]:
        assert torch.equal(a["learner"][k], b["learner"][k]), k
    ra, rb = (json.loads((d / "results.json").read_text())["meta_test"] for d in (full, split))
    assert ra == rb

