"""resdsl import / resdsl.from_torch: the oracle is the torchvision module itself (its
state_dict loads strictly into the imported spec, and the outputs agree)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import resdsl
from resdsl.cli import main
from resdsl.errors import ResdslError

SPECS = Path(__file__).resolve().parent.parent / "specs"
SLOW = pytest.mark.slow

# model, the combinator its runs must become, marks
MODELS = [
    pytest.param(("resnet18", "stage"), id="resnet18"),
    pytest.param(("resnet34", "stage"), id="resnet34", marks=SLOW),
    pytest.param(("resnet50", "stage"), id="resnet50", marks=SLOW),
    pytest.param(("resnet101", "stage"), id="resnet101", marks=SLOW),
    pytest.param(("resnet152", "stage"), id="resnet152", marks=SLOW),
    pytest.param(("resnext50_32x4d", "stage"), id="resnext50_32x4d", marks=SLOW),
    pytest.param(("resnext101_32x8d", "stage"), id="resnext101_32x8d", marks=SLOW),
    pytest.param(("wide_resnet50_2", "stage"), id="wide_resnet50_2", marks=SLOW),
    pytest.param(("densenet121", "dense"), id="densenet121", marks=SLOW),
    pytest.param(("densenet169", "dense"), id="densenet169", marks=SLOW),
    pytest.param(("densenet201", "dense"), id="densenet201", marks=SLOW),
]


def _randomise_bn(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.fixture(scope="module", params=MODELS)
def imported(request):
    name, combinator = request.param
    torch.manual_seed(0)
    module = torchvision.models.get_model(name, weights=None)
    with torch.no_grad():
        _randomise_bn(module, 1)
    module.eval()
    text = resdsl.from_torch(module, torch.randn(1, 3, 64, 64), name)
    return name, combinator, module, text


def test_spec_reproduces_module(imported):
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
    _, combinator, _, text = imported
    assert "block " in text and f"{combinator}(" in text
    # not flat: every parametric layer lives in a block or the stem/head
    assert text.count("conv(") < 10


def test_resnet50_no_longer_than_twice_hand_written():
    module = torchvision.models.resnet50()
    text = resdsl.from_torch(module, torch.randn(1, 3, 64, 64), "resnet50")
    hand = len((SPECS / "resnet50.arch").read_text().splitlines()) + \
        len((SPECS / "lib" / "resnet.arch").read_text().splitlines())
    assert len(text.splitlines()) <= 2 * hand
    assert "stage(bottleneck(128), n=4, first={stride: 2})" in text
    assert "shortcut(downsample: (conv(planes * 4, k=1, s=stride) -> bn))" in text


# ---- what the language cannot say ------------------------------------------------------

class Unit(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.act = act

    def forward(self, x):
        return self.act(self.conv(x)) + x


class Exp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return torch.exp(self.conv(x))


class Net(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(Unit(nn.ReLU()), Unit(act))

    def forward(self, x):
        return self.layer1(self.stem(x))


@pytest.mark.parametrize("act, qualname, what", [
    (nn.ELU(), "`layer1.1.act`", "ELU"),
    (Exp(), "`layer1.1.act`", "exp"),
])
def test_unsupported_module_names_itself(act, qualname, what):
    with pytest.raises(ResdslError) as info:
        resdsl.from_torch(Net(act), torch.randn(1, 3, 16, 16))
    assert qualname in info.value.message and what in info.value.message


def test_supported_toy_net_imports():
    net = Net(nn.ReLU()).eval()
    text = resdsl.from_torch(net, torch.randn(1, 3, 16, 16), "toy")
    assert "layer1: stage(unit, n=2)" in text
    mine = resdsl.loads(text).to_torch().eval()
    mine.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(mine(x), net(x))


def test_untrusted_names_are_refused():
    bad_class = type("Bad}Name", (Unit,), {})
    net = Net(nn.ReLU())
    net.layer1[1] = bad_class(nn.ReLU())
    with pytest.raises(ResdslError, match="not a valid block name"):
        resdsl.from_torch(net, torch.randn(1, 3, 16, 16))
    net = nn.Sequential()
    net.add_module("x}\n  evil", nn.Conv2d(3, 4, 1))
    with pytest.raises(ResdslError) as info:
        resdsl.from_torch(net, torch.randn(1, 3, 8, 8))
    assert "\n  evil" not in info.value.message
    with pytest.raises(ResdslError, match="not a valid model name"):
        resdsl.from_torch(Net(nn.ReLU()), torch.randn(1, 3, 8, 8), "a b")


# ---- the command -----------------------------------------------------------------------

def test_cli_import_writes_without_replacing(tmp_path, capsys):
    out = tmp_path / "resnet18.arch"
    assert main(["import", "torchvision:resnet18", "--size", "64", "-o", str(out)]) == 0
    text = out.read_text()
    assert resdsl.load(out).name == "resnet18"
    assert main(["import", "torchvision:resnet18", "--size", "64", "-o", str(out)]) == 1
    assert "exists; not overwriting" in capsys.readouterr().err
    assert out.read_text() == text
    assert main(["import", "torchvision:resnet18", "--size", "64", "-o", str(out),
                 "--force"]) == 0
    capsys.readouterr()
    assert main(["import", "nope:resnet18"]) == 1
    assert "torchvision:NAME or timm:NAME" in capsys.readouterr().err
    assert main(["import", "torchvision:resnet18", "--size", "64"]) == 0
    assert capsys.readouterr().out == text
