"""The ONNX backend: for every reference spec the model passes ONNX's full checker, its
node and initializer names are the layer names and state_dict keys, and ONNX Runtime
computes what the torch backend computes (eval mode) at batch 1 and 3.

Weights: the seeded initialisation with batch-norm statistics measured on a random batch
(as training would leave them), so eval-mode activations stay O(1) through 1000 layers;
with the raw initialisation (running mean 0, variance 1) deep networks' outputs reach
1e10 and no float32 comparison means anything.

Tolerance: 1e-5 max abs, or -- where float32 itself cannot get that close -- three times
the torch backend's own float32 error, measured against the torch backend in float64
(ResNet-50/101/152/1202, ResNeXt-101 and pre-activation ResNet-1001 at these weights:
torch's float32 output is 2e-5 to 1e-3 from its float64 output).
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch

import resdsl
from resdsl.backends.onnx import ONNX_OPS, OPSET
from resdsl.errors import ResdslError
from resdsl.ir.ops import OPS
from tests.conftest import ROOT

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SPECS = sorted(os.path.relpath(p, ROOT) for p in
               glob.glob(str(ROOT / "specs" / "*.arch"))
               + glob.glob(str(ROOT / "specs" / "resnext_forms" / "*.arch")))
SLOW = {"resnet1202", "preact_resnet1001", "densenet169", "densenet201", "resnet101",
        "resnet152", "resnext101_32x8d", "wide_resnet50_2", "resnext50_32x4d_a",
        "resnext50_32x4d_b", "resnext29_8x64d",
        # ImageNet-sized: a few seconds to a minute each on 2 shared cores
        "resnet34", "resnet50", "resnext50", "resnext50_32x4d", "densenet121",
        "resnext50_32x4d_c",
        # deep CIFAR nets: the quick loop keeps resnet20/32 and resnet18
        "preact_resnet164", "densenet_bc_100_12", "resnet110", "resnet56", "resnet44",
        # timm's family (issue 10): the quick loop keeps resnet18d
        "resnet26d", "resnet50d", "seresnet50", "seresnext50_32x4d", "ecaresnet50d",
        "resnetrs50", "resnet50_gn", "res2net50_26w_4s", "skresnet18", "resnest50d"}
TOL = 1e-5


def _param(path: str):
    name = os.path.splitext(os.path.basename(path))[0]
    return pytest.param(path, id=name, marks=[pytest.mark.slow] if name in SLOW else [])


def calibrated(arch, seed: int = 0) -> torch.nn.Module:
    """The seeded module with its batch norms' running statistics measured on a batch."""
    torch.manual_seed(seed)
    model = arch.to_torch(seed=seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None           # a plain average over the batches seen
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(
        (8, *arch.input_shape), dtype=np.float32))
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def session(model_proto):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1       # the test machine's cores are shared
    return ort.InferenceSession(model_proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def assert_matches_torch(arch, module, proto) -> None:
    sess = session(proto)
    (inp,) = sess.get_inputs()
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, *arch.input_shape),
                                                         dtype=np.float32)
        (got,) = sess.run(None, {inp.name: x})
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        assert got.shape == want.shape
        err = float(np.abs(got - want).max())
        if err <= TOL:
            continue
        # float32's own limit at these weights: the torch backend against itself in float64
        with torch.no_grad():
            exact = module.double()(torch.from_numpy(x).double()).numpy()
        module.float()
        noise = float(np.abs(want - exact).max())
        # ORT's optimised kernels round differently from torch's (skresnet18: ORT is
        # 1.4e-5 from float64 with its graph optimisations, 4e-6 without; torch 2.5e-6);
        # both are float32 computations of the float64 result: ORT must be within ten
        # times torch's own float32 error of it (a wrong graph is orders of magnitude off)
        ort_err = float(np.abs(got - exact).max())
        assert err <= 3 * noise or ort_err <= 10 * noise, (
            f"batch {batch}: ONNX Runtime differs by {err:.3g} from torch and by "
            f"{ort_err:.3g} from float64, where torch's own float32 error is {noise:.3g}")


def expected_keys(module) -> set[str]:
    return {k for k in module.state_dict() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("path", [_param(p) for p in SPECS])
def test_reference_spec(path):
    arch = resdsl.load(path)
    module = calibrated(arch)
    proto = arch.to_onnx(module.state_dict())
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == OPSET
    # names: one node per layer named as the layer, plus the extra nodes of layers that
    # take several ONNX nodes (a zeropad's strided Slice, a group norm's reshapes ...),
    # each named `<layer>.<what>`
    layers = {n for n in arch.graph if arch.graph.nodes[n]["op"] != "input"}
    names = [n.name for n in proto.graph.node]
    assert len(names) == len(set(names))
    assert layers <= set(names)
    assert all(n.rsplit(".", 1)[0] in layers for n in set(names) - layers)
    # initializers: the state_dict's keys (and such layers' constants, named the same way)
    inits = {i.name for i in proto.graph.initializer}
    keys = expected_keys(module)
    assert keys <= inits
    assert all(k.rsplit(".", 1)[0] in layers and k not in layers for k in inits - keys)
    # a dynamic batch dimension on the input and the output
    for value in (*proto.graph.input, *proto.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert_matches_torch(arch, module, proto)


@pytest.mark.parametrize("path", ["specs/resnet20.arch", "specs/resnet18.arch",
                                  pytest.param("specs/densenet_bc_100_12.arch",
                                               marks=pytest.mark.slow)])
def test_fold_bn(path):
    arch = resdsl.load(path)
    module = calibrated(arch)
    proto = arch.to_onnx(module.state_dict(), fold_bn=True)
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    # every batch norm right after a conv that feeds nothing else is gone
    g = arch.graph
    foldable = [n for n in g if g.nodes[n]["op"] == "bn"
                and g.nodes[next(iter(g.predecessors(n)))]["op"] == "conv"
                and g.out_degree(next(iter(g.predecessors(n)))) == 1]
    bns = sum(g.nodes[n]["op"] == "bn" for n in g)
    assert foldable and ops.count("BatchNormalization") == bns - len(foldable)
    assert_matches_torch(arch, module, proto)


def test_every_op_has_an_entry():
    assert set(ONNX_OPS) == set(OPS)


def test_an_op_without_an_entry_is_refused(monkeypatch):
    monkeypatch.delitem(ONNX_OPS, "zeropad")
    with pytest.raises(ResdslError, match="`zeropad` .* not supported by the onnx backend"):
        resdsl.load("specs/resnet20.arch").to_onnx()


def test_seeded_weights_are_the_torch_backends():
    arch = resdsl.load("specs/resnet20.arch")
    proto = arch.to_onnx(seed=3)
    sd = arch.to_torch(seed=3).state_dict()
    for init in proto.graph.initializer:
        if init.name in sd:
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(init),
                                          sd[init.name].numpy())


def test_cli_compile_onnx(tmp_path, capsys):
    from resdsl.cli import main
    from resdsl.weights import save_safetensors
    arch = resdsl.load("specs/resnet20.arch")
    module = calibrated(arch, seed=5)
    wfile = tmp_path / "w.safetensors"
    save_safetensors(module.state_dict(), str(wfile), force=True)
    out = tmp_path / "m.onnx"
    assert main(["compile", "specs/resnet20.arch", "--target", "onnx", "-o", str(out),
                 "--weights", str(wfile)]) == 0
    assert f"opset {OPSET}" in capsys.readouterr().out
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert_matches_torch(arch, module, proto)
    # never over an existing file without --force
    before = out.read_bytes()
    assert main(["compile", "specs/resnet20.arch", "--target", "onnx", "-o", str(out)]) == 1
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["compile", "specs/resnet20.arch", "--target", "onnx", "-o", str(out),
                 "--force", "--fold-bn"]) == 0
    assert out.read_bytes() != before
