"""ruff, with the rule set chosen in pyproject.toml ([tool.ruff.lint]), is clean."""

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _python_files() -> list[str]:
    """The tracked Python files (work in progress of others is checked once committed);
    every file under the source folders outside a git checkout."""
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        out = subprocess.run([git, "ls-files", "*.py"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
        return [f for f in out if (ROOT / f).exists()]
    return ["resdsl", "tests", "benchmarks"]


def test_ruff_is_clean():
    pytest.importorskip("ruff", reason="ruff comes with the test extra")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                             "--output-format", "concise", *_python_files()],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
