"""One op, one place: every backend's table covers every op in the registry (or lists
it as unsupported, with a reason the user sees), and the docs' op table matches the
registry."""

import importlib
import re

import pytest

import resdsl
from resdsl.errors import ResdslError
from resdsl.ir.ops import OPS, backend_ops
from tests.conftest import ROOT


def _op_table(module) -> dict:
    """A backend module's op table: its public module-level dict keyed by op names."""
    tables = [v for k, v in vars(module).items() if not k.startswith("_")
              and k != "UNSUPPORTED" and isinstance(v, dict)
              and sum(1 for key in v if key in OPS) >= 3]
    assert tables, f"{module.__name__} has no table keyed by op name"
    return max(tables, key=lambda t: sum(1 for key in t if key in OPS))


def backends() -> list[tuple[str, dict, dict]]:
    from resdsl.backends import torch as torch_backend
    from resdsl.backends.tvm import lower
    out = [("torch", torch_backend.TORCH, torch_backend.UNSUPPORTED),
           ("tvm", lower.LOWER, lower.UNSUPPORTED)]
    if (ROOT / "resdsl" / "backends" / "onnx.py").exists():   # being written alongside
        onnx = importlib.import_module("resdsl.backends.onnx")
        out.append(("onnx", _op_table(onnx), getattr(onnx, "UNSUPPORTED", {})))
    return out


def missing(table: dict, unsupported: dict) -> list[str]:
    return [op for op in backend_ops() if op not in table and op not in unsupported]


@pytest.mark.parametrize("name,table,unsupported", backends(), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_every_backend_covers_every_op(name, table, unsupported):
    assert missing(table, unsupported) == [], f"{name}: no entry and not listed unsupported"
    assert not set(table) - set(OPS), f"{name}: entries for ops the registry lacks"
    for op, reason in unsupported.items():
        assert op in OPS and isinstance(reason, str) and reason, (name, op)


def test_a_new_op_without_backend_entries_is_reported(monkeypatch):
    monkeypatch.setitem(OPS, "softsign", OPS["relu"])
    for name, table, unsupported in backends():
        assert missing(table, unsupported) == ["softsign"], name


def test_an_unsupported_op_is_a_clear_error(monkeypatch):
    from resdsl.backends import torch as torch_backend
    arch = resdsl.load("specs/resnet20.arch")
    monkeypatch.setitem(torch_backend.UNSUPPORTED, "zeropad", "no reason, this is a test")
    with pytest.raises(ResdslError, match=r"op `zeropad` is not supported by the torch "
                                          r"backend: no reason, this is a test"):
        torch_backend.to_source(arch)


# the input an op's example is applied to, and the lines before it
_CONTEXT = {"linear": ("[16]", ""), "input": ("", ""),
            "add": ("[16, 8, 8]", "main = relu\n    skip = in\n"),
            "concat": ("[16, 8, 8]", "a = relu\n    b = in\n"),
            "mul": ("[16, 8, 8]", "x = relu\n    gate = global_avgpool -> sigmoid\n"),
            "slice": ("[16, 8, 8]", "x = relu\n"),
            "channel_conv": ("[16, 1, 1]", ""), "branch_softmax": ("[16, 1, 1]", "")}


@pytest.mark.parametrize("op", list(OPS))
def test_each_ops_example_builds_that_op(op):
    """The example quoted by docs and error hints is valid: it builds a layer of that op."""
    shape, before = _CONTEXT.get(op, ("[16, 8, 8]", ""))
    lines = f"input {shape}\n    {before}{OPS[op].example}" if shape else OPS[op].example
    arch = resdsl.loads(f"model m() {{\n    {lines}\n    relu\n}}\n"
                        if op == "input" else f"model m() {{\n    {lines}\n}}\n")
    assert op in {d["op"] for _, d in arch.graph.nodes(data=True)}


def _docs_ops_table() -> dict[str, list[str]]:
    text = (ROOT / "docs" / "language.md").read_text()
    section = text.split("\n## Ops\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    out = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        names = re.findall(r"`([a-z_]+)`", cells[0])
        args = cells[1].strip("`")
        fields = [] if args in ("", "tensors") else [a.split("=")[0].strip()
                                                     for a in args.split(",")]
        for n in names:
            out[n] = fields
    return out


def test_the_docs_op_table_matches_the_registry():
    documented = _docs_ops_table()
    assert sorted(documented) == sorted(backend_ops())
    for op, fields in documented.items():
        assert fields == [f.name for f in OPS[op].fields()], op
