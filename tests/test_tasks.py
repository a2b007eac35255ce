"""Tasks, task sources and samplers."""
import time

import numpy as np
import pytest
import torch
from PIL import Image

from metaphi.tasks import (FewShotSource, ImageFolderData, SinusoidSource, TensorData,
                           fewshot_splits, fixed_tasks, sample_tasks, stack_tasks, task_rng)


def toy_data(n_classes=10, per_class=8, dim=3):
    x = torch.randn(n_classes * per_class, dim)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    return x, y


def test_sinusoid_family_is_reproducible_and_in_range():
    fam = SinusoidSource(k_shot=5, n_query=7)
    a = fam.sample(task_rng(3, "train", 10, 2))
    b = fam.sample(task_rng(3, "train", 10, 2))
    c = fam.sample(task_rng(3, "train", 11, 2))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    assert not torch.equal(a.support_x, c.support_x)
    assert a.support_x.shape == (5, 1) and a.query_x.shape == (7, 1)
    assert 0.1 <= a.meta["amplitude"] <= 5.0 and 0.0 <= a.meta["phase"] <= np.pi
    assert a.support_x.abs().max() <= 5.0
    expect = a.meta["amplitude"] * torch.sin(a.support_x - a.meta["phase"])
    torch.testing.assert_close(a.support_y, expect)


def test_streams_are_independent():
    fam = SinusoidSource()
    tr = fam.sample(task_rng(0, "train", 0, 0))
    va = fam.sample(task_rng(0, "val", 0, 0))
    assert tr.meta["amplitude"] != va.meta["amplitude"]


def test_fewshot_task_shapes_labels_and_disjoint_support_query():
    x, y = toy_data()
    src = FewShotSource(TensorData(x, y), classes=range(10), n_way=4, k_shot=2, n_query=3)
    t = src.sample(np.random.default_rng(0))
    assert t.support_x.shape == (8, 3) and t.query_x.shape == (12, 3)
    assert t.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert sorted(set(t.query_y.tolist())) == [0, 1, 2, 3]
    rows = {tuple(r.tolist()) for r in t.support_x} & {tuple(r.tolist()) for r in t.query_x}
    assert not rows, "an example appears in both support and query"
    # every support example of label j belongs to the class named in meta["classes"][j]
    for j, name in enumerate(t.meta["classes"]):
        members = x[y == int(name)]
        for row in t.support_x[t.support_y == j]:
            assert (members == row).all(1).any()


def test_too_many_ways_is_a_clear_error():
    x, y = toy_data(n_classes=3)
    with pytest.raises(ValueError, match=r"5-way tasks need at least 5 classes, but this split has 3"):
        FewShotSource(TensorData(x, y), classes=range(3), n_way=5, k_shot=1, n_query=1)


def test_too_many_shots_names_the_class_and_numbers():
    x, y = toy_data(n_classes=4, per_class=8)
    keep = ~((y == 2) & (torch.arange(len(y)) % 8 >= 3))  # class 2 keeps 3 examples
    with pytest.raises(ValueError, match=r"class '2' has 3 examples, but k_shot \+ n_query = 1 \+ 5 = 6"):
        FewShotSource(TensorData(x[keep], y[keep]), classes=range(4), n_way=2, k_shot=1, n_query=5)


def test_nan_inputs_are_rejected():
    x, y = toy_data()
    x[5, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        TensorData(x, y)


def test_splits_never_share_classes_and_cover_fractions():
    x, y = toy_data(n_classes=20)
    tr, va, te = fewshot_splits((x, y), 3, 1, 2, splits=(0.6, 0.2, 0.2), seed=1)
    sets = [set(s.classes.tolist()) for s in (tr, va, te)]
    assert [len(s) for s in sets] == [12, 4, 4]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    with pytest.raises(ValueError, match="overlap"):
        fewshot_splits((x, y), 3, 1, 2, splits=([0, 1, 2, 3], [3, 4, 5], [6, 7, 8]))


def test_train_n_way_widens_only_meta_train_episodes():
    x, y = toy_data(n_classes=20)
    tr, va, te = fewshot_splits((x, y), 3, 1, 2, splits=(0.6, 0.2, 0.2), seed=1, train_n_way=8)
    assert tr.sample(task_rng(0, "train", 0)).support_y.unique().numel() == 8
    for src in (va, te):
        assert src.sample(task_rng(0, "test", 0)).support_y.unique().numel() == 3
    # 12 meta-train classes: 13 ways is named as the problem before any training
    with pytest.raises(ValueError, match="train_n_way=13 needs at least .* has 12"):
        fewshot_splits((x, y), 3, 1, 2, splits=(0.6, 0.2, 0.2), seed=1, train_n_way=13)


def test_sampling_is_fast_after_indexing():
    x = torch.randn(20000, 1, 8, 8)
    y = torch.arange(1000).repeat_interleave(20)
    src, *_ = fewshot_splits((x, y), 5, 1, 15)
    sample_tasks(src, 0, "train", 0, 5)  # warm up
    t0 = time.perf_counter()
    sample_tasks(src, 0, "train", 1, 200)
    per_task = (time.perf_counter() - t0) / 200
    # Microseconds to a millisecond when idle; the bound leaves room for a loaded CI machine
    # but fails if sampling scanned the 20000 items each time.
    assert per_task < 0.02, f"{per_task * 1e3:.2f} ms per task"


def test_fixed_tasks_depend_only_on_seed():
    fam = SinusoidSource()
    a = [t.meta["phase"] for t in fixed_tasks(fam, 5, "test", 4)]
    b = [t.meta["phase"] for t in fixed_tasks(fam, 5, "test", 4)]
    c = [t.meta["phase"] for t in fixed_tasks(fam, 6, "test", 4)]
    assert a == b and a != c


def test_stack_requires_equal_shapes():
    fam5, fam10 = SinusoidSource(k_shot=5), SinusoidSource(k_shot=10)
    rng = np.random.default_rng(0)
    batch = stack_tasks([fam5.sample(rng), fam5.sample(rng)])
    assert batch.support_x.shape == (2, 5, 1)
    with pytest.raises(ValueError, match="equal shapes"):
        stack_tasks([fam5.sample(rng), fam10.sample(rng)])


def test_image_folder_source(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(4):
        d = tmp_path / f"class{c}"
        d.mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(d / f"{i}.png")
    data = ImageFolderData(tmp_path, size=(10, 10))
    assert data.class_names == ["class0", "class1", "class2", "class3"]
    src = FewShotSource(data, range(4), n_way=3, k_shot=2, n_query=2)
    t = src.sample(np.random.default_rng(1))
    assert t.support_x.shape == (6, 1, 10, 10) and 0 <= float(t.support_x.min()) <= 1
    # every file is checked when the folder is read, before any task is drawn
    (tmp_path / "class0" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        ImageFolderData(tmp_path)
    # a file broken after that is named when it is read
    (tmp_path / "class0" / "broken.png").unlink()
    data = ImageFolderData(tmp_path)
    (tmp_path / "class0" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*0.png"):
        data.get(np.array([data.paths.index(tmp_path / "class0" / "0.png")]))


class _RaggedSource:
    """Tasks whose support size varies with the draw (they cannot be stacked)."""

    def sample(self, rng):
        from metaphi.tasks import Task

        k = int(rng.integers(1, 4))
        return Task(torch.as_tensor(rng.normal(size=(k, 2))), torch.zeros(k),
                    torch.as_tensor(rng.normal(size=(3, 2))), torch.zeros(3))


@pytest.mark.parametrize("ragged", [False, True])
def test_meta_batches_from_worker_processes_equal_in_process_sampling(ragged):
    from metaphi.tasks import meta_batches

    x, y = toy_data()
    src = _RaggedSource() if ragged else FewShotSource(TensorData(x, y), range(10), n_way=3,
                                                        k_shot=2, n_query=2)
    # steps 5..12 of the stream, tasks 1..4 of each step (a distributed rank's block)
    ref = list(meta_batches(src, 9, "train", 5, 13, 4, start=1))
    got = list(meta_batches(src, 9, "train", 5, 13, 4, start=1, workers=2))
    assert len(ref) == len(got) == 8 and all(len(b) == 4 for b in got)
    for step, (a, b) in enumerate(zip(ref, got), start=5):
        assert [t.shapes for t in a] == [t.shapes for t in b]
        for ta, tb, tc in zip(a, b, sample_tasks(src, 9, "train", step, 4, start=1)):
            for f in ("support_x", "support_y", "query_x", "query_y"):
                assert torch.equal(getattr(ta, f), getattr(tb, f))
                assert torch.equal(getattr(ta, f), getattr(tc, f))
    if ragged:  # the draws did differ in shape, so the list path was taken
        assert len({t.shapes for b in got for t in b}) > 1
