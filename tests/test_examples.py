"""The example scripts in examples/ run as written (public API only) on a tiny Omniglot."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_omniglot(tmp_path, monkeypatch) -> Path:
    import metaphi.data

    from omniglot_fixture import make_omniglot_fixture, write_mini_split

    folder = make_omniglot_fixture(tmp_path / "omniglot")
    write_mini_split(folder)
    # the fixture is a partial copy: load it without the completeness check (the examples
    # import omniglot_sources when they are loaded, after this)
    monkeypatch.setattr(metaphi.data, "omniglot_sources", functools.partial(
        metaphi.data.omniglot_sources, strict=False, cache_dir=tmp_path / "cache"))
    return folder


@pytest.mark.parametrize("name, extra", [
    ("protonet_omniglot", ["--train-ways", "5"]),
    ("maml_omniglot", ["--meta-batch", "2"]),
])
def test_example_trains_tests_saves_and_reproduces(name, extra, tiny_omniglot, tmp_path):
    example = load(name)
    runs = []
    for i in range(2):
        out = tmp_path / f"{name}_{i}.pt"
        res = example.main(["--data-dir", str(tiny_omniglot), "--split", "mini", "--steps", "4",
                            "--val-every", "4", "--val-tasks", "3", "--test-tasks", "4",
                            "--out", str(out), *extra])
        runs.append((res, torch.load(out, weights_only=True)))
    (res, phi), (again, phi_again) = runs
    assert res["tasks"] == 4 and 0.0 <= res["mean"] <= 1.0
    # the seed fixes every task and the initialisation: a second run is the same run
    assert res == again
    assert phi.keys() == phi_again.keys()
    assert all(torch.equal(phi[k], phi_again[k]) for k in phi)
    # φ was meta-trained: the saved weights are not the seed's initialisation
    torch.manual_seed(0)
    init = (example.ProtoNet(example.conv4_features()) if name == "protonet_omniglot"
            else example.MAML(example.conv4(5))).state_dict()
    moved = [k for k, v in init.items() if v.is_floating_point() and not torch.equal(v, phi[k])]
    assert any(k.endswith("weight") for k in moved)
