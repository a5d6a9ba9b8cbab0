"""STYLE.md "Tooling": ruff is the one linter/formatter, enforced through the test suite."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (pip install .[test])")
def test_ruff_check_and_format():
    paths = [str(ROOT / p) for p in ("emu", "tests", "experiments")]
    check = subprocess.run(["ruff", "check", *paths], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    fmt = subprocess.run(["ruff", "format", "--check", *paths], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout
