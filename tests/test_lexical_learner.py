"""ProtoNet + TF-IDF (protonet_tfidf): its TF-IDF scores are the baseline's (scikit-learn's,
over characters or over token ids), its meta-gradient matches float64 finite differences,
batched == per task, bad inputs are clear errors, and it runs from a config through the CLI."""
import json

import numpy as np
import pytest
import torch

from metaphi.baselines import tfidf_loo_cosines, tfidf_task_accuracy
from metaphi.cli import main
from metaphi.learners import ProtoNetTfidf
from metaphi.models.text import NGramBagOptions, build_ngram_bag
from metaphi.tasks import Task
from metaphi.tasks.text import ByteTokenizer, pad_batch

from helpers import meta_grad
from test_meta_gradients import directional_fd_check
from test_text import INFO, TOPICS, sentences, token_tasks, write_csv


def sklearn_cosines(support, support_y, query, n_way, ngrams):
    """The reference: scikit-learn's TfidfVectorizer fit on the support token sequences, with
    the same token n-grams, and the baseline's nearest-centroid cosines."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    def grams(row):
        toks = [int(t) for t in row if int(t) != 0]
        return [" ".join(map(str, toks[i:i + n])) for n in ngrams
                for i in range(len(toks) - n + 1)]

    vec = TfidfVectorizer(analyzer=grams, sublinear_tf=True)
    xs = vec.fit_transform([r.tolist() for r in support])
    xq = vec.transform([r.tolist() for r in query])
    cent = np.vstack([np.asarray(xs[support_y == c].mean(0)) for c in range(n_way)])
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    return np.asarray(xq @ cent.T)


class Zero(torch.nn.Module):
    """A constant embedding: ProtoNet's cosine logits are all 0, only TF-IDF decides."""

    def forward(self, x):
        return torch.zeros(len(x), 3, dtype=torch.float64)


@pytest.mark.parametrize("ngrams", [(1,), (1, 2, 3, 4)])
def test_tfidf_cosines_equal_scikit_learns(ngrams):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(1, 9, (14, 12), generator=g)  # a small alphabet: shared n-grams
    x[1::3, 7:] = 0
    x[4, 0:] = torch.tensor([5] * 12)  # a repeated token: sublinear term frequency matters
    sx, sy, qx = x[:8], torch.arange(4).repeat(2), x[8:]
    qx[0, :] = torch.tensor([9, 10, 11, 12] * 3)  # only n-grams absent from the support set
    learner = ProtoNetTfidf(Zero(), analyzer="tokens", ngram_range=(ngrams[0], ngrams[-1]))
    got = learner.cosines(sx, sy, 4, qx)
    want = sklearn_cosines(sx, sy.numpy(), qx, 4, ngrams)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    assert float(got[0].abs().sum()) == 0.0


def test_char_analyzer_predicts_what_the_baseline_predicts():
    rng = np.random.default_rng(0)
    topics = list(TOPICS)[:4]
    tok = ByteTokenizer()
    sup = [s for t in topics for s in sentences(t, 2, rng)]
    qry = [s.upper() for t in topics for s in sentences(t, 5, rng)]  # lowercased by both
    sy, qy = np.repeat(np.arange(4), 2), np.repeat(np.arange(4), 5)
    task = Task(pad_batch([tok.encode(s) for s in sup], 200), torch.from_numpy(sy),
                pad_batch([tok.encode(s) for s in qry], 200), torch.from_numpy(qy))
    for analyzer in ("char_wb", "char"):
        learner = ProtoNetTfidf(Zero(), distance="cosine", analyzer=analyzer,
                                ngram_range=(2, 3)).double()
        _, acc = learner.episode(task)
        want = tfidf_task_accuracy(sup, sy, qry, qy, ngram_range=(2, 3), analyzer=analyzer)
        assert float(acc) == pytest.approx(want) and 0.3 < want < 1.0
    bpe_like = Task(task.support_x + 300, task.support_y, task.query_x, task.query_y)
    with pytest.raises(ValueError, match="analyzer: tokens"):
        learner.episode(bpe_like)


def bag_learner(analyzer="tokens"):
    torch.manual_seed(0)
    net = build_ngram_bag(NGramBagOptions(buckets=64, dim=4), INFO, None)
    return ProtoNetTfidf(net, batched=False, learn_scale=True, tfidf_weight=3.0,
                         analyzer=analyzer).double()


@pytest.mark.parametrize("analyzer", ["tokens", "char_wb"])
def test_meta_gradient_matches_finite_differences(analyzer):
    learner = bag_learner(analyzer)
    tasks = token_tasks(3)
    grads, _ = meta_grad(learner, tasks)
    assert float(grads["log_tfidf_weight"].abs()) > 0  # the weight really is meta-learned
    err = directional_fd_check(lambda: float(learner.meta_loss(tasks)[0].detach()),
                               learner.meta_params(), grads)
    assert err < 1e-5


def test_batched_path_equals_per_task_loop_and_the_three_line_api():
    learner = bag_learner()
    tasks = token_tasks(3)
    g_t, info_t = meta_grad(learner, tasks)
    learner.batched = True
    g_b, info_b = meta_grad(learner, tasks)
    assert info_b["loss"] == pytest.approx(info_t["loss"], rel=1e-10)
    for k in g_t:
        torch.testing.assert_close(g_b[k], g_t[k], rtol=1e-9, atol=1e-12)
    learner.eval()
    t = tasks[0]
    logits = learner.adapt(t.support_x, t.support_y)(t.query_x)
    loss, _ = learner.episode(t)
    ce = torch.nn.functional.cross_entropy(logits, t.query_y)
    assert float(ce) == pytest.approx(float(loss), rel=1e-12)
    # the TF-IDF part is what the learner adds to ProtoNet's logits, times w
    w = float(learner.log_tfidf_weight.detach().exp())
    proto = super(ProtoNetTfidf, learner).predict(learner.adapt(t.support_x, t.support_y),
                                                  t.query_x)
    torch.testing.assert_close(logits - proto, w * torch.from_numpy(sklearn_cosines(
        t.support_x, t.support_y.numpy(), t.query_x, 3, (1, 2, 3, 4))))
    assert learner.ngram_range == (1, 4)


def test_bad_inputs_and_options_are_clear_errors():
    learner = ProtoNetTfidf(torch.nn.Flatten())
    x = torch.randn(6, 1, 4, 4)
    y = torch.arange(3).repeat(2)
    with pytest.raises(ValueError, match="token ids.*for images use protonet"):
        learner.episode(Task(x, y, x, y))
    with pytest.raises(ValueError, match="tfidf_weight"):
        ProtoNetTfidf(torch.nn.Flatten(), tfidf_weight=0.0)
    with pytest.raises(ValueError, match="ngram_range"):
        ProtoNetTfidf(torch.nn.Flatten(), ngram_range=(3, 2))
    with pytest.raises(ValueError, match="analyzer"):
        ProtoNetTfidf(torch.nn.Flatten(), analyzer="words")


def test_runs_from_a_config_through_the_cli(tmp_path):
    data = write_csv(tmp_path / "data.csv", per_class=12)
    out = tmp_path / "run"
    assert main(["train", "sib200-protonet_tfidf-7w5s", "--out", str(out), "task.source=text",
                 f"task.data_dir={data}", "task.n_way=2", "task.k_shot=2", "task.n_query=4",
                 "task.eval_n_query=4", "task.split_fractions=[0.34,0.33,0.33]",
                 "model.buckets=4096", "model.dim=16", "model.lexical=0", "steps=6",
                 "val_every=3", "val_tasks=5", "test_tasks=10", "checkpoint_every=6",
                 "meta_batch=2", "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["meta_test"]["tasks"] == 10 and 0 <= res["meta_test"]["mean"] <= 1
    state = torch.load(out / "best.pt", weights_only=True)
    assert "log_tfidf_weight" in state["learner"]
    # the trained run meta-tested with a weight per task: a learner option that leaves φ alone
    for mode in ("meta", "support_loo"):
        assert main(["test", str(out), "--tasks", "10", "--no-progress",
                     f"learner.weight_per_task={mode}"]) == 0
    files = sorted(out.glob("test_seed*.json"))
    assert len(files) == 2  # one results file per setting
    assert all(json.loads(f.read_text())["meta_test"]["tasks"] == 10 for f in files)


# the per-task weight (weight_per_task: support_loo) -------------------------------------------
def topic_task(shots: int, ways: int = 4) -> tuple[Task, list[str], np.ndarray]:
    rng = np.random.default_rng(1)
    topics = list(TOPICS)[:ways]
    tok = ByteTokenizer()
    sup = [s for t in topics for s in sentences(t, shots, rng)]
    qry = [s for t in topics for s in sentences(t, 3, rng)]
    sy = np.repeat(np.arange(ways), shots)
    task = Task(pad_batch([tok.encode(s) for s in sup], 200), torch.from_numpy(sy),
                pad_batch([tok.encode(s) for s in qry], 200),
                torch.from_numpy(np.repeat(np.arange(ways), 3)))
    return task, sup, sy


def test_leave_one_out_cosines_leave_the_text_out_of_its_centroid():
    from sklearn.feature_extraction.text import TfidfVectorizer

    _, sup, sy = topic_task(shots=3)
    got = tfidf_loo_cosines(sup, sy, (2, 3), "char_wb")
    xs = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3), sublinear_tf=True
                         ).fit_transform(sup).toarray()
    for i in range(len(sup)):
        for c in range(4):
            rows = [j for j in range(len(sup)) if sy[j] == c and j != i]
            cent = xs[rows].mean(0)
            want = xs[i] @ cent / np.linalg.norm(cent)
            assert got[i, c] == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="two or more"):
        tfidf_loo_cosines(sup[:4], sy[:4])  # one text of class 1


@pytest.mark.parametrize("lexical", ["right", "wrong"])
def test_support_set_chooses_the_weight(lexical, monkeypatch):
    """With a constant embedding, TF-IDF scores that classify every left-out support text
    right get a weight, scores that put each into the next class get none."""
    import metaphi.learners.lexical as lex

    task, _, sy = topic_task(shots=2)
    shift = 0 if lexical == "right" else 1
    monkeypatch.setattr(lex, "tfidf_loo_cosines", lambda support, y, *a: np.eye(4)[
        (y + shift) % 4])
    learner = ProtoNetTfidf(Zero(), distance="cosine", weight_per_task="support_loo").double()
    learner.eval()
    learner.weight_per_task = "meta"  # the meta-learned w, to choose a multiple of
    best = learner.loo_factor(learner.adapt(task.support_x, task.support_y))
    learner.weight_per_task = "support_loo"
    adapted = learner.adapt(task.support_x, task.support_y)
    assert best > 0 if lexical == "right" else best == 0.0
    w = float(learner.log_tfidf_weight.detach().exp())
    # ProtoNet's logits are 0 here: the query logits are the chosen multiple of w's
    want = best * w * learner.cosines(task.support_x, task.support_y, 4, task.query_x)
    torch.testing.assert_close(adapted(task.query_x), want)


def test_per_task_weight_leaves_one_shot_tasks_and_meta_training_alone():
    def logits(task, training, mode):
        torch.manual_seed(0)
        enc = build_ngram_bag(NGramBagOptions(dim=8, buckets=64), INFO, None)
        learner = ProtoNetTfidf(enc, distance="cosine", weight_per_task=mode).double()
        learner.train(training)
        return learner.adapt(task.support_x, task.support_y)(task.query_x)

    one_shot, two_shot = topic_task(shots=1)[0], topic_task(shots=2)[0]
    for task, training in ((one_shot, False), (two_shot, True)):
        torch.testing.assert_close(logits(task, training, "support_loo"),
                                   logits(task, training, "meta"))
    # a two-shot task at meta-test gets a weight of its own (here not the meta-learned one)
    assert not torch.allclose(logits(two_shot, False, "support_loo"),
                              logits(two_shot, False, "meta"))
