"""resdsl import of timm's ResNet variants (ResNet-D, SE, GroupNorm, ECA) and the ops they
need (sigmoid, gelu, `*`, gn, channel_conv, ...): the oracle is the timm module itself
(its state_dict loads strictly into the imported spec, and the outputs agree)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resdsl
from resdsl.errors import ResdslError

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise_norms(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            n = m.weight.shape[0]
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


# model, text its spec must contain
MODELS = [
    ("resnet50d", "(if stride == 1 then identity else avgpool(k=2, s=stride, "
                  "ceil_mode=true, count_include_pad=false))"),
    ("seresnet50", "return in * x1"),
    ("resnet50_gn", "bn1: gn(32)"),
    ("ecaresnet50d", "channel_conv(k=conv_k, p=conv_p)"),
]


@pytest.fixture(scope="module", params=MODELS, ids=[m for m, _ in MODELS])
def imported(request):
    name, needle = request.param
    torch.manual_seed(0)
    module = timm.create_model(name, pretrained=False)
    with torch.no_grad():
        _randomise_norms(module, 1)
    module.eval()
    text = resdsl.from_torch(module, torch.randn(1, 3, 64, 64), name)
    return name, needle, module, text


def test_spec_checks_loads_strictly_and_agrees(imported):
    name, _, module, text = imported
    arch = resdsl.loads(text, f"{name}.arch", params={"size": 64})
    assert arch.name == name
    net = arch.to_torch()
    net.load_state_dict(module.state_dict(), strict=True)
    net.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = module(x), net(x)
    assert got.shape == want.shape == (2, 1000)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_spec_is_structured(imported):
    _, needle, _, text = imported
    assert needle in text
    assert "block bottleneck(planes, stride = 1" in text
    assert "layer2: stage(bottleneck(128" in text and "first={stride: 2}" in text
    assert text.count("conv(") < 12


# ---- what still stops the import names itself ------------------------------------------

@pytest.mark.parametrize("name, qualname, what", [
    ("res2net50_26w_4s", "`layer1.0`", "it calls split"),
    ("skresnet18", "`layer1.0.conv1`", "it calls split"),
    ("resnest14d", "`layer1.0.conv2`", "x.shape) for floordiv"),
])
def test_unsupported_timm_model_names_what_stops_it(name, qualname, what):
    module = timm.create_model(name, pretrained=False)
    with pytest.raises(ResdslError) as info:
        resdsl.from_torch(module, torch.randn(1, 3, 64, 64), name)
    assert f"cannot import {qualname}: " in info.value.message
    assert what in info.value.message


# ---- the new ops on a toy net ----------------------------------------------------------

class Unit(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8, eps=1e-6)
        self.act = act

    def forward(self, x):
        y = self.act(self.gn(self.conv(x)))
        gate = torch.sigmoid(y.mean((2, 3), keepdim=True))
        return F.leaky_relu(x * gate + F.silu(y), 0.2) * torch.tanh(y)


class Net(nn.Module):
    def __init__(self, act: nn.Module, tail: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.layer1 = nn.Sequential(Unit(act), Unit(act))
        self.tail = tail if tail is not None else nn.Identity()

    def forward(self, x):
        return F.gelu(self.tail(self.layer1(self.stem(x))))


@pytest.mark.parametrize("act, op", [
    (nn.GELU(), "act: gelu"), (nn.SiLU(), "act: silu"), (nn.Hardsigmoid(), "hardsigmoid"),
    (nn.LeakyReLU(0.1), "leaky_relu(slope=0.1)"), (nn.Tanh(), "act: tanh"),
    (nn.Sigmoid(), "act: sigmoid"),
])
def test_activations_gates_and_gn_import(act, op):
    net = Net(act).eval()
    text = resdsl.from_torch(net, torch.randn(1, 3, 16, 16), "toy")
    assert op in text and "gn: gn(4, eps=1e-06)" in text and "layer1: stage(unit, n=2)" in text
    mine = resdsl.loads(text).to_torch().eval()
    mine.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(mine(x), net(x))


class Scale(nn.Module):
    def forward(self, x):
        return 0.5 * x


class SpatialGate(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x.mean(1, keepdim=True))


class SpatialConvGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.conv(x))


@pytest.mark.parametrize("act, tail, qualname, what", [
    (nn.ELU(), None, "`layer1.0.act`", "ELU"),
    (nn.GELU(approximate="tanh"), None, "`layer1.0.act`", "approximate='tanh'"),
    (nn.ReLU(), Scale(), "`tail`", "by a constant"),
    (nn.ReLU(), SpatialGate(), "`tail`", "mean over other dimensions"),
    (nn.ReLU(), SpatialConvGate(), "`tail`", "multiplies tensors of shapes [1, 8, 16, 16] "
                                             "and [1, 1, 16, 16]"),
])
def test_unsupported_still_names_itself(act, tail, qualname, what):
    with pytest.raises(ResdslError) as info:
        resdsl.from_torch(Net(act, tail), torch.randn(1, 3, 16, 16))
    assert f"cannot import {qualname}: " in info.value.message
    assert what in info.value.message


def test_broadcast_other_than_a_channel_gate_is_refused():
    class Half(nn.Module):
        def forward(self, x):
            return x * x[:, :1]
    with pytest.raises(ResdslError) as info:
        resdsl.from_torch(Net(nn.ReLU(), Half()), torch.randn(1, 3, 16, 16))
    assert "cannot import `tail`: it reads shapes or indexes tensors" in info.value.message


def test_class_named_like_an_op_becomes_a_block_name():
    Sigmoid = type("Sigmoid", (Unit,), {})
    net = Net(nn.ReLU())
    net.layer1 = nn.Sequential(Sigmoid(nn.ReLU()), Sigmoid(nn.ReLU()))
    text = resdsl.from_torch(net.eval(), torch.randn(1, 3, 16, 16), "toy")
    assert "block sigmoid_block" in text
