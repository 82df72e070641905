"""The PyTorch backend: torchvision-exact modules, training, compile/export/DDP, source."""

import ast
import importlib.util
import os

import pytest
import torch
import torchvision

import resdsl
from resdsl.cli import main
from tests.conftest import spec
from tests.reference_models import REFERENCES
from tests.test_reference_specs import TORCHVISION

QUICK = {"resnet18"}   # the rest of the zoo runs with the slow tests


def pair(name, size=64):
    arch = resdsl.load(spec(name))
    ours = arch.to_torch(seed=0)
    tv = getattr(torchvision.models, name)(weights=None)
    ours.load_state_dict(tv.state_dict(), strict=True)
    return arch, ours, tv


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow)
                                  for n in TORCHVISION])
def test_matches_torchvision_eval_train_and_gradients(name):
    torch.manual_seed(0)
    _, ours, tv = pair(name)
    x = torch.randn(2, 3, 64, 64)
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.eval(), tv.eval()
    with torch.no_grad():
        assert (ours(x) - tv(x)).abs().max().item() <= 1e-5
    ours.train(), tv.train()
    y_ours, y_tv = ours(x), tv(x)
    assert (y_ours - y_tv).abs().max().item() <= 1e-5
    (y_ours ** 2).mean().backward()
    (y_tv ** 2).mean().backward()
    tv_params = dict(tv.named_parameters())
    for key, p in ours.named_parameters():
        q = tv_params[key]
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), key
    for key, buf in tv.named_buffers():       # running statistics updated identically
        assert torch.allclose(ours.get_buffer(key).float(), buf.float(), atol=1e-6), key


def _map_form(sd_c: dict, form: str, groups: int = 32) -> dict:
    """Map grouped-convolution (form c) weights onto the explicit-path forms a and b."""
    out = {}
    for key, t in sd_c.items():
        prefix, _, rest = key.rpartition(".")
        block, _, layer = prefix.rpartition(".")
        if not block.startswith("layer") or layer not in ("conv1", "bn1", "conv2", "bn2",
                                                          "conv3"):
            out[key] = t
            continue
        if layer == "conv3" and form == "b":
            out[key] = t
            continue
        if rest == "num_batches_tracked":
            for i in range(groups):
                out[f"{block}.paths.{i}.{layer}.{rest}"] = t
            continue
        dim = 1 if layer == "conv3" else 0
        for i, chunk in enumerate(t.chunk(groups, dim)):
            out[f"{block}.paths.{i}.{layer}.{rest}"] = chunk.clone()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("form", ["a", "b"])
def test_the_three_resnext_forms_compute_the_same_function(form):
    c = resdsl.load("specs/resnext_forms/resnext50_32x4d_c.arch", params={"size": 32})
    other = resdsl.load(f"specs/resnext_forms/resnext50_32x4d_{form}.arch", params={"size": 32})
    mc = c.to_torch(seed=0).eval()
    with torch.no_grad():           # non-trivial batch-norm statistics
        for m in mc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
    mo = other.to_torch().eval()
    mo.load_state_dict(_map_form(mc.state_dict(), form), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = mc(x), mo(x)
    assert (a - b).abs().max().item() <= 1e-4 * a.abs().max().item()


@pytest.mark.slow
@pytest.mark.parametrize("name,batch,steps,lr", [("resnet20", 16, 6, 0.05),
                                                 ("resnet56", 8, 5, 0.05),
                                                 ("preact_resnet164", 8, 5, 0.05),
                                                 ("densenet_bc_100_12", 8, 5, 0.05),
                                                 ("resnext29_8x64d", 8, 4, 0.005)])
def test_cifar_specs_train(name, batch, steps, lr):
    torch.manual_seed(0)
    model = resdsl.load(spec(name)).to_torch(seed=0).train()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9, losses


def test_seeded_initialisation_is_reproducible_and_leaves_the_global_rng_alone():
    arch = resdsl.load(spec("resnet20"))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = arch.to_torch(seed=1), arch.to_torch(seed=1)
    assert torch.rand(1).item() == before.item()
    c = arch.to_torch(seed=2)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_initialisation_follows_torchvision():
    model = resdsl.load(spec("resnet50")).to_torch(seed=0)
    w = model.layer3["0"].conv2.weight                    # fan_out = 256 * 3 * 3
    assert abs(w.std().item() - (2 / (256 * 9)) ** 0.5) < 0.05 * (2 / (256 * 9)) ** 0.5
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)
    bound = 1 / 2048 ** 0.5                                 # nn.Linear's default
    assert model.fc.weight.abs().max() <= bound and model.fc.weight.std() > bound / 3


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_zero_init_residual_zeroes_what_torchvision_zeroes(name):
    ours = resdsl.load(spec(name)).to_torch(seed=0, zero_init_residual=True)
    tv = getattr(torchvision.models, name)(zero_init_residual=True)
    zero_tv = {k for k, v in tv.state_dict().items() if k.endswith("weight") and v.ndim == 1
               and torch.all(v == 0)}
    zero_ours = {k for k, v in ours.state_dict().items() if k.endswith("weight") and v.ndim == 1
                 and torch.all(v == 0)}
    assert zero_ours == zero_tv and len(zero_ours) > 0


@pytest.mark.slow
def test_torch_compile_fullgraph_has_no_graph_breaks():
    arch = resdsl.load(spec("resnet20"))
    model = arch.to_torch(seed=0).eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)
    dense = resdsl.load(spec("densenet_bc_100_12")).to_torch(seed=0, memory_efficient=True)
    compiled = torch.compile(dense, fullgraph=True, backend="aot_eager")
    out = compiled(torch.randn(2, 3, 32, 32))
    out.sum().backward()


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager():
    model = resdsl.load(spec("resnet20")).to_torch(seed=0).eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-4)


@pytest.mark.slow
def test_torch_export():
    model = resdsl.load(spec("resnet20")).to_torch(seed=0).eval()
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x), atol=1e-5)


def test_channels_last():
    model = resdsl.load(spec("resnext50_32x4d"), params={"size": 64}).to_torch(seed=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-4)


@pytest.mark.slow
def test_distributed_data_parallel(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    try:
        model = resdsl.load(spec("resnet20")).to_torch(seed=0)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss = ddp(torch.randn(4, 3, 32, 32)).square().mean()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
    finally:
        dist.destroy_process_group()


def _saved_bytes(model, x):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return out, total


@pytest.mark.slow
def test_densenet_memory_efficient_mode_matches_and_saves_memory():
    arch = resdsl.load(spec("densenet121"), params={"size": 64})
    plain = arch.to_torch(seed=0).train()
    efficient = arch.to_torch(seed=0, memory_efficient=True).train()
    x = torch.randn(2, 3, 64, 64)
    y1, saved_plain = _saved_bytes(plain, x)
    y2, saved_efficient = _saved_bytes(efficient, x)
    assert torch.allclose(y1, y2, atol=1e-5)
    assert saved_efficient < 0.7 * saved_plain
    y1.sum().backward()
    y2.sum().backward()
    for (k, p), q in zip(plain.named_parameters(), efficient.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), k
    # and it equals torchvision's own memory-efficient DenseNet
    tv = torchvision.models.densenet121(memory_efficient=True)
    efficient.load_state_dict(tv.state_dict())
    efficient.eval(), tv.eval()
    with torch.no_grad():
        assert (efficient(x) - tv(x)).abs().max() <= 1e-5


def _imports(path):
    tree = ast.parse(open(path).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0])
    return names


def _oracle(name: str) -> torch.nn.Module:
    """An independent model of the same network (torchvision's, or a hand-written one for
    the CIFAR networks), with random batch-norm statistics so that eval mode is not the
    identity."""
    model = REFERENCES[name]() if name in REFERENCES else \
        getattr(torchvision.models, name)(weights=None)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.1, generator=gen)
                m.running_mean.normal_(0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return model.eval()


@pytest.mark.parametrize("name", ["resnet20", *[pytest.param(n, marks=pytest.mark.slow) for n in
                                               ("resnet50", "densenet121", "preact_resnet164")]])
def test_standalone_source(tmp_path, name, capsys):
    """The written file imports only torch and computes what an independent model of the
    same network computes on the same weights."""
    out = tmp_path / f"{name}.py"
    assert main(["compile", spec(name), "--target", "torch", "-o", str(out)]) == 0
    assert _imports(out) == {"torch"}
    module_spec = importlib.util.spec_from_file_location(f"gen_{name}", out)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    cls = [v for k, v in vars(module).items() if isinstance(v, type)
           and issubclass(v, torch.nn.Module) and not k.startswith("_")][0]
    standalone = cls().eval()
    oracle = _oracle(name)
    standalone.load_state_dict(oracle.state_dict(), strict=True)
    size = 32 if name in REFERENCES else 64
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = oracle(x)
        torch.testing.assert_close(standalone(x), want, rtol=1e-4, atol=1e-4 * want.abs().max())


@pytest.mark.parametrize("c_in,c,s,before", [(4, 8, 2, 2), (4, 7, 1, 1), (3, 3, 2, 0)])
def test_zeropad_is_option_a(c_in, c, s, before):
    """Hand-worked: every s-th pixel, (c - c_in) // 2 zero channels before, the rest after."""
    arch = resdsl.loads(f"model m() {{\n    input [{c_in}, 5, 5]\n    zeropad({c}, s={s})\n}}\n")
    x = torch.randn(2, c_in, 5, 5)
    size = len(range(0, 5, s))
    want = torch.zeros(2, c, size, size)
    want[:, before:before + c_in] = x[:, :, ::s, ::s]
    assert torch.equal(arch.to_torch()(x), want)


def test_compile_does_not_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "m.py"
    out.write_text("mine")
    assert main(["compile", spec("resnet20"), "--target", "torch", "-o", str(out)]) == 1
    assert out.read_text() == "mine"
    assert "exists" in capsys.readouterr().err
    assert main(["compile", spec("resnet20"), "--target", "torch", "-o", str(out),
                 "--force"]) == 0
    assert "class ResNet(nn.Module)" in out.read_text()   # torchvision's family name


def test_weights_report_names_missing_unexpected_and_misshaped(tmp_path, capsys):
    sd = resdsl.load(spec("resnet18")).to_torch(seed=0).state_dict()
    del sd["layer1.0.bn1.running_mean"]
    sd["layer9.conv.weight"] = torch.zeros(3)
    sd["fc.weight"] = torch.zeros(10, 512)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    assert main(["inspect", spec("resnet18"), "--weights", str(path)]) == 1
    err = capsys.readouterr().err
    assert "missing: layer1.0.bn1.running_mean [64]" in err
    assert "unexpected: layer9.conv.weight [3]" in err
    assert "wrong shape: fc.weight is [10, 512], the spec needs [1000, 512]" in err


def test_weights_from_safetensors_and_torchvision(tmp_path, capsys):
    from safetensors.torch import save_file
    tv = torchvision.models.resnet18()
    path = tmp_path / "tv.safetensors"
    save_file({k: v.contiguous() for k, v in tv.state_dict().items()}, str(path))
    assert main(["inspect", spec("resnet18"), "--weights", str(path), "--depth", "1"]) == 0
    out = tmp_path / "r18.py"
    assert main(["compile", spec("resnet18"), "--target", "torch", "-o", str(out),
                 "--weights", str(path)]) == 0
    assert os.path.exists(tmp_path / "r18.safetensors")
    from resdsl.weights import load_weights
    model = resdsl.load(spec("resnet18")).to_torch(weights=load_weights(path)).eval()
    tv.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), tv(x))


def test_to_torch_rejects_mismatched_weights():
    arch = resdsl.load(spec("resnet18"))
    with pytest.raises(resdsl.ResdslError, match="missing: fc.bias"):
        arch.to_torch(weights={k: v for k, v in torchvision.models.resnet18().state_dict()
                               .items() if k != "fc.bias"})
