"""`metaphi predict` on folders of images, and image-folder runs end to end."""
import csv
import hashlib
import json
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from metaphi.cli import main
from metaphi.loops.checkpoint import load_checkpoint, save_checkpoint
from metaphi.runs.config import HOW, POPULATION_FIELDS


def make_folder(root, n_classes=8, per_class=6, size=16, seed=0):
    """Each class is a fixed random binary pattern plus pixel noise: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        base = rng.random((size, size)) < 0.3
        d = root / f"glyph{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = base ^ (rng.random((size, size)) < 0.05)
            Image.fromarray((img * 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


def train_folder_run(data, out, steps: int, every: int, test_tasks: int, *extra: str) -> None:
    """A small 2-way 1-shot ProtoNet run (the Omniglot preset) on an image folder."""
    assert main(["train", "omniglot-protonet-5w1s", "--out", str(out), "--no-progress",
                 "task.source=folder", f"task.data_dir={data}", "task.n_way=2",
                 "task.train_n_way=null", "task.k_shot=1",
                 "task.n_query=3", "task.eval_n_query=3", "task.split_seed=1",
                 "model.width=8", "task.image_size=16", f"steps={steps}", f"val_every={every}",
                 f"val_tasks={2 * every}", f"test_tasks={test_tasks}",
                 f"checkpoint_every={every}", "meta_batch=2", *extra]) == 0


@pytest.fixture(scope="module")
def protonet_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    data = make_folder(tmp / "data")
    out = tmp / "run"
    train_folder_run(data, out, 20, 10, 20)
    return tmp, out


def test_image_folder_run_writes_results(protonet_run):
    _, out = protonet_run
    res = json.loads((out / "results.json").read_text())
    assert res["metric"] == "accuracy" and res["meta_test"]["tasks"] == 20
    assert 0.0 <= res["meta_test"]["mean"] <= 1.0
    assert (out / "episode.png").stat().st_size > 1000


def test_predict_labels_query_images_and_reports_accuracy(protonet_run, capsys):
    tmp, out = protonet_run
    src = tmp / "data"
    support, query = tmp / "support", tmp / "query"
    for c in ("glyph0", "glyph5", "glyph7"):
        (support / c).mkdir(parents=True)
        (query / c).mkdir(parents=True)
        files = sorted((src / c).iterdir())
        (support / c / "a.png").write_bytes(files[0].read_bytes())
        for f in files[1:4]:
            (query / c / f.name).write_bytes(f.read_bytes())
    assert main(["predict", str(out), "--support", str(support), "--query", str(query),
                 "--out", str(tmp / "pred")]) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp / "pred" / "predictions.csv")))
    assert len(rows) == 9 and {r["label"] for r in rows} <= {"glyph0", "glyph5", "glyph7"}
    assert "accuracy" in text
    acc = float(text.split("accuracy ")[1].split()[0])
    # near-copies of the support pattern: an embedding barely trained still gets them right
    assert acc >= 0.66
    assert (tmp / "pred" / "episode.png").stat().st_size > 1000


def test_predict_with_unlabelled_queries_and_a_missing_folder(protonet_run, capsys):
    tmp, out = protonet_run
    loose = tmp / "loose"
    loose.mkdir()
    for i, f in enumerate(sorted((tmp / "data" / "glyph1").iterdir())[:2]):
        (loose / f"q{i}.png").write_bytes(f.read_bytes())
    support = tmp / "support2"
    for c in ("glyph1", "glyph2"):
        (support / c).mkdir(parents=True)
        (support / c / "s.png").write_bytes(sorted((tmp / "data" / c).iterdir())[0].read_bytes())
    assert main(["predict", str(out), "--support", str(support), "--query", str(loose),
                 "--out", str(tmp / "pred2")]) == 0
    assert "accuracy" not in capsys.readouterr().out
    assert main(["predict", str(out), "--support", str(tmp / "nope"), "--query", str(loose)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_running_batchnorm_run_saves_its_statistics(tmp_path, capsys):
    """learner.batchnorm=running: the run estimates the statistics on meta-train episodes,
    saves them with φ, and `metaphi test` / `predict` use the saved ones."""
    from metaphi.runs import ConfigError
    from metaphi.runs.build import build_sources
    from metaphi.runs.run import load_run, meta_test

    data = make_folder(tmp_path / "data")
    out = tmp_path / "run"
    train_folder_run(data, out, 6, 3, 10, "learner.batchnorm=running",
                     "learner.batchnorm_tasks=4")
    res = json.loads((out / "results.json").read_text())
    cfg, learner = load_run(out)
    assert learner.batchnorm == "running" and bool(learner.bn_stats.fitted)
    assert float(learner.bn_stats.get_buffer("0_1_var").sum()) > 0  # loaded, not the initial ones
    again = meta_test(learner, build_sources(cfg), cfg.seed, cfg.test_tasks, "cpu",
                      progress=False)
    assert again["mean"] == res["meta_test"]["mean"]
    support = tmp_path / "support"
    for c in ("glyph0", "glyph5"):
        (support / c).mkdir(parents=True)
        (support / c / "a.png").write_bytes(sorted((data / c).iterdir())[0].read_bytes())
    assert main(["predict", str(out), "--support", str(support), "--query", str(support),
                 "--out", str(tmp_path / "pred")]) == 0
    assert "accuracy" in capsys.readouterr().out
    # `metaphi test --batchnorm` evaluates the saved φ the other way; a run made with episode
    # statistics gets running statistics estimated on its meta-train episodes
    assert main(["test", str(out), "--tasks", "10", "--json", "--no-progress",
                 "--batchnorm", "episode"]) == 0
    assert json.loads(capsys.readouterr().out)["batchnorm"] == "episode"
    assert (out / "test_seed1_episode.json").exists()
    epi = tmp_path / "episode-run"
    train_folder_run(data, epi, 3, 3, 10, "learner.batchnorm=episode")
    _, converted = load_run(epi, batchnorm="running")
    assert converted.batchnorm == "running" and bool(converted.bn_stats.fitted)
    # weights of another run are recognised by the fingerprint of the config they came from
    with pytest.raises(ConfigError, match="written by another run"):
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "config.yaml").write_text((epi / "config.yaml").read_text().replace(
            "depth: 4", "depth: 5"))
        (broken / "best.pt").write_bytes((epi / "best.pt").read_bytes())
        load_run(broken)
    # a run written before one of its options existed (config.yaml and the stored fingerprint
    # without it) still loads: the check hashes the config as the run folder holds it
    older = tmp_path / "older-version"
    shutil.copytree(epi, older)
    data = yaml.safe_load((older / "config.yaml").read_text())
    assert data["learner"].pop("batchnorm_tasks") == 50  # as if new, at its default
    (older / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    hashed = {k: v for k, v in {**dict.fromkeys(POPULATION_FIELDS), **data}.items()
              if k not in (*HOW, "steps", "name")}
    ck = load_checkpoint(older / "best.pt")
    ck["fingerprint"] = hashlib.sha256(yaml.safe_dump(hashed, sort_keys=True).encode()
                                       ).hexdigest()[:16]
    save_checkpoint(older / "best.pt", ck)
    cfg, _ = load_run(older)
    assert cfg.learner.batchnorm_tasks == 50
