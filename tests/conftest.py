import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


@pytest.fixture(autouse=True)
def _repo_root_cwd(monkeypatch):
    """Specs and golden files use paths relative to the repository root."""
    monkeypatch.chdir(ROOT)


def spec(name: str) -> str:
    return os.path.join("specs", f"{name}.arch")
