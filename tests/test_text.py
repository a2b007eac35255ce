"""Text: tokenizers, the user's CSV/folder source and its errors, the shipped language splits,
the text encoders under every learner, text runs and `metaphi predict` on text through the CLI."""
import csv
import json

import numpy as np
import pytest
import torch

from metaphi.cli import main
from metaphi.data.textsets import read_splits
from metaphi.data.usertext import TextSourceOptions, read_texts, text_splits
from metaphi.learners import ANIL, MAML, MatchingNet, ProtoNet, R2D2
from metaphi.models.text import (NGramBagOptions, TextTransformerOptions, TokenCNNOptions,
                                 build_byte_cnn, build_ngram_bag, build_text_transformer)
from metaphi.tasks import Task, sample_tasks
from metaphi.tasks.sources import TaskInfo
from metaphi.tasks.text import (BYTE_VOCAB, BPETokenizer, ByteTokenizer, TextDataError,
                                encode_all, pad_batch)

# Six topics with their own words; each sentence mixes a topic's words with shared filler,
# so the classes are learnable but not by any single word.
TOPICS = {"sport": "goal match team score league coach player win",
          "food": "bread soup cook salt oven taste dinner sugar",
          "music": "song guitar band drum melody concert piano sing",
          "space": "planet orbit rocket star moon comet launch galaxy",
          "law": "court judge trial lawyer verdict appeal jury crime",
          "farm": "cow field tractor harvest wheat barn sheep farmer"}
FILLER = "the a of and to in is it on with".split()


def sentences(topic, n, rng):
    words = TOPICS[topic].split()
    return [" ".join(rng.choice(words + FILLER, size=8)) for _ in range(n)]


def write_csv(path, per_class=8, domains=None, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"] + (["domain"] if domains else []))
        for topic in TOPICS:
            for i, s in enumerate(sentences(topic, per_class, rng)):
                w.writerow([s, topic] + ([domains[i % len(domains)]] if domains else []))
    return path


# -- tokenizers ---------------------------------------------------------------------------------
def test_byte_tokenizer_round_trip_with_markers_and_padding():
    tok = ByteTokenizer()
    text = "Zürich [E1] Αθήνα [/E1] 東京 [E2]x[/E2]"
    ids = tok.encode(text)
    assert ids.min() >= 1 and ids.max() < BYTE_VOCAB and 257 in ids and 260 in ids
    assert tok.decode(ids) == text
    batch = pad_batch(encode_all(tok, ["ab", "abcdef", "é"]), max_len=4)
    assert batch.dtype == torch.long and batch.shape == (3, 4)
    assert batch[0].tolist() == [98, 99, 0, 0] and batch[2].tolist() == [196, 170, 0, 0]


def test_bpe_tokenizer_learns_on_given_text_with_pad_zero():
    texts = [s for t in TOPICS for s in sentences(t, 20, np.random.default_rng(1))]
    tok = BPETokenizer.train(texts, 300)
    ids = tok.encode("[E1] guitar [/E1] concert")
    assert 0 not in ids.tolist() and tok.tok.token_to_id("<pad>") == 0
    assert tok.decode(ids).strip().startswith("[E1]") and "guitar" in tok.decode(ids)
    again = BPETokenizer.from_json(tok.to_json())
    assert again.encode("soup oven").tolist() == tok.encode("soup oven").tolist()


# -- the user's text and its errors ------------------------------------------------------------
def test_csv_and_folder_sources_give_token_tasks(tmp_path):
    o = TextSourceOptions(data_dir=str(write_csv(tmp_path / "d.csv")), n_way=2, k_shot=2,
                          n_query=3, split_fractions=(0.34, 0.33, 0.33))
    splits = text_splits(o)
    task = splits.train.sample(np.random.default_rng(0))
    assert task.support_x.dtype == torch.long and task.support_x.shape[0] == 4
    assert splits.info.input == "tokens" and splits.info.vocab_size == BYTE_VOCAB
    # folder layouts: <class>/<file>.txt (a file per example) and <class>.txt (a line each)
    root = tmp_path / "folder"
    (root / "sport").mkdir(parents=True)
    for i, s in enumerate(sentences("sport", 3, np.random.default_rng(0))):
        (root / "sport" / f"{i}.txt").write_text(s, encoding="utf-8")
    (root / "food.txt").write_text("\n".join(sentences("food", 4, np.random.default_rng(1)))
                                   + "\n\n", encoding="utf-8")
    lt = read_texts(root)
    assert lt.labels.count("sport") == 3 and lt.labels.count("food") == 4


def test_bad_text_data_errors_name_the_place(tmp_path):
    bad = tmp_path / "empty.csv"
    bad.write_text("text,label\nhello there,a\n   ,b\n", encoding="utf-8")
    with pytest.raises(TextDataError, match=r"empty text.*empty.csv:3"):
        read_texts(bad)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("text,label\ncaf\u00e9 au lait,a\n".encode("latin-1"))
    with pytest.raises(TextDataError, match=r"latin1.csv: not valid UTF-8 \(byte 14, line 2"):
        read_texts(latin1)
    cols = tmp_path / "cols.csv"
    cols.write_text("sentence,label\nx,a\n", encoding="utf-8")
    with pytest.raises(TextDataError, match="missing text"):
        read_texts(cols)
    (tmp_path / "f" / "a").mkdir(parents=True)
    (tmp_path / "f" / "a" / "1.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(TextDataError, match=r"1.txt: not valid UTF-8"):
        read_texts(tmp_path / "f")
    few = write_csv(tmp_path / "few.csv", per_class=3)
    o = TextSourceOptions(data_dir=str(few), n_way=2, k_shot=2, n_query=3,
                          split_fractions=(0.34, 0.33, 0.33))
    with pytest.raises(TextDataError, match=r"few.csv: meta-train: class '\w+' has 3 examples, "
                                            r"but k_shot \+ n_query = 2 \+ 3 = 5"):
        text_splits(o)


def test_domain_split_keeps_domains_apart_and_records_them(tmp_path):
    path = write_csv(tmp_path / "d.csv", per_class=20, domains=["en", "fr", "de", "es", "it"])
    o = TextSourceOptions(data_dir=str(path), split="domains", n_way=3, k_shot=1, n_query=2)
    splits = text_splits(o)
    seen = [{t.meta["domain"] for t in sample_tasks(s, 0, "train", 0, 30)} for s in splits]
    assert all(seen) and not (seen[0] & seen[1]) and not (seen[0] & seen[2])


# -- shipped splits ------------------------------------------------------------------------------
def test_shipped_language_splits_are_disjoint_by_language():
    from metaphi.data.sib200 import language_meta, languages

    table = languages()
    assert len(table) == 205
    for name in ("sib200_language", "sib200_script"):
        parts = read_splits(name)  # raises if a language is in two parts
        assert sorted(sum(parts.values(), [])) == sorted(table)
        meta = language_meta(parts)
        if name == "sib200_script":  # whole scripts held out
            train_scripts = {table[c]["script"] for c in parts["train"]}
            assert not any(table[c]["script"] in train_scripts for c in parts["test"] + parts["val"])
        else:
            unseen = [c for c in parts["test"] if not meta[c]["seen_script"]]
            assert 10 <= len(unseen) < len(parts["test"])
    udhr = read_splits("udhr_language")
    base = {p: {c.split("_")[0] for c in codes} for p, codes in udhr.items()}
    assert not (base["train"] & base["test"]) and not (base["train"] & base["val"])
    assert not (base["val"] & base["test"])
    rel = read_splits("fewrel_domains")
    assert {n.split("/")[0] for n in rel["test"]} == {"pubmed"}
    assert {n.split("/")[0] for n in rel["train"]} == {"wiki", "nyt", "semeval"}


# -- encoders x learners -----------------------------------------------------------------------
INFO = TaskInfo("classification", "tokens", (24,), n_way=3, vocab_size=BYTE_VOCAB)
ENCODERS = {"ngram_bag": (build_ngram_bag, NGramBagOptions(buckets=512, dim=8)),
            "byte_cnn": (build_byte_cnn, TokenCNNOptions(emb=8, width=4, kernels=[3])),
            "text_transformer": (build_text_transformer,
                                 TextTransformerOptions(dim=8, heads=2, ff=8, layers=1))}


def token_tasks(n=2):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randint(1, 257, (12, 24), generator=g)
        x[::2, 15:] = 0  # variable lengths
        y = torch.arange(3).repeat_interleave(2)
        out.append(Task(x[:6], y, x[6:], y))
    return out


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("cls", [ProtoNet, MatchingNet, R2D2, MAML, ANIL])
def test_every_learner_trains_a_text_encoder(encoder, cls):
    torch.manual_seed(0)
    build, opts = ENCODERS[encoder]
    head = cls in (MAML, ANIL)
    learner = cls(build(opts, INFO, 3 if head else None),
                  **({"inner_lr": 0.1} if head else {"batched": encoder != "ngram_bag"}))
    tasks = token_tasks()
    learner.zero_grad()
    stats = learner.meta_backward(tasks)
    assert np.isfinite(stats["loss"])
    grads = [p.grad for p in learner.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    learner.eval()
    with torch.no_grad():
        out = learner.adapt(tasks[0].support_x, tasks[0].support_y)(tasks[0].query_x)
    assert out.shape == (6, 3)


def test_padding_does_not_change_an_embedding():
    torch.manual_seed(0)
    for build, opts in ENCODERS.values():
        enc = build(opts, INFO, None).eval()
        x = torch.randint(1, 257, (2, 10))
        padded = torch.cat([x, torch.zeros(2, 7, dtype=torch.long)], 1)
        torch.testing.assert_close(enc(x), enc(padded), rtol=1e-5, atol=1e-5)


# -- runs through the CLI and `metaphi predict` on text ----------------------------------------
def test_text_run_and_predict_through_the_cli(tmp_path, capsys):
    data = write_csv(tmp_path / "data.csv", per_class=12)
    out = tmp_path / "run"
    common = [f"task.data_dir={data}", "task.n_way=2", "task.k_shot=2", "task.n_query=4",
              "task.eval_n_query=4", "task.split_fractions=[0.34,0.33,0.33]", "model.buckets=4096",
              "model.dim=16", "steps=30", "val_every=10", "val_tasks=10", "test_tasks=20",
              "checkpoint_every=30", "meta_batch=2", "--no-progress"]
    assert main(["train", "sib200-protonet-7w5s", "--out", str(out), "task.source=text",
                 *common]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["meta_test"]["tasks"] == 20 and 0 <= res["meta_test"]["mean"] <= 1
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["metric"] > 0.9  # meta-training fits its episodes
    # support: a CSV of two new-ish classes; query: a folder with sub-folders (labelled)
    rng = np.random.default_rng(5)
    sup = tmp_path / "support.csv"
    with open(sup, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for topic in ("space", "law"):
            for s in sentences(topic, 3, rng):
                w.writerow([s, topic])
    query = tmp_path / "query"
    for topic in ("space", "law"):
        (query / topic).mkdir(parents=True)
        for i, s in enumerate(sentences(topic, 4, rng)):
            (query / topic / f"{i}.txt").write_text(s, encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", str(out), "--support", str(sup), "--query", str(query),
                 "--out", str(tmp_path / "pred")]) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "pred" / "predictions.csv", encoding="utf-8")))
    assert len(rows) == 8 and {r["label"] for r in rows} <= {"space", "law"} and rows[0]["text"]
    assert 0 <= float(text.split("accuracy ")[1].split()[0]) <= 1
    # an unlabelled query CSV; a bad support file is a one-line error
    q = tmp_path / "q.csv"
    q.write_text("text\nrocket orbit the moon\njudge and the jury\n", encoding="utf-8")
    assert main(["predict", str(out), "--support", str(sup), "--query", str(q),
                 "--out", str(tmp_path / "pred2")]) == 0
    assert "accuracy" not in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\n,space\n", encoding="utf-8")
    assert main(["predict", str(out), "--support", str(bad), "--query", str(q)]) == 2
    assert "bad.csv:2" in capsys.readouterr().err
    # ANIL (head adapted) end to end on the same data: 2-way head, inner loop on the head
    assert main(["train", "sib200-anil-7w5s", "--out", str(tmp_path / "anil"),
                 "task.source=text", *common, "steps=10", "checkpoint_every=10",
                 "learner.eval_inner_steps=3"]) == 0
    res = json.loads((tmp_path / "anil" / "results.json").read_text())
    assert 0 <= res["meta_test"]["mean"] <= 1


def test_second_order_maml_through_the_ngram_bag_matches_finite_differences():
    """The bag's gradient is differentiable again (embedding_bag's backward is not)."""
    from helpers import meta_grad
    from test_meta_gradients import directional_fd_check

    torch.manual_seed(0)
    net = build_ngram_bag(NGramBagOptions(buckets=64, dim=4), INFO, 3).double()
    learner = MAML(net, inner_lr=0.5, inner_steps=2).double()
    tasks = token_tasks()
    grads, _ = meta_grad(learner, tasks)
    err = directional_fd_check(lambda: float(learner.meta_loss(tasks)[0].detach()),
                               learner.meta_params(), grads)
    assert err < 1e-5


def test_bpe_vocabulary_is_learned_on_meta_train_text_only(tmp_path, monkeypatch):
    monkeypatch.setenv("METAPHI_CACHE", str(tmp_path / "cache"))
    path = write_csv(tmp_path / "d.csv", per_class=10)
    with open(path, "a", newline="", encoding="utf-8") as f:  # a class of its own words
        w = csv.writer(f)
        for _ in range(10):
            w.writerow(["quokkazzz quokkazzz wombatqqq", "zoo"])
    from metaphi.tasks.fewshot import split_classes

    names = sorted([*TOPICS, "zoo"])
    fractions = (0.34, 0.33, 0.33)
    seed = next(s for s in range(50)  # a split that keeps 'zoo' out of meta-training
                if names.index("zoo") not in split_classes(len(names), fractions, s)[0])
    o = TextSourceOptions(data_dir=str(path), tokenizer="bpe", bpe_vocab=300, n_way=2,
                          k_shot=2, n_query=3, split_fractions=fractions, split_seed=seed)
    splits = text_splits(o)
    tok = splits.tokenizer
    assert not any("okka" in v or "zzz" in v for v in tok.tok.get_vocab())
    assert len(tok.encode("quokkazzz")) > 3  # unseen words fall apart into small pieces
    assert splits.info.vocab_size == 300 and tok.vocab_size <= 300
    x = splits.train.sample(np.random.default_rng(0)).support_x
    assert int(x.max()) < 300 and (x == 0).any()  # padded with 0
    assert list((tmp_path / "cache" / "text").glob("bpe_300_*.json"))  # cached
