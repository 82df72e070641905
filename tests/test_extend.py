"""Ops registered from Python (resdsl.extend.register_op) behave like built-in ones, and
the registered-op example (examples/custom_op.py) runs."""

import importlib.util

import pytest
import torch

import resdsl
from resdsl.errors import ResdslError
from resdsl.extend import REGISTERED, register_op, unregister_op
from resdsl.ir.ops import OPS, ShapeError
from tests.conftest import ROOT


def _example():
    spec = importlib.util.spec_from_file_location("custom_op", ROOT / "examples" / "custom_op.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Double(torch.nn.Module):
    def __init__(self, attrs, shapes):
        super().__init__()
        self.factor = attrs.factor

    def forward(self, x):
        return x * self.factor


def _crop_shape(a, ins):
    c, h, w = ins[0]
    if a.by * 2 >= h:
        raise ShapeError(f"crop by {a.by} removes all of {h} rows", hint="crop less")
    return (c, h - 2 * a.by, w - 2 * a.by)


@pytest.fixture
def ops():
    register_op("twice", {"factor": 2.0}, shape=lambda a, ins: ins[0], torch=Double)
    register_op("crop", {"by": 1}, shape=_crop_shape,
                torch=lambda a, ins: torch.nn.ZeroPad2d(-a.by))
    yield
    for name in ("twice", "crop"):
        if name in REGISTERED:
            unregister_op(name)


def test_the_example_runs_and_agrees():
    result = _example().main(["--no-tvm"])
    assert result["scales"] == 4              # one layer_scale per block, each a parameter
    assert result["stem_err"] < 1e-6
    assert "mish" not in OPS and "layer_scale" not in OPS   # the example cleans up


@pytest.mark.slow
def test_the_example_builds_for_tvm_and_refuses_an_op_without_a_tvm_lowering():
    result = _example().main([])
    assert result["tvm_err"] is not None and result["tvm_err"] < 1e-4
    assert "`layer_scale` (registered with resdsl.register_op) has no tvm lowering" \
        in result["tvm_refused"]


def test_a_registered_op_is_checked_like_a_built_in_one(ops):
    arch = resdsl.loads("model m() { input [4, 8, 8]\n conv(4, k=1) -> twice(3) "
                        "-> crop(by=2) }")
    assert arch.output_shape == (4, 4, 4)
    x = torch.randn(1, 4, 8, 8)
    m = arch.to_torch(seed=0).eval()
    want = (m.conv(x) * 3.0)[:, :, 2:-2, 2:-2]
    assert torch.allclose(m(x), want)
    with pytest.raises(ResdslError, match=r"crop by 4 removes all of 8 rows") as err:
        resdsl.loads("model m() { input [4, 8, 8]\n crop(4) }", "t.arch")
    assert "t.arch:2:2" in str(err.value) and "hint: crop less" in str(err.value)
    with pytest.raises(ResdslError, match=r"expected a number, got the string"):
        resdsl.loads('model m() { input [4, 8, 8]\n twice("x") }')
    with pytest.raises(ResdslError, match=r"`crop` has no argument `bye`"):
        resdsl.loads("model m() { input [4, 8, 8]\n crop(bye=1) }")


def test_generated_source_names_the_registered_ops(ops):
    arch = resdsl.loads("model m() { input [4, 8, 8]\n twice }")
    src = arch.torch_source()
    assert "registered with resdsl.register_op (twice)" in src
    assert "_registered_module('twice', {'factor': 2.0}, ((4, 8, 8),))" in src


def test_registration_is_refused_for_taken_or_bad_names(ops):
    for name in ("conv", "stage", "floor", "twice", "Bad-Name", "in", "class", "double"):
        with pytest.raises(ValueError):
            register_op(name, shape=lambda a, ins: ins[0], torch=Double)
    with pytest.raises(TypeError):
        register_op("strange", {"x": "text"}, shape=lambda a, ins: ins[0], torch=Double)


def test_a_bad_shape_rule_result_is_an_error_at_the_layer(ops):
    register_op("broken", shape=lambda a, ins: (0, 1), torch=Double)
    try:
        with pytest.raises(ResdslError, match=r"shape rule of the registered op `broken`"):
            resdsl.loads("model m() { input [4, 8, 8]\n broken }")
    finally:
        unregister_op("broken")


def test_unregister_removes_the_op_from_every_backend_table(ops):
    from resdsl.backends import torch as torch_backend
    resdsl.loads("model m() { input [4, 8, 8]\n twice }").to_torch()
    assert "twice" in torch_backend.TORCH
    unregister_op("twice")
    assert "twice" not in torch_backend.TORCH and "twice" not in OPS
    with pytest.raises(ResdslError, match=r"unknown|not defined|no op|`twice`"):
        resdsl.loads("model m() { input [4, 8, 8]\n twice }")
