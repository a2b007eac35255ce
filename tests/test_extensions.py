"""Extensions from outside the package: a toy learner and a toy dataset, each one file with one
registration, trained and tested through a config file and the CLI like the built-in ones."""
import json
import subprocess
import sys
import textwrap

import pytest

from metaphi.cli import main
from metaphi.registry import LEARNERS, SOURCES

TOY = textwrap.dedent('''
    """A user's extension module: a learner and a dataset, one registration each."""
    import numpy as np
    import torch
    from pydantic import Field

    from metaphi import Adapted, Learner, register_learner, register_source
    from metaphi.learners import forward
    from metaphi.registry import Options
    from metaphi.tasks import FewShotSource, TensorData
    from metaphi.tasks.fewshot import FewShotOptions
    from metaphi.tasks.sources import Splits, TaskInfo


    class CentroidOptions(Options):
        name: str = "centroid"
        temperature: float = Field(1.0, gt=0)


    @register_learner("centroid", options=CentroidOptions, model="embedding",
                      kinds=("classification",))
    class Centroid(Learner):
        """Nearest class centroid in a meta-learned embedding, logits -|z - c|^2 / T."""

        def __init__(self, model, loss="ce", temperature=1.0):
            super().__init__(loss)
            self.model, self.temperature = model, temperature

        def adapt(self, support_x, support_y, params=None, *, create_graph=None, steps=None):
            params = self.meta_params() if params is None else params
            mp = {k[len("model."):]: v for k, v in params.items()}
            with torch.set_grad_enabled(self.graph(create_graph)):
                z = forward(self.model, mp, support_x)
                n = int(support_y.max()) + 1
                centroids = torch.stack([z[support_y == c].mean(0) for c in range(n)])
            model = Adapted(self, mp)
            model.centroids = centroids
            return model

        def predict(self, adapted, x):
            z = forward(self.model, adapted.params, x)
            return -torch.cdist(z, adapted.centroids).pow(2) / self.temperature


    class BlobOptions(FewShotOptions):
        source: str = "toy-blobs"
        classes: int = Field(30, ge=6)
        dim: int = Field(8, ge=1)

        def info(self):
            return TaskInfo("classification", "vector", (self.dim,), n_way=self.n_way)


    @register_source("toy-blobs", options=BlobOptions)
    def blobs(o):
        rng = np.random.default_rng(0)
        means = rng.normal(0, 2, (o.classes, o.dim))
        x = means.repeat(20, 0) + rng.normal(0, 1, (o.classes * 20, o.dim))
        data = TensorData(torch.tensor(x, dtype=torch.float32),
                          torch.arange(o.classes).repeat_interleave(20))
        third = o.classes // 3
        parts = [range(0, third), range(third, 2 * third), range(2 * third, o.classes)]
        train, val, test = (FewShotSource(data, p, o.n_way, o.k_shot, o.n_query) for p in parts)
        return Splits(train, val, test, o.info())
''')

CONFIG = textwrap.dedent('''
    name: toy
    imports: [toy_extension.py]
    task: {source: toy-blobs, n_way: 3, k_shot: 2, n_query: 4, dim: 8}
    model: {name: mlp, hidden: [16]}
    learner: {name: centroid, temperature: 2.0}
    meta_optimizer: {name: adam, lr: 0.01}
    steps: 20
    meta_batch: 4
    val_every: 10
    val_tasks: 10
    test_tasks: 30
''')


def test_a_learner_and_a_dataset_registered_outside_the_package_train_through_the_cli(
        tmp_path, capsys):
    (tmp_path / "toy_extension.py").write_text(TOY)
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert "centroid" in LEARNERS and "toy-blobs" in SOURCES
    res = json.loads((out / "results.json").read_text())
    assert res["metric"] == "accuracy" and res["meta_test"]["tasks"] == 30
    assert res["meta_test"]["mean"] > 0.5  # 3-way: chance is 1/3
    # a fresh process finds the extension again from the saved config (an absolute path)
    p = subprocess.run([sys.executable, "-m", "metaphi", "test", str(out), "--json",
                        "--no-progress", "--seed", "0"], capture_output=True, text=True,
                       cwd=tmp_path.parent, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["meta_test"] == res["meta_test"]
    # the extension's options are validated like the built-ins'
    capsys.readouterr()
    cfg.write_text(CONFIG.replace("temperature: 2.0", "temprature: 2.0"))
    assert main(["train", str(cfg), "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "learner.temprature: 'centroid' has no option 'temprature'" in err
    assert "temperature" in err


def test_a_missing_extension_module_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.replace("toy_extension.py", "missing_module.py"))
    assert main(["train", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "imports: " in err and "missing_module.py': no such file" in err
    assert not (tmp_path / "r").exists()


def test_registering_twice_under_one_name_is_refused():
    from metaphi.registry import Options, register_learner

    class O(Options):
        name: str = "maml"

    with pytest.raises(ValueError, match="'maml' is already registered"):
        register_learner("maml", options=O)(type("Other", (), {}))
