"""The ops of issue 10 on the TVM and ONNX backends: one small network using every one of
them (an SE gate, an ECA gate, split attention's branch softmax with card=2, group norm,
channel slices, avgpool with count_include_pad=false, padded and in ceil mode) computes
what the torch backend computes; an op a backend has no lowering for is a clear error."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import resdsl
from resdsl.ir.ops import OPS

NEW_OPS = {"sigmoid", "silu", "gelu", "hardsigmoid", "tanh", "leaky_relu", "identity", "mul",
           "gn", "channel_conv", "slice", "drop_path", "branch_softmax"}

SPEC = """
block se(channels, rd) {
    gate = global_avgpool -> fc1: conv(rd, k=1, bias=true) -> relu
        -> fc2: conv(channels, k=1, bias=true) -> sigmoid
    return in * gate
}

block eca(k = 3) {
    gate = global_avgpool -> conv: channel_conv(k=k) -> sigmoid
    return in * gate
}

block splat(channels, card = 2) {
    x = conv: conv(channels * 2, k=3, p=1, groups=card * 2) -> bn0: bn -> relu
    a = slice(x, 0, channels)
    b = slice(x, channels, 2 * channels)
    attn = (a + b) -> global_avgpool -> fc1: conv(8, k=1, bias=true) -> bn1: bn -> relu
        -> fc2: conv(channels * 2, k=1, bias=true) -> branch_softmax(2, card=card)
    w0 = slice(attn, 0, channels)
    w1 = slice(attn, channels, 2 * channels)
    return a * w0 + b * w1
}

block unit(channels) {
    main = conv1: conv(channels, k=3, p=1) -> bn1: bn -> se: se(channels, 8)
    skip = in
    return leaky_relu(main + skip, 0.1)
}

model newops(num_classes = 10, size = 32) {
    input [3, size, size]
    stem: conv(16, k=3, p=1) -> bn1: bn -> silu
    -> pool: avgpool(k=3, s=2, p=1, count_include_pad=false)
    -> gn1: gn(4) -> gelu -> keep: identity
    -> block1: unit(16)
    -> conv2: conv(16, k=3, p=1, bias=true) -> hardsigmoid -> eca: eca(5)
    -> splat: splat(8) -> tanh -> drop_path(0.1)
    -> smooth: avgpool(k=2, s=1)
    -> down: avgpool(k=2, s=2, ceil_mode=true, count_include_pad=false)
    -> head: global_avgpool -> flatten -> fc: linear(num_classes)
}
"""


@pytest.fixture(scope="module")
def arch():
    arch = resdsl.loads(SPEC)
    used = {d["op"] for _, d in arch.graph.nodes(data=True)}
    assert NEW_OPS <= used and NEW_OPS <= set(OPS)
    assert arch.graph.nodes["down"]["shape"] == (8, 8, 8)   # 15 -> 8: a partial window
    return arch


@pytest.fixture(scope="module")
def model(arch):
    """The torch backend's module (eval) with non-trivial norm weights and statistics, so
    that folding batch norm and group norm's affine are exercised."""
    model = arch.to_torch(seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                n = m.weight.shape[0]
                m.weight.copy_(0.4 * torch.rand(n, generator=gen) + 0.8)
                m.bias.copy_(0.4 * torch.rand(n, generator=gen) - 0.2)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


def reference(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def inputs(arch, batch: int) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, *arch.input_shape),
                                                        dtype=np.float32)


# ---- TVM ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tvm_built(arch, model):
    """One llvm build (resdsl's conv kernels with fused epilogues), shared by the tests."""
    pytest.importorskip("tvm", reason="apache-tvm is an optional extra")
    from resdsl.backends.tvm.artifact import build
    return build(arch, "llvm", weights=model.state_dict(), batch=2)


def _run_tvm(executable, params: dict, names: list[str], x: np.ndarray) -> np.ndarray:
    import tvm
    from tvm import relax
    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(params[n]) for n in names]
    return vm["main"](tvm.runtime.tensor(x), *args).numpy()


@pytest.mark.slow   # a TVM build
def test_llvm_agrees_with_torch(arch, model, tvm_built):
    x = inputs(arch, 2)
    y = _run_tvm(tvm_built.executable, tvm_built.params, tvm_built.param_names, x)
    ref = reference(model, x)
    assert np.isfinite(ref).all() and np.abs(ref).max() > 1e-3
    assert np.abs(y - ref).max() / np.abs(ref).max() <= 1e-4
    # the batch norms after convolutions (also on the [C, 1, 1] maps of split attention)
    # were folded, the other layers' weights are their own
    assert tvm_built.metadata["folded_batch_norms"] == 4
    assert tvm_built.params["eca.conv.weight"].shape == (1, 1, 5)
    assert {"gn1.weight", "gn1.bias"} <= set(tvm_built.param_names)


@pytest.mark.slow   # a TVM build
def test_default_pipeline_agrees_with_torch(arch, model):
    """Without resdsl's CPU kernels (the lowering the cuda target uses), compiled with the
    generic passes for llvm: squeeze-and-excitation's gate multiply is its own kernel."""
    pytest.importorskip("tvm", reason="apache-tvm is an optional extra")
    import tvm
    from resdsl.backends.tvm.compile import _parallelize_rest, prepare
    from resdsl.backends.tvm.lower import lower
    from resdsl.backends.tvm.target import make_target
    lowered = lower(arch, model.state_dict(), batch=2)
    target = make_target("llvm")
    mod = _parallelize_rest(prepare(lowered.mod, target))
    with target:
        executable = tvm.compile(mod, target=target)
    x = inputs(arch, 2)
    y = _run_tvm(executable, lowered.params, lowered.param_names, x)
    ref = reference(model, x)
    assert np.abs(y - ref).max() / np.abs(ref).max() <= 1e-4


@pytest.mark.slow   # a TVM build
def test_cuda_build(arch, model):
    """dlight's default GPU schedules take every function (no GPU needed to build): SE's
    gate convolution fused with a broadcasting multiply used to fail its matmul rule."""
    pytest.importorskip("tvm", reason="apache-tvm is an optional extra")
    from resdsl.backends.tvm.artifact import build
    built = build(arch, "cuda", weights=model.state_dict(), batch=2, cuda_arch="sm_90")
    assert built.metadata["target"] == "cuda" and built.metadata["folded_batch_norms"] == 4


def test_an_op_without_a_tvm_lowering_is_a_clear_error(tmp_path, capsys, monkeypatch):
    """A spec using an op the registry (and torch) know but the tvm backend does not is
    refused at `--target llvm`, naming the op and the layer, before anything is built."""
    pytest.importorskip("tvm", reason="apache-tvm is an optional extra")
    from resdsl.backends import torch as torch_backend
    from resdsl.backends.tvm.lower import LOWER
    from resdsl.cli import main
    monkeypatch.setitem(OPS, "fake_act", dataclasses.replace(OPS["relu"], name="fake_act",
                                                             example="fake_act"))
    monkeypatch.setitem(torch_backend.TORCH, "fake_act", torch_backend.TORCH["relu"])
    assert "fake_act" not in LOWER
    path = tmp_path / "fake.arch"
    path.write_text("model m() {\n    input [3, 8, 8]\n"
                    "    c: conv(4, k=3, p=1) -> odd: fake_act -> global_avgpool -> flatten\n}\n")
    out = tmp_path / "out"
    assert main(["compile", str(path), "--target", "llvm", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "op `fake_act` is not supported by the tvm backend (layer `odd`)" in err
    assert "fake.arch:3:" in err and not out.exists()


# ---- ONNX --------------------------------------------------------------------------

@pytest.mark.parametrize("fold_bn", [False, True])
def test_onnx_agrees_with_torch(arch, model, fold_bn):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    proto = arch.to_onnx(model.state_dict(), fold_bn=fold_bn)
    onnx.checker.check_model(proto, full_check=True)
    # ops of several nodes name their inner nodes and constants `<layer>.<what>`
    layers = {n for n in arch.graph if arch.graph.nodes[n]["op"] != "input"}
    keys = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    folded = {n for n in layers if arch.graph.nodes[n]["op"] == "bn"} if fold_bn else set()
    names = [n.name for n in proto.graph.node]
    assert len(names) == len(set(names)) and layers - folded <= set(names)
    inits = {i.name for i in proto.graph.initializer}
    for extra in (set(names) - layers) | (inits - keys):
        assert any(extra.startswith(f"{layer}.") for layer in layers), extra
    assert all(k.rsplit(".", 1)[0] in folded for k in keys - inits)
    assert "eca.conv.weight" in inits and "gn1.weight" in inits
    ops = {n.op_type for n in proto.graph.node}
    assert {"HardSigmoid", "Erf", "Softmax", "Mul", "LeakyRelu", "Tanh", "Slice"} <= ops
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = inputs(arch, batch)
        (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
        want = reference(model, x)
        assert got.shape == want.shape and np.abs(want).max() > 1e-3
        assert float(np.abs(got - want).max()) <= 1e-5, batch


def test_onnx_avgpool_count_include_pad(arch):
    proto = resdsl.loads(SPEC).to_onnx(seed=0)
    attrs = {n.name: {a.name: a.i for a in n.attribute if a.name == "count_include_pad"}
             for n in proto.graph.node if n.op_type == "AveragePool"}
    assert attrs == {"pool": {"count_include_pad": 0}, "smooth": {"count_include_pad": 1},
                     "down": {"count_include_pad": 0}}
