"""Every reference spec agrees with its oracle: torchvision for the ImageNet models,
the papers' tables for the CIFAR models."""

import pytest
import torch
import torchvision

import resdsl
from tests.conftest import spec

TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
               "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2",
               "densenet121", "densenet169", "densenet201"]


def torchvision_model(name: str, device: str = "cpu") -> torch.nn.Module:
    with torch.device(device):
        return getattr(torchvision.models, name)(weights=None)


def hook_macs(model: torch.nn.Module, size: int = 224) -> int:
    """Multiply-accumulates of conv and linear layers, counted by forward hooks."""
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        per_out = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        total += out[0].numel() * per_out

    def linear_hook(m, inp, out):
        nonlocal total
        total += m.in_features * m.out_features

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, torch.nn.Linear):
            m.register_forward_hook(linear_hook)
    with torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    return total


@pytest.mark.parametrize("name", TORCHVISION)
def test_params_macs_and_keys_match_torchvision(name):
    arch = resdsl.load(spec(name))
    tv = torchvision_model(name, "meta")
    assert arch.num_params() == sum(p.numel() for p in tv.parameters())
    assert arch.macs() == hook_macs(tv)
    expected = {k: tuple(v.shape) for k, v in tv.state_dict().items()
                if not k.endswith("num_batches_tracked")}
    assert {**arch.parameters(), **arch.buffers()} == expected


def test_resnext50_is_resnext50_32x4d():
    a, b = resdsl.load(spec("resnext50")), resdsl.load(spec("resnext50_32x4d"))
    assert a.parameters() == b.parameters() and a.macs() == b.macs()
    assert a.spec_hash() == b.spec_hash()


@pytest.mark.parametrize("form", ["a", "b", "c"])
def test_resnext_forms_have_torchvision_params_and_macs(form):
    arch = resdsl.load(f"specs/resnext_forms/resnext50_32x4d_{form}.arch")
    tv = torchvision_model("resnext50_32x4d", "meta")
    assert arch.num_params() == sum(p.numel() for p in tv.parameters())
    assert arch.macs() == hook_macs(tv)


# The papers' tables: (spec, parameters in millions as printed, tolerance).
# Where a paper's count leaves out batch-norm parameters the tolerance is 1.5%;
# otherwise it is the rounding of the printed figure.
PAPERS = [
    ("resnet20", 0.27, 0.005), ("resnet32", 0.46, 0.005), ("resnet44", 0.66, 0.005),
    ("resnet56", 0.85, 0.005), ("resnet110", 1.7, 0.05), ("resnet1202", 19.4, 0.05),
    ("preact_resnet164", 1.7, 0.05), ("preact_resnet1001", 10.2, 0.015 * 10.2),
    ("resnext29_8x64d", 34.4, 0.05), ("densenet_bc_100_12", 0.8, 0.05),
]


@pytest.mark.parametrize("name,millions,tol", PAPERS)
def test_cifar_params_match_papers(name, millions, tol):
    arch = resdsl.load(spec(name))
    assert arch.input_shape == (3, 32, 32) and arch.output_shape == (10,)
    assert abs(arch.num_params() / 1e6 - millions) <= tol


@pytest.mark.parametrize("name,depth", [("resnet20", 20), ("resnet56", 56),
                                        ("resnet1202", 1202), ("preact_resnet164", 164),
                                        ("densenet_bc_100_12", 100)])
def test_cifar_depth_counts_weighted_layers(name, depth):
    """The depth in a CIFAR model's name counts its convolutions and linear layers on the
    main path (projection shortcuts excluded)."""
    g = resdsl.load(spec(name)).graph
    weighted = [n for n, d in g.nodes(data=True) if d["op"] in ("conv", "linear")
                and "downsample" not in n]
    assert len(weighted) == depth


def test_cifar_option_a_shortcuts_add_no_parameters():
    g = resdsl.load(spec("resnet20")).graph
    pads = [n for n, d in g.nodes(data=True) if d["op"] == "zeropad"]
    assert pads == ["layer2.0.zeropad", "layer3.0.zeropad"]
    assert not any("downsample" in n for n in g)
