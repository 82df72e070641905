"""The docstrings' examples run as tests (no network; small models)."""

import doctest
import importlib

import pytest

from tests.conftest import ROOT

# modules whose examples build large models or compile with TVM
SLOW = {"resdsl", "resdsl.backends.tvm.artifact", "resdsl.backends.tvm.lower",
        "resdsl.importer", "resdsl.backends.onnx"}


def _modules() -> list[str]:
    out = []
    for path in sorted((ROOT / "resdsl").rglob("*.py")):
        if ">>>" in path.read_text():
            parts = path.relative_to(ROOT).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


@pytest.mark.parametrize("name", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW
                                  else m for m in _modules()])
def test_doctests(name):
    module = importlib.import_module(name)
    globs = {**vars(module), "resdsl": importlib.import_module("resdsl")}
    for extra in ("torch", "torchvision"):
        globs[extra] = importlib.import_module(extra)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(module, name, globs=globs)
    assert tests, f"{name} has no doctests"
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
