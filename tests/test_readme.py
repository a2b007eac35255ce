"""The README's code runs as written: every Python block is executed, and every `metaphi`
command in its shell blocks parses with the CLI's own parser."""
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_is_a_front_page():
    assert len(README.read_bytes()) <= 10 * 1024
    assert blocks("python"), "the README shows Python code"


@pytest.mark.parametrize("i", range(len(blocks("python"))))
def test_python_blocks_run_as_written(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks("python")[i], f"README.md python block {i}", "exec"), namespace)
    if "y_hat" in namespace:  # the quick start: a trained learner adapts and predicts
        import torch

        y, truth = namespace["y_hat"], 3 * torch.sin(torch.tensor([[0.5 - 1]]))
        assert y.shape == (1, 1) and torch.isfinite(y).all() and not y.requires_grad
        assert abs(float(y - truth)) < 1.0  # 1000 outer steps: a rough but real fit


def test_shell_commands_parse():
    from metaphi.cli import build_parser

    parser = build_parser()
    commands = [line.split("#")[0].strip() for b in blocks("bash") for line in b.splitlines()]
    metaphi = [c for part in commands for c in part.split("&&") if c.strip().startswith("metaphi")]
    assert len(metaphi) >= 5
    for cmd in metaphi:
        args, rest = parser.parse_known_args(shlex.split(cmd)[1:])
        assert all("=" in r for r in rest), cmd  # only field=value overrides are left over
