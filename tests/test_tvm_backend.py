"""TVM backend: llvm artifacts agree with the torch backend on every reference spec; cuda
builds real kernels here; artifacts round-trip and refuse to run where they cannot."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

import resdsl
from resdsl.backends.tvm.artifact import build, device_source, load_artifact, write_artifact
from resdsl.cli import main
from tests.conftest import spec
from tests.test_reference_specs import TORCHVISION

tvm = pytest.importorskip("tvm", reason="apache-tvm is an optional extra: pip install -e .[tvm]")

pytestmark = pytest.mark.slow   # TVM builds: minutes on a small machine


CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
         "preact_resnet164", "preact_resnet1001", "resnext29_8x64d", "densenet_bc_100_12"]
FORMS = ["resnext_forms/resnext50_32x4d_a", "resnext_forms/resnext50_32x4d_b",
         "resnext_forms/resnext50_32x4d_c"]


def torch_model(arch, seed=0):
    """The torch backend's module with non-trivial batch-norm statistics, so that folding
    batch norm into convolutions is actually exercised."""
    model = arch.to_torch(seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(0.4 * torch.rand(n, generator=gen) + 0.2)
                m.bias.copy_(0.2 * torch.rand(n, generator=gen) - 0.1)
    return model


def check_agrees(arch, batch=2):
    model = torch_model(arch)
    built = build(arch, "llvm", weights=model.state_dict(), batch=batch)
    from tvm import relax
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    x = np.random.default_rng(0).standard_normal((batch, *arch.input_shape), dtype=np.float32)
    params = [tvm.runtime.tensor(built.params[n]) for n in built.param_names]
    y = vm["main"](tvm.runtime.tensor(x), *params).numpy()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.isfinite(ref).all() and np.abs(ref).max() > 1e-3
    rel = np.abs(y - ref).max() / np.abs(ref).max()
    assert rel <= 1e-4, rel


@pytest.mark.parametrize("name", CIFAR)
def test_llvm_agrees_with_torch_cifar(name):
    check_agrees(resdsl.load(spec(name)))


@pytest.mark.parametrize("name", TORCHVISION + FORMS)
def test_llvm_agrees_with_torch_imagenet_reduced(name):
    check_agrees(resdsl.load(spec(name), params={"size": 64}))


def test_llvm_agrees_with_torch_with_avx2_plans(monkeypatch):
    """The blockings an AVX2 host gets (8 lanes: other register tiles, groups of 4 as
    column tiles of 8-lane vectors) compute the same network; they run on any x86-64 host
    with AVX2 or better, so this one checks them."""
    from resdsl.backends.tvm import compile as compile_module
    from resdsl.backends.tvm import target
    monkeypatch.setattr(compile_module, "host_cpu", lambda: target.CpuInfo("x86-64-v3", 8, 2))
    check_agrees(resdsl.load(spec("resnext50_32x4d"), params={"size": 96}))


def test_llvm_agrees_with_torch_resnet50_224():
    check_agrees(resdsl.load(spec("resnet50")), batch=1)


def test_artifact_round_trip_through_the_cli(tmp_path, capsys):
    out = tmp_path / "r20"
    assert main(["compile", spec("resnet20"), "--target", "llvm", "-o", str(out),
                 "--batch", "2", "--seed", "3"]) == 0
    assert {p.name for p in out.iterdir()} == {"model.so", "weights.safetensors",
                                               "metadata.json"}
    meta = json.loads((out / "metadata.json").read_text())
    arch = resdsl.load(spec("resnet20"))
    assert meta["spec_hash"] == arch.spec_hash() and meta["batch"] == 2
    assert meta["input_shape"] == [2, 3, 32, 32] and meta["target"] == "llvm"
    assert meta["tvm_version"] == tvm.__version__
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "--input", str(tmp_path / "x.npy"), "--output",
                 str(tmp_path / "y.npy"), "--repeats", "2"]) == 0
    printed = capsys.readouterr().out
    assert "latency: median" in printed and "sample 1: top-5" in printed
    ref = arch.to_torch(seed=3).eval()(torch.from_numpy(x)).detach().numpy()
    y = np.load(tmp_path / "y.npy")
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    art = load_artifact(out)                         # and from Python
    assert np.allclose(art(x), y)
    # an existing artifact is not replaced without --force
    assert main(["compile", spec("resnet20"), "--target", "llvm", "-o", str(out)]) == 1
    assert "exists" in capsys.readouterr().err


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "r20"
    write_artifact(build(resdsl.load(spec("resnet20")), "llvm"), out)
    return out


def copy(artifact, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(artifact, dst)
    return dst


def edit_meta(path, **changes):
    meta = json.loads((path / "metadata.json").read_text())
    meta.update(changes)
    (path / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("change,message", [
    (lambda p: edit_meta(p, tvm_version="0.19.0"), "built with tvm 0.19.0"),
    (lambda p: edit_meta(p, target="cuda", cuda_arch="sm_90"), "no CUDA GPU is visible"),
    (lambda p: edit_meta(p, cpu="x86-64-v9"), None),
    (lambda p: (p / "model.so").unlink(), "model.so is missing"),
    (lambda p: (p / "metadata.json").unlink(), "metadata.json is missing"),
    (lambda p: (p / "weights.safetensors").write_bytes(b"x" * 10), "does not match"),
])
def test_artifact_mismatch_is_a_clear_error(artifact, tmp_path, change, message, capsys,
                                           monkeypatch):
    if message is None:           # built for a higher CPU level than this machine's
        edit_meta(copy(artifact, tmp_path), cpu="x86-64-v4")
        # on an AVX-512 host every level runs, so the host is made an AVX2 one
        from resdsl.backends.tvm import artifact as artifact_module
        from resdsl.backends.tvm import target
        monkeypatch.setattr(artifact_module, "host_cpu",
                            lambda: target.CpuInfo("x86-64-v3", 8, 2))
        message = "lacks its vector instructions"
    else:
        change(copy(artifact, tmp_path))
    assert main(["run", str(tmp_path / "copy")]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_wrong_input_shape_is_a_clear_error(artifact):
    art = load_artifact(artifact)
    with pytest.raises(resdsl.ResdslError, match=r"compiled for \[1, 3, 32, 32\]"):
        art(np.zeros((2, 3, 32, 32), np.float32))


@pytest.fixture(scope="module")
def resnext_cuda():
    return build(resdsl.load(spec("resnext50_32x4d")), "cuda", cuda_arch="sm_90")


def test_cuda_artifact_for_resnext50_builds_with_conv_kernels(resnext_cuda, tmp_path):
    source = device_source(resnext_cuda.executable, "cuda")
    kernels = set(re.findall(r'__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(', source))
    convs = {k for k in kernels if "conv2d" in k}
    arch = resdsl.load(spec("resnext50_32x4d"))
    distinct = {(d["attrs"], arch.graph.nodes[next(iter(arch.graph.predecessors(n)))]["shape"])
                for n, d in arch.graph.nodes(data=True) if d["op"] == "conv"}
    assert len(convs) >= len(distinct) - 8       # one kernel per distinct conv (+ epilogue)
    for name in convs:                          # every kernel is bound to the GPU grid
        body = source.split(f"void {name}(" if "__launch_bounds__" not in source
                            else name + "(", 1)[1].split("\n}\n", 1)[0]
        assert "threadIdx.x" in body and "blockIdx.x" in body, name
    out = write_artifact(resnext_cuda, tmp_path / "rx50-cuda")
    assert json.loads((out / "metadata.json").read_text())["target"] == "cuda"


@pytest.mark.skipif(not tvm.cuda(0).exist, reason="no CUDA GPU on this machine: the cuda "
                    "artifact is built and inspected above, running it needs a GPU")
def test_cuda_artifact_runs_and_agrees_with_torch(resnext_cuda, tmp_path):
    arch = resdsl.load(spec("resnext50_32x4d"))
    out = write_artifact(resnext_cuda, tmp_path / "rx50-cuda")
    art = load_artifact(out)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    ref = arch.to_torch(seed=0).eval()(torch.from_numpy(x)).detach().numpy()
    assert np.abs(art(x) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_tune_then_compile_with_the_database(tmp_path, capsys):
    db = tmp_path / "db"
    assert main(["tune", spec("resnet20"), "--target", "llvm", "--trials", "2", "--db",
                 str(db), "-q"]) == 0
    assert "tuned" in capsys.readouterr().out
    records = (db / "database_tuning_record.json").read_text().splitlines()
    assert records
    # resuming keeps the records and adds new ones
    assert main(["tune", spec("resnet20"), "--target", "llvm", "--trials", "2", "--db",
                 str(db), "-q"]) == 0
    assert len((db / "database_tuning_record.json").read_text().splitlines()) > len(records)
    out = tmp_path / "tuned"
    assert main(["compile", spec("resnet20"), "--target", "llvm", "--db", str(db), "-o",
                 str(out)]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["tuning_db"] == str(db.resolve())
    arch = resdsl.load(spec("resnet20"))
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    ref = arch.to_torch(seed=0).eval()(torch.from_numpy(x)).detach().numpy()
    y = load_artifact(out)(x)
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()


def test_tune_cuda_without_a_gpu_asks_for_rpc(tmp_path, capsys):
    if tvm.cuda(0).exist:
        pytest.skip("a GPU is present: cuda tuning runs locally")
    # the architecture is named (else that is asked for first), the GPU to measure on is not
    assert main(["tune", spec("resnet20"), "--target", "cuda", "--cuda-arch", "sm_80",
                 "--trials", "4", "--db", str(tmp_path / "db")]) == 1
    assert "--rpc" in capsys.readouterr().err


@pytest.mark.parametrize("f,cin,groups,width,lanes,expect", [
    (64, 64, 1, 56, 8, dict(fb=16, xt=4, ow_padded=56, blockdiag=False)),
    (512, 512, 1, 7, 8, dict(fb=16, xt=4, ow_padded=8)),         # 7 columns: padded to 8
    (256, 256, 1, 14, 8, dict(fb=16, xt=4, ow_padded=16)),       # not 16x2: FMA latency
    (12, 48, 1, 32, 8, dict(f_padded=16)),                         # DenseNet-BC growth 12
    (128, 128, 32, 56, 8, dict(fb=8, blockdiag=True, cb=8)),       # ResNeXt groups of 4
    (256, 256, 32, 28, 8, dict(fb=8, blockdiag=False, cb=8)),      # groups of 8: one block
    (64, 64, 1, 56, 16, dict(fb=32, xt=8)),                        # AVX-512: 16 lanes
    (128, 128, 32, 56, 16, dict(fb=8, blockdiag=True, cb=8)),      # half registers: less
    (256, 256, 32, 28, 16, dict(fb=8, blockdiag=False, cb=8)),     # block-diagonal waste
    (1024, 1024, 32, 7, 16, dict(fb=32, blockdiag=False)),
])
def test_conv_plans(f, cin, groups, width, lanes, expect):
    from resdsl.backends.tvm.kernels import max_accumulators, plan_conv
    plan = plan_conv(f, cin, groups, width, lanes)
    for key, value in expect.items():
        assert getattr(plan, key) == value, (key, plan)
    assert plan.fb % lanes == 0 or (lanes == 16 and plan.fb == 8)
    assert plan.ow_padded % plan.xt == 0
    assert plan.xt * max(1, plan.fb // lanes) <= max_accumulators(lanes)
    if not plan.blockdiag and f >= 2 * lanes:
        # enough independent accumulators to hide the FMA latency
        assert plan.xt * plan.fb // lanes >= 7


@pytest.mark.parametrize("groups", [32, 16])
def test_half_register_plan_computes_the_grouped_convolution(groups):
    """The 8-channel blocks chosen for AVX-512 hosts run on any x86-64 (256-bit vectors)."""
    import torch

    from resdsl.backends.tvm.kernels import conv_func, pack_weights, plan_conv
    from resdsl.backends.tvm.target import make_target
    cin = f = 128
    plan = plan_conv(f, cin, groups, 14, 16)
    assert plan.fb == 8 and plan.blockdiag == (groups == 32)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, cin, 14, 14), dtype=np.float32)
    w = rng.standard_normal((f, cin // groups, 3, 3), dtype=np.float32)
    b = rng.standard_normal(f, dtype=np.float32)
    func = conv_func(1, cin, 14, 14, f, 3, 1, 1, 1, groups, plan, False, True)
    kernel = tvm.compile(tvm.IRModule({"main": func}), target=make_target("llvm")).jit()
    dev = tvm.cpu(0)
    out = tvm.runtime.tensor(np.zeros((1, f, 14, 14), np.float32), dev)
    kernel["main"](*[tvm.runtime.tensor(a, dev) for a in (x, pack_weights(w, groups, plan), b)],
                   out)
    ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                                torch.from_numpy(b), padding=1, groups=groups))
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,cin,h,w,f,stride,symbolic,change", [
    (2, 64, 12, 12, 96, 1, False, {}),                # packed chunks of the input
    (2, 64, 12, 12, 96, 1, True, {}),                 # symbolic input channels (DenseNet)
    (1, 128, 7, 7, 64, 1, False, {"rcb": 32}),        # the reduction in chunks
    (2, 32, 15, 15, 48, 2, False, {}),                # strided: gathered pixels, odd sizes
    (1, 64, 14, 14, 128, 2, False, {"rcb": 16}),
    (1, 48, 9, 11, 40, 3, False, {}),                 # stride 3, padded columns
    (1, 640, 7, 7, 48, 1, False, {}),                 # channel-vectorised, padded channels
    (1, 576, 9, 9, 40, 2, True, {"rcb": 64}),
    (1, 576, 9, 9, 40, 2, False, {"rcb": 64}),
    (2, 64, 12, 12, 96, 1, False, {"pack": False}),   # read in place
    (1, 64, 7, 7, 96, 1, False, {"pack": False}),     # padded columns, not packed
    (2, 32, 15, 15, 48, 2, False, {"xvec": 16, "fb": 8, "xt": 2, "xc": 32,
                                   "ow_padded": 64, "f_padded": 48}),  # gathered, by columns
    (4, 48, 14, 14, 64, 1, False, {"xvec": 0, "fb": 32, "xt": 14, "xc": 98,
                                   "ow_padded": 196}),  # the wide tile (28 accumulators)
    (4, 48, 14, 14, 64, 1, True, {"xvec": 0, "fb": 32, "xt": 14, "xc": 98,
                                  "ow_padded": 196}),
    (1, 40, 12, 12, 64, 1, False, {"xvec": 0, "fb": 32, "xt": 12, "xc": 144,
                                   "ow_padded": 144, "rcb": 16}),
])
def test_pointwise_kernel_matches_torch(n, cin, h, w, f, stride, symbolic, change):
    """A 1x1 convolution computed as a matrix product over its (possibly strided) pixels:
    each task packs (or gathers) its chunk of the input first. With bias, residual add and
    ReLU, against torch."""
    import dataclasses

    from resdsl.backends.tvm.kernels import conv_func, pack_weights, plan_pointwise
    from resdsl.backends.tvm.target import make_target
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    plan = dataclasses.replace(plan_pointwise(f, cin, 1, oh * ow, 16, subsample=stride > 1),
                               **change)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, cin, h, w), dtype=np.float32)
    wt = rng.standard_normal((f, cin, 1, 1), dtype=np.float32)
    b = rng.standard_normal(f, dtype=np.float32)
    res = rng.standard_normal((n, f, 1, oh * ow), dtype=np.float32)
    sub = (h, w, stride) if stride > 1 else None
    func = conv_func(n, None if symbolic else cin, 1, oh * ow, f, 1, 1, 0, 1, 1, plan,
                     True, True, subsample=sub)
    kernel = tvm.compile(tvm.IRModule({"main": func}), target=make_target("llvm")).jit()
    dev = tvm.cpu(0)
    out = tvm.runtime.tensor(np.zeros((n, f, 1, oh * ow), np.float32), dev)
    data = x if sub else x.reshape(n, cin, 1, h * w)
    kernel["main"](*[tvm.runtime.tensor(a, dev) for a in
                     (data, pack_weights(wt, 1, plan), b, res)], out)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(wt),
                                     torch.from_numpy(b), stride=stride)
    ref = torch.relu(ref + torch.from_numpy(res).reshape(n, f, oh, ow))
    np.testing.assert_allclose(out.numpy().reshape(n, f, oh, ow), ref.numpy(),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hw,change", [
    ((12, 12), {}),                                   # packed, column-vectorised
    ((5, 7), {}),                                     # padded columns
    ((12, 12), {"pack": False}),                      # read in place: a pass of its own
    ((7, 7), {"xvec": 0, "fb": 16, "xt": 7, "ow_padded": 49, "xc": 49}),  # channel tiles
    ((14, 14), {"xvec": 0, "fb": 32, "xt": 14, "ow_padded": 196, "xc": 98}),  # the wide tile
    ((12, 12), {"xc": 160}),     # 2 tasks of 4 channel blocks each: packed once, in a pass
])
def test_pointwise_kernel_prologue_matches_torch(hw, change):
    """DenseNet's bottleneck: the batch norm and ReLU of the first `cin` channels of a
    dense block's buffer, then the 1x1 convolution (with its own bias and ReLU), in one
    kernel whose input channels are symbolic; against torch, for two layers' widths."""
    import dataclasses

    from resdsl.backends.tvm.kernels import conv_func, pack_weights, plan_pointwise
    from resdsl.backends.tvm.target import make_target
    n, total, f = 2, 40, 32
    h, w = hw
    plan = dataclasses.replace(plan_pointwise(f, 24, 1, h * w, 16, images=n), **change)
    func = conv_func(n, None, 1, h * w, f, 1, 1, 0, 1, 1, plan, False, True,
                     prologue=(total, True))
    kernel = tvm.compile(tvm.IRModule({"main": func}), target=make_target("llvm")).jit()
    rng = np.random.default_rng(2)
    block = rng.standard_normal((n, total, h, w), dtype=np.float32)
    for cin in (24, 40):
        wt = rng.standard_normal((f, cin, 1, 1), dtype=np.float32)
        b, = rng.standard_normal((1, f), dtype=np.float32)
        scale, shift = rng.standard_normal((2, cin), dtype=np.float32)
        out = tvm.runtime.tensor(np.zeros((n, f, 1, h * w), np.float32))
        kernel["main"](*[tvm.runtime.tensor(a) for a in (
            block.reshape(n, total, 1, h * w), pack_weights(wt, 1, dataclasses.replace(
                plan, cb=cin)), b, scale, shift)], out)
        x = torch.relu(torch.from_numpy(block[:, :cin]) * torch.from_numpy(scale)[:, None, None]
                       + torch.from_numpy(shift)[:, None, None])
        ref = torch.relu(torch.nn.functional.conv2d(x, torch.from_numpy(wt), torch.from_numpy(b)))
        np.testing.assert_allclose(out.numpy().reshape(n, f, h, w), ref.numpy(),
                                   rtol=1e-4, atol=1e-4)


def test_block_diagonal_packing_matches_grouped_convolution():
    from resdsl.backends.tvm.kernels import pack_weights, plan_conv
    w = np.random.default_rng(0).standard_normal((16, 2, 3, 3), dtype=np.float32)  # 8 groups
    plan = plan_conv(16, 16, 8, 8, 8)
    packed = pack_weights(w, 8, plan)
    assert plan.blockdiag and packed.shape == (2, 8, 3, 3, 8)
    # output channel 5 (group 2) reads input channels 4 and 5 of its block only
    assert np.array_equal(packed[0, 4:6, :, :, 5], w[5])
    assert not packed[0, :4, :, :, 5].any() and not packed[0, 6:, :, :, 5].any()


def _threads_in_fresh_process(env_value):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    if env_value is not None:
        env["TVM_NUM_THREADS"] = env_value
    code = "import resdsl.backends.tvm, tvm; print(tvm.runtime.num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    return int(out)


def _physical_cores_by_lscpu() -> int:
    """The oracle, independent of resdsl: util-linux's view of (socket, core) pairs among
    the CPUs this process may run on."""
    import os
    import shutil
    import subprocess
    if not shutil.which("lscpu"):
        pytest.skip("lscpu (util-linux) is not installed")
    allowed = os.sched_getaffinity(0)
    rows = subprocess.run(["lscpu", "-p=CPU,CORE,SOCKET"], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    cores = {tuple(r.split(",")[1:]) for r in rows
             if r and not r.startswith("#") and int(r.split(",")[0]) in allowed}
    return len(cores)


def test_runtime_uses_every_physical_core():
    # TVM alone runs on half the logical CPUs of an x86 machine (1 of 2 cores here)
    assert _threads_in_fresh_process(None) == _physical_cores_by_lscpu()


def test_runtime_threads_set_by_the_user_are_kept():
    assert _threads_in_fresh_process("1") == 1


def test_concat_kernel_matches_numpy():
    from resdsl.backends.tvm.kernels import concat_func
    from resdsl.backends.tvm.target import make_target
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((2, c, 5, 7), dtype=np.float32) for c in (24, 12, 12)]
    scale, shift = rng.standard_normal((2, 48), dtype=np.float32)
    lib = tvm.compile(tvm.IRModule({"main": concat_func(2, [24, 12, 12], 5, 7, True, True)}),
                      target=make_target("llvm"))
    out = tvm.runtime.tensor(np.zeros((2, 48, 5, 7), np.float32))
    lib["main"](*[tvm.runtime.tensor(a) for a in (*parts, scale, shift)], out)
    ref = np.maximum(np.concatenate(parts, 1) * scale[:, None, None] + shift[:, None, None], 0)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6, atol=1e-6)


def test_densenet_concatenations_are_copy_kernels():
    from resdsl.backends.tvm.lower import lower
    arch = resdsl.load(spec("densenet_bc_100_12"))
    weights = arch.to_torch(seed=0).state_dict()
    mod = lower(arch, weights, batch=1, lanes=8).mod
    text = mod.script()
    concats = [n for n, d in arch.graph.nodes(data=True)
               if d["op"] == "concat" and arch.graph.in_degree(n) > 1]
    # one kernel call per concatenation: a copy kernel, or a step of a growing one (each
    # dense block's chain also starts its buffer with one concat_start call)
    calls = re.findall(r"R\.call_tir(?:_inplace)?\(cls\.(concat(?!_start)\w+)", text)
    assert len(calls) == len(concats) > 0
    assert "R.concat(" not in text


@pytest.mark.parametrize("n,k,j,lanes,bias", [(1, 2048, 1000, 16, True), (8, 512, 1000, 8, True),
                                              (3, 64, 10, 16, False)])
def test_linear_kernel_matches_numpy(n, k, j, lanes, bias):
    from resdsl.backends.tvm.kernels import linear_func, pack_linear, plan_linear
    from resdsl.backends.tvm.target import make_target
    plan = plan_linear(n, j, lanes)
    assert plan.j_padded >= j and plan.j_padded % plan.jb == 0
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, k), dtype=np.float32)
    w = rng.standard_normal((j, k), dtype=np.float32)
    b = rng.standard_normal(j, dtype=np.float32)
    lib = tvm.compile(tvm.IRModule({"main": linear_func(n, k, j, plan, bias)}),
                      target=make_target("llvm"))
    out = tvm.runtime.tensor(np.zeros((n, j), np.float32))
    args = [x, pack_linear(w, plan)] + ([b] if bias else [])
    lib["main"](*[tvm.runtime.tensor(a) for a in args], out)
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + (b if bias else 0)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
def test_pointwise_views_fuse_into_no_copy_kernel(name):
    """The 1x1 convolutions read their input through reshapes; chained reshapes must stay
    one view, not become a fused kernel that copies the activation."""
    from tvm import tirx

    from resdsl.backends.tvm.lower import lower
    from resdsl.backends.tvm.target import make_target
    from resdsl.backends.tvm.compile import prepare
    arch = resdsl.load(spec(name), params={"size": 64})
    mod = prepare(lower(arch, arch.to_torch(seed=0).state_dict(), batch=1, lanes=16).mod,
                  make_target("llvm"))
    names = [g.name_hint for g, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)]
    assert any(n.startswith("linear") for n in names)
    assert [n for n in names if re.fullmatch(r"fused(_reshape\d*)+", n)] == []


def test_concat_grow_kernel_matches_numpy():
    """A step of a growing concatenation: the new part is written into the block buffer
    in place, the output is the buffer's first channels through the affine map and ReLU;
    one function serves any channel counts."""
    from resdsl.backends.tvm.kernels import concat_grow_func
    from resdsl.backends.tvm.target import make_target
    lib = tvm.compile(tvm.IRModule({"main": concat_grow_func(2, 20, 5, 7, True, True)}),
                      target=make_target("llvm"))
    rng = np.random.default_rng(0)
    for c, g in [(12, 4), (20, 8)]:
        block = rng.standard_normal((2, 20, 5, 7), dtype=np.float32)
        new = rng.standard_normal((2, g, 5, 7), dtype=np.float32)
        scale, shift = rng.standard_normal((2, c), dtype=np.float32)
        buf = tvm.runtime.tensor(block)
        out = tvm.runtime.tensor(np.zeros((2, c, 5, 7), np.float32))
        lib["main"](buf, *[tvm.runtime.tensor(a) for a in (new, scale, shift)], out)
        expect = block.copy()
        expect[:, c - g:c] = new
        np.testing.assert_array_equal(buf.numpy(), expect)
        ref = np.maximum(expect[:, :c] * scale[:, None, None] + shift[:, None, None], 0)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6, atol=1e-6)


def test_concat_copy_step_writes_only_the_new_part():
    """A growing concatenation step whose batch norm and ReLU the next convolution
    applies: it copies the new part into channels c - g .. c of the buffer and nothing
    else (c from the length of its third argument)."""
    from resdsl.backends.tvm.kernels import concat_grow_func
    from resdsl.backends.tvm.target import make_target
    lib = tvm.compile(tvm.IRModule({"main": concat_grow_func(2, 20, 5, 7, True, True,
                                                             out=False)}),
                      target=make_target("llvm"))
    rng = np.random.default_rng(0)
    for c, g in [(12, 4), (20, 8)]:
        block = rng.standard_normal((2, 20, 5, 7), dtype=np.float32)
        new = rng.standard_normal((2, g, 5, 7), dtype=np.float32)
        buf = tvm.runtime.tensor(block)
        lib["main"](buf, tvm.runtime.tensor(new), tvm.runtime.tensor(np.zeros(c, np.float32)))
        expect = block.copy()
        expect[:, c - g:c] = new
        np.testing.assert_array_equal(buf.numpy(), expect)


def test_densenet_kernels_do_not_grow_with_concat_widths():
    """DenseNet-121: one concatenation kernel per dense block (not one per width), a few 1x1
    convolution kernels per output shape (input channels symbolic), no reshape code."""
    from tvm import tirx

    from resdsl.backends.tvm.compile import _drop_reshapes, prepare
    from resdsl.backends.tvm.lower import lower
    from resdsl.backends.tvm.target import make_target
    arch = resdsl.load(spec("densenet121"), params={"size": 64})
    mod = _drop_reshapes(prepare(lower(arch, arch.to_torch(seed=0).state_dict(), batch=1,
                                       lanes=16).mod, make_target("llvm")))
    names = [g.name_hint for g, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)]
    # a chain's steps copy their new part in (the next 1x1 convolution applies the batch
    # norm and ReLU); only the last block's last step, before the classifier, writes them
    assert len([n for n in names if n.startswith("concat_copy")]) == 4
    assert len([n for n in names if n.startswith("concat_grow")]) == 1
    assert len([n for n in names if n.startswith("concat")]) == 9
    # per block: the first layer's 1x1, the other layers' (with the prologue), the
    # transition's, the 3x3; and the stem
    assert len([n for n in names if n.startswith("conv")]) <= 17
    # each block's first layer applies its batch norm and ReLU in its 1x1 kernel too
    assert not [n for n in names if "multiply" in n]
    assert not [n for n in names if re.fullmatch(r"(fused_)?(reshape\d*_?)+", n)]


@pytest.mark.parametrize("shape", [(2, 8, 112, 112), (2, 3, 7, 9), (1, 5, 2, 3),
                                   (1, 2, 1, 1), (1, 4, 17, 16)])
def test_maxpool_kernel_matches_torch(shape):
    """The stems' 3x3 stride-2 max pool (padding 1) as resdsl's kernel: equal to torch for
    even and odd sizes, a single pixel, and all-negative inputs (the padding never wins)."""
    from resdsl.backends.tvm.kernels import maxpool_func
    from resdsl.backends.tvm.target import make_target
    x = np.random.default_rng(3).standard_normal(shape, dtype=np.float32) - 10
    ref = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1).numpy()
    kernel = tvm.compile(tvm.IRModule({"main": maxpool_func(*shape)}),
                         target=make_target("llvm")).jit()
    out = tvm.runtime.tensor(np.zeros(ref.shape, np.float32))
    kernel["main"](tvm.runtime.tensor(x), out)
    np.testing.assert_array_equal(out.numpy(), ref)


def test_stem_max_pool_is_resdsls_kernel_other_pools_stay_generic():
    """A 3x3, stride-2, padding-1 max pool (the stems') lowers to the hand kernel, on an
    odd-sized plane too; pools with other parameters keep TVM's own; the network agrees
    with torch."""
    from tvm import tirx

    from resdsl.backends.tvm.lower import lower
    arch = resdsl.loads("model pools() {\n    input [3, 21, 21]\n"
                        "    c: conv(8, k=3, p=1) -> stem: maxpool(k=3, s=2, p=1)\n"
                        "    -> other: maxpool(k=2) -> ceil: maxpool(k=3, s=2, p=1, ceil_mode=true)"
                        "\n    -> global_avgpool -> flatten -> fc: linear(4)\n}\n")
    mod = lower(arch, arch.to_torch(seed=0).state_dict(), batch=2, lanes=16).mod
    names = [g.name_hint for g, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)]
    assert [n for n in names if n.startswith("maxpool")] == ["maxpool0"]
    assert "max_pool2d" in str(mod["main"])       # the other two: relax's own pool
    check_agrees(arch)


def test_knob_tuning_records_resumes_and_applies(tmp_path, capsys):
    """`resdsl tune --knobs`: measured blockings of the hand kernels go to the database,
    a second run resumes (measures only new candidates), and `compile --db` builds with
    the best blocking of each kernel that beat its hand plan (still the same function)."""
    from dataclasses import asdict

    from resdsl.backends.tvm.compile import KNOB_FILE, load_knob_plans, lower_for
    from resdsl.backends.tvm.target import make_target
    db = tmp_path / "db"
    args = ["tune", spec("resnet20"), "--target", "llvm", "--knobs", "--trials", "2",
            "--db", str(db), "-q"]
    assert main(args) == 0
    assert "tuned" in capsys.readouterr().out
    first = [json.loads(line) for line in (db / KNOB_FILE).read_text().splitlines()]
    trials = [r for r in first if not (r.get("confirm") or r.get("final"))]   # (then confirmations)
    assert len(trials) == 2 and all(r["ok"] and r["ms"] > 0 and r["hand_ms"] > 0
                                    for r in trials)
    # confirmations and the final check of them together are measured; the final records
    # are applied only if the network's convolutions gained
    assert all(r["ms"] > 0 and r["network_ratio"] > 0 for r in first
               if r.get("confirm") or r.get("final"))
    assert all(r["ok"] or "together" in r["error"] for r in first if r.get("final"))
    assert main(args) == 0
    records = [json.loads(line) for line in (db / KNOB_FILE).read_text().splitlines()]
    trials = [r for r in records if not (r.get("confirm") or r.get("final"))]
    assert len(trials) == 4
    seen = {(r["task"], json.dumps(r["plan"], sort_keys=True)) for r in trials}
    assert len(seen) == 4                                   # nothing measured twice
    # a record that beat its hand plan is applied: make the first one so
    records = [r for r in records if not (r.get("confirm") or r.get("final"))]
    best = dict(records[0], ratio=0.5, final=True)
    with open(db / KNOB_FILE, "a") as f:
        f.write(json.dumps(best) + "\n")
    plans = load_knob_plans(db)
    assert asdict(plans[best["task"]]) == best["plan"]
    arch = resdsl.load(spec("resnet20"))
    lowered = lower_for(arch, arch.to_torch(seed=0).state_dict(), make_target("llvm"), 1,
                        plans=plans)
    assert asdict(lowered.convs[best["task"]]["plan"]) == best["plan"]
    out = tmp_path / "tuned"
    assert main(["compile", spec("resnet20"), "--target", "llvm", "--db", str(db), "-o",
                 str(out)]) == 0
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    ref = arch.to_torch(seed=0).eval()(torch.from_numpy(x)).detach().numpy()
    assert np.abs(load_artifact(out)(x) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_candidate_plans_are_valid_blockings():
    from resdsl.backends.tvm.kernels import (POINTWISE_ACCUMULATORS, candidate_plans,
                                             max_accumulators, plan_conv, plan_pointwise,
                                             plan_window)
    for hand, args in [(plan_pointwise(256, 64, 1, 3136, 16), (256, 64, 1, 3136, 16, 1)),
                       (plan_pointwise(256, 512, 1, 196, 16), (256, 512, 1, 196, 16, 1)),
                       (plan_pointwise(256, 512, 1, 196, 16, images=8),
                        (256, 512, 1, 196, 16, 1)),
                       (plan_conv(64, 64, 1, 56, 8), (64, 64, 1, 56, 8, 3)),
                       (plan_conv(128, 128, 32, 56, 16), (128, 128, 32, 56, 16, 3)),
                       (plan_window(128, 128, 32, 56, 16, 3, 1, 56), (128, 128, 32, 56, 16, 3))]:
        cands = candidate_plans(hand, *args)
        assert cands and hand not in cands and len(set(cands)) == len(cands)
        lanes = args[4]
        for c in cands:
            unit = c.xt * (c.xvec or 1)              # columns of a register tile
            assert c.ow_padded % unit == 0 and c.ow_padded >= args[3]
            registers = c.xt * (c.fb if c.xvec else max(1, c.fb // lanes))
            # a 1x1 product's wide tile (AVX-512) may take more, a window's tile may not
            wide = args[5] == 1 and not c.xvec and lanes >= 16
            assert registers <= (POINTWISE_ACCUMULATORS if wide else max_accumulators(lanes))
            assert c.xc == 0 or (c.xc % unit == 0 and c.ow_padded % c.xc == 0)
            # column-vectorised: a chunked 1x1 product, or a window's tile of whole rows
            assert not c.xvec or (c.xvec == lanes and (c.xc if args[5] == 1 else not c.xc))


@pytest.mark.parametrize("f,cin,groups,width,k,stride,lanes", [
    (64, 64, 1, 196, 1, 1, 16),       # a 1x1 product (column-vectorised by hand)
    (48, 640, 1, 49, 1, 1, 16),       # a 1x1 product, channel-vectorised by hand
    (32, 32, 1, 10, 3, 1, 16),        # a 3x3 convolution (one channel block: rows packed)
    (64, 64, 16, 9, 3, 2, 16),        # grouped, strided
    (32, 32, 8, 13, 3, 1, 16),        # groups of 4, column-vectorised, padded columns
    (16, 16, 16, 20, 3, 1, 16),       # depthwise, column-vectorised by hand
    (32, 32, 8, 13, 3, 1, 8),         # groups of 4 with AVX2's 8 lanes
])
def test_every_candidate_plan_computes_the_convolution(f, cin, groups, width, k, stride,
                                                       lanes):
    """The knob search may apply any candidate: each one compiles and computes the same
    convolution (bias, residual, ReLU) as torch."""
    from resdsl.backends.tvm.kernels import (candidate_plans, conv_func, pack_weights,
                                             plan_pointwise, plan_window)
    from resdsl.backends.tvm.target import make_target
    n, pad = 1, k // 2
    h = w = width if k > 1 else 1
    if k == 1:
        hand = plan_pointwise(f, cin, groups, width, lanes)
        h, w = 1, width
    else:
        hand = plan_window(f, cin, groups, (w + 2 * pad - k) // stride + 1, lanes, k, stride,
                           w)
        assert bool(hand.xvec) == (stride == 1 and cin // groups <= 4)
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, cin, h, w), dtype=np.float32)
    wt = rng.standard_normal((f, cin // groups, k, k), dtype=np.float32)
    b = rng.standard_normal(f, dtype=np.float32)
    res = rng.standard_normal((n, f, oh, ow), dtype=np.float32)
    ref = torch.relu(torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(b), stride=stride,
        padding=pad, groups=groups) + torch.from_numpy(res)).numpy()
    target = make_target("llvm")
    for plan in [hand] + candidate_plans(hand, f, cin, groups, ow, lanes, k):
        func = conv_func(n, cin, h, w, f, k, stride, pad, 1, groups, plan, True, True)
        kernel = tvm.compile(tvm.IRModule({"main": func}), target=target).jit()
        out = tvm.runtime.tensor(np.zeros((n, f, oh, ow), np.float32))
        kernel["main"](*[tvm.runtime.tensor(a) for a in
                         (x, pack_weights(wt, groups, plan), b, res)], out)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4, err_msg=str(plan))


@pytest.mark.parametrize("f,groups,width,lanes,column", [
    (128, 32, 56, 16, (4, 4, 64)),     # ResNeXt-50's groups of 4: 4 channels x 4 vectors
    (256, 32, 28, 16, (8, 2, 32)),     # groups of 8
    (64, 64, 56, 16, (1, 4, 64)),      # depthwise
    (128, 32, 56, 8, (4, 2, 64)),      # groups of 4 with AVX2
    (256, 32, 28, 8, None),            # groups of 8 fill an AVX2 register: no waste
    (512, 32, 14, 16, None),           # groups of 16: the channel tile wastes nothing
    (256, 32, 7, 16, None),            # a 7-wide row would pad to 16 columns
])
def test_grouped_plans(f, groups, width, lanes, column):
    """Narrow groups get a column-vectorised tile (FB = the group's channels by XT vectors)
    where it costs less than the channel-vectorised one, which multiplies block-diagonal
    zeros for them."""
    from resdsl.backends.tvm.kernels import max_accumulators, plan_grouped, plan_window
    plan = plan_grouped(f, f, groups, width, lanes)
    if column is None:
        assert plan is None and not plan_window(f, f, groups, width, lanes, 3, 1, width).xvec
        return
    assert (plan.fb, plan.xt, plan.ow_padded) == column
    assert plan.xvec == lanes and not plan.blockdiag and plan.cb == f // groups
    assert plan.fb * plan.xt <= max_accumulators(lanes)
    assert plan_window(f, f, groups, width, lanes, 3, 1, width) == plan
    assert not plan_window(f, f, groups, width // 2, lanes, 3, 2, width).xvec   # strided


def test_hand_plans_follow_the_in_network_measurements():
    """The rules the in-network knob search suggested (docs/tvm.md): a 7x7 plane's 1x1
    product is one tile of 4 vectors, a small strided 1x1 gathers its input whole, a
    strided 3x3 on a 56-wide plane is chunked and packed; the stem and stride-1 3x3 keep
    the row schedule."""
    from resdsl.backends.tvm.kernels import plan_pointwise, plan_window
    p = plan_pointwise(2048, 512, 1, 49, 16)
    assert (p.fb, p.xt, p.xvec, p.xc, p.ow_padded, p.pack) == (4, 4, 16, 64, 64, True)
    p = plan_pointwise(2048, 512, 1, 49, 8)
    assert p.xvec == 8 and p.fb * p.xt <= 8
    p = plan_pointwise(1024, 512, 1, 196, 16, subsample=True)
    assert not p.xvec and not p.pack
    p = plan_pointwise(512, 256, 1, 784, 16, subsample=True)
    assert not p.xvec and p.pack and p.xc
    p = plan_pointwise(256, 64, 1, 3136, 16)
    assert p.xvec and p.pack and p.xc % (p.xt * 16) == 0
    # wider column chunks where 32 tasks remain (the batch-8 search: 224 at 56x56, 160 at
    # 28x28); at batch 1 the chunks stay narrow
    assert plan_pointwise(256, 64, 1, 3136, 16, images=8).xc == 224
    assert plan_pointwise(256, 64, 1, 3136, 16, images=1).xc == 64
    assert plan_pointwise(512, 128, 1, 784, 16, images=8).xc == 160
    assert plan_pointwise(512, 128, 1, 784, 16, images=1).xc == 32
    assert plan_pointwise(512, 256, 1, 784, 16, subsample=True, images=8).xc == 112
    # a 14x14 plane: the wide tile (2 registers of channels by 14 columns), half a plane
    # a task from 4 images, a whole one below; strided, or with AVX2, the usual tiles
    p = plan_pointwise(1024, 512, 1, 196, 16, images=8)
    assert (p.fb, p.xt, p.xvec, p.xc, p.ow_padded, p.pack) == (32, 14, 0, 98, 196, True)
    assert plan_pointwise(256, 1024, 1, 196, 16, images=4).xc == 98
    p = plan_pointwise(1024, 512, 1, 196, 16, images=1)
    assert (p.fb, p.xt, p.xvec, p.xc) == (32, 14, 0, 196)
    assert plan_pointwise(1024, 512, 1, 196, 16, subsample=True, images=8).xt != 14
    assert plan_pointwise(1024, 512, 1, 196, 8, images=8).xvec
    assert plan_pointwise(2048, 512, 1, 49, 16, images=8).xvec         # 7x7: 4 vectors
    assert plan_pointwise(512, 128, 1, 784, 16, images=8).xvec         # 28x28: 8x2
    assert plan_window(128, 128, 1, 28, 16, 3, 2, 56).xc == 14
    assert plan_window(64, 3, 1, 112, 16, 7, 2, 224).xc == 0
    assert plan_window(64, 64, 1, 56, 16, 3, 1, 56).xc == 0
    p = plan_window(32, 128, 1, 56, 16, 3, 1, 56)        # one block of output channels:
    assert p.fb == p.f_padded == 32 and p.xc == p.ow_padded and p.pack   # whole rows packed
    assert plan_window(256, 256, 1, 14, 16, 3, 2, 28).xc == 0
