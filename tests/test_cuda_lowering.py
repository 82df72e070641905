"""cuda lowering (resdsl/backends/tvm/cuda.py): convolutions become im2col + matrix
products that dlight's Matmul rule schedules. No GPU is needed: the very module the cuda
build compiles runs on llvm against the torch backend, and the cuda build's device code
is inspected."""

import re

import numpy as np
import pytest
import torch

import resdsl
from tests.conftest import spec

tvm = pytest.importorskip("tvm", reason="apache-tvm is an optional extra: pip install -e .[tvm]")

from tvm import relax  # noqa: E402

from resdsl.backends.tvm.compile import lower_for  # noqa: E402
from resdsl.backends.tvm.cuda import (convs_to_gemm, gemm_schedule_report,  # noqa: E402
                                      lower_cuda)
from resdsl.backends.tvm.target import make_target  # noqa: E402
from tests.test_tvm_backend import torch_model  # noqa: E402  (batch norms with real statistics)


def conv_ops(mod) -> int:
    """relax.nn.conv2d calls left in `main`."""
    return str(mod["main"]).count("R.nn.conv2d(")


def check_on_llvm(arch, batch=2):
    """Lower for cuda, run that module on llvm (default pipeline), compare with torch."""
    model = torch_model(arch)
    lowered = lower_cuda(arch, model.state_dict(), batch=batch)
    n_convs = sum(d["op"] == "conv" for _, d in arch.graph.nodes(data=True))
    assert n_convs and conv_ops(lowered.mod) == 0
    assert str(lowered.mod["main"]).count("conv2d_gemm") >= n_convs
    # the cuda build compiles exactly this module
    cuda = make_target("cuda", "sm_90")
    same = lower_for(arch, model.state_dict(), cuda, batch)
    tvm.ir.assert_structural_equal(same.mod, lowered.mod)
    ex = tvm.compile(lowered.mod, target=tvm.target.Target("llvm"))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = np.random.default_rng(0).standard_normal((batch, *arch.input_shape), dtype=np.float32)
    y = vm["main"](tvm.runtime.tensor(x),
                   *[tvm.runtime.tensor(lowered.params[n]) for n in lowered.param_names]).numpy()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.isfinite(ref).all() and np.abs(ref).max() > 1e-3
    rel = np.abs(y - ref).max() / np.abs(ref).max()
    assert rel <= 1e-4, rel
    return lowered


def test_single_convs_match_relax_conv2d():
    """Grouped, strided, dilated, padded, 1x1 and batch > 1 against Relax's own conv2d."""
    rng = np.random.default_rng(0)
    cases = [  # n, c, h, w, f, k, stride, pad, dil, groups
        (2, 8, 9, 7, 16, 3, 1, 1, 1, 1), (1, 8, 9, 9, 8, 3, 2, 1, 1, 4),
        (3, 6, 8, 8, 12, 1, 1, 0, 1, 1), (1, 8, 8, 8, 16, 1, 1, 0, 1, 2),
        (1, 4, 10, 10, 4, 3, 1, 2, 2, 1), (2, 3, 15, 15, 8, 7, 2, 3, 1, 1),
        (1, 8, 8, 8, 8, 1, 2, 0, 1, 1)]
    for n, c, h, w, f, k, s, p, d, g in cases:
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((n, c, h, w), "float32"))
        wt = relax.Var("w", relax.TensorType((f, c // g, k, k), "float32"))
        with bb.function("main", [x, wt]):
            with bb.dataflow():
                y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(
                    x, wt, strides=s, padding=p, dilation=d, groups=g)))
                out = bb.emit_output(y)
            bb.emit_func_output(out)
        plain = bb.get()
        gemm, rewritten = convs_to_gemm(plain)
        assert rewritten == 1 and conv_ops(gemm) == 0
        args = [rng.standard_normal((n, c, h, w), dtype=np.float32),
                rng.standard_normal((f, c // g, k, k), dtype=np.float32)]
        outs = []
        for mod in (plain, gemm):
            vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
            outs.append(vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy())
        assert np.allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5), (n, c, h, w, f, k, s, p, d, g)


def test_resnet20_rewritten_module_on_llvm_equals_torch():
    lowered = check_on_llvm(resdsl.load(spec("resnet20")))
    report = gemm_schedule_report(lowered.mod, make_target("cuda", "sm_90"))
    assert report and set(report.values()) == {"Matmul"}, report


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnext50_32x4d", "densenet121"])
def test_reduced_imagenet_rewritten_module_on_llvm_equals_torch(name):
    lowered = check_on_llvm(resdsl.load(spec(name), params={"size": 64}), batch=1)
    # every fused convolution is taken by dlight's matmul rule, not its fallback
    report = gemm_schedule_report(lowered.mod, make_target("cuda", "sm_90"))
    assert report and set(report.values()) == {"Matmul"}, report


def kernels(source: str) -> set[str]:
    return set(re.findall(r'__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(', source))


def kernel_body(source: str, name: str) -> str:
    """The definition's body (the source declares every kernel first)."""
    start = re.search(rf"\b{name}\([^)]*\)\s*\{{", source).end()
    return source[start:].split("\n}\n", 1)[0]


@pytest.mark.slow
def test_cuda_build_has_matmul_kernels_not_the_conv_fallback():
    from resdsl.backends.tvm.artifact import build, device_source
    arch = resdsl.load(spec("resnet20"))
    source = device_source(build(arch, "cuda", cuda_arch="sm_90").executable, "cuda")
    names = kernels(source)
    gemms = {k for k in names if "conv2d_gemm" in k}
    assert gemms, sorted(names)
    # no legalized convolution (conv2d_nchw) is left for dlight's fallback
    assert not {k for k in names if "conv2d" in k and "gemm" not in k and "im2col" not in k}
    # the weights are read in place (no reshape copies them on every call)
    assert not re.search(r"void (?:__launch_bounds__\(\d+\) )?reshape\w*\([^)]*weight", source)
    for name in gemms:      # the matmul rule's tiles: operands staged in shared memory,
        body = kernel_body(source, name)        # 2-D thread blocks, a 4x4 register tile
        assert "__shared__" in body and "threadIdx.y" in body and "blockIdx.x" in body, name
        assert "_local_ptr[" in body, name


@pytest.mark.slow
def test_cuda_check_builds_without_running(capsys):
    import importlib.util

    from tests.conftest import ROOT
    path = ROOT / "benchmarks" / "cuda_check.py"
    module_spec = importlib.util.spec_from_file_location("cuda_check", path)
    cuda_check = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(cuda_check)
    assert cuda_check.main(["--quick", "--build-only", "--arch", "sm_90"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"built resnet50 batch 1 for cuda sm_90 in \d+\.\d s", out)
    assert "GPU part skipped: asked for with --build-only." in out
    assert re.search(r"\| resnet50 \| 1 \| \d+\.\d \|", out)
