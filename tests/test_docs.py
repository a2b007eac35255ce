"""The documentation site builds without a warning (`mkdocs build --strict`).

Broken links between pages, missing anchors, pages left out of the nav and API pages whose
module no longer imports all fail here. Needs the `docs` extra (part of `test`): without
mkdocs this test fails rather than skips.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed ({proc.returncode}):\n{output}"
    assert (tmp_path / "site" / "index.html").is_file(), output
    assert (tmp_path / "site" / "results" / "omniglot" / "index.html").is_file(), output
