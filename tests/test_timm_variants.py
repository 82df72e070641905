"""Zoo specs of timm's multi-branch ResNet variants, each checked against timm itself.

Res2Net (`res2net50_26w_4s`: hierarchical channel splits), selective kernel (`skresnet18`:
a softmax over two kernel paths) and split attention (`resnest50d`: a softmax over radix
splits). Each spec must have timm's parameter count, load timm's state_dict strictly, give
timm's eval outputs and train-mode gradients, and schedule drop-path as timm does.

Oracle: timm 1.0.31 (`timm.create_model(name, pretrained=False)`, built offline), never
resdsl itself.
"""

from __future__ import annotations

import os

import pytest
import timm
import torch
from timm.layers import DropPath

import resdsl

# Parameter counts of timm 1.0.31 (num_classes=1000), written out so that a change in
# timm shows here as well as in the spec.
PARAMS = {
    "res2net50_26w_4s": 25_699_120,
    "skresnet18": 11_958_056,
    "resnest50d": 27_483_240,
}
MODELS = list(PARAMS)
SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These small batches run fastest on one thread; with several, a loaded machine (the
    2 shared cores this suite is sized for) spends seconds per forward pass waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec(name: str) -> str:
    return os.path.join("specs", f"{name}.arch")


def timm_model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs)


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial batch-norm statistics and affine parameters (timm zero-initialises the
    last BN of some blocks, which would hide a mixed-up residual branch)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def pair(name: str, **params) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(resdsl's model with timm's weights, timm's model), both at SIZE x SIZE inputs."""
    ref = randomized(timm_model(name, **params))
    model = resdsl.load(spec(name), params={"size": SIZE, **params}).to_torch(seed=0)
    model.load_state_dict(ref.state_dict(), strict=True)
    return model, ref


def batch() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_equals_timms(name):
    arch = resdsl.load(spec(name))
    ref = timm_model(name)
    ref_count = sum(p.numel() for p in ref.parameters())
    assert ref_count == PARAMS[name]
    assert arch.num_params() == PARAMS[name]
    model = arch.to_torch(seed=0)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", MODELS)
def test_timm_state_dict_loads_strictly(name):
    ref = timm_model(name)
    model = resdsl.load(spec(name)).to_torch(seed=0)
    result = model.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours == theirs


@pytest.mark.parametrize("name", MODELS)
def test_eval_outputs_agree(name):
    model, ref = pair(name)
    model.eval()
    ref.eval()
    x = batch()
    with torch.no_grad():
        out, ref_out = model(x), ref(x)
    assert out.shape == ref_out.shape == (2, 1000)
    assert (out - ref_out).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_train_mode_backward_gives_timms_gradients(name):
    model, ref = pair(name)
    model.train()
    ref.train()
    x = batch()
    w = torch.randn(2, 1000, generator=torch.Generator().manual_seed(3))
    (model(x) * w).sum().backward()
    (ref(x) * w).sum().backward()
    ours = dict(model.named_parameters())
    bad = []
    for key, p in ref.named_parameters():
        g, ref_g = ours[key].grad, p.grad
        assert g is not None and ref_g is not None, key
        scale = ref_g.abs().max().item()
        if (g - ref_g).abs().max().item() > 1e-4 * scale + 1e-7:
            bad.append((key, (g - ref_g).abs().max().item(), scale))
    assert not bad, bad
    # the batch statistics the forward pass folded into the running buffers agree too
    buffers = dict(model.named_buffers())
    for key, b in ref.named_buffers():
        torch.testing.assert_close(buffers[key], b, rtol=1e-4, atol=1e-5)


def live_drop_path(name: str, block: torch.nn.Module) -> bool:
    """Whether timm's DropPath of this block can change the block's output. ResNeStBottleneck
    applies it to the block input and uses the result only for the downsample shortcut
    (`x = self.drop_path(x); shortcut = self.downsample(x)`), so in a block without a
    downsample it is dead code: the spec, which cannot hold a tensor nothing uses, has no
    drop_path node there."""
    return not (name.startswith("resnest") and block.downsample is None)


@pytest.mark.parametrize("name", MODELS)
def test_drop_path_schedule_equals_timms(name):
    rate = 0.1
    graph = resdsl.load(spec(name), params={"drop_path_rate": rate}).graph
    ours = {d["scope"]: d["attrs"].p for _, d in graph.nodes(data=True)
            if d.get("op") == "drop_path"}
    ref = timm_model(name, drop_path_rate=rate)
    blocks = {n: m for n, m in ref.named_modules() if n.count(".") == 1 and n.startswith("layer")}
    theirs = {}
    for key, block in blocks.items():
        dp = block.drop_path
        assert dp is None or isinstance(dp, DropPath)
        if live_drop_path(name, block):
            theirs[key] = 0.0 if dp is None else dp.drop_prob
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert max(theirs.values()) == pytest.approx(rate if name != "resnest50d" else rate * 13 / 15)
    if name != "resnest50d":
        assert len(theirs) == len(blocks)


@pytest.mark.parametrize("name", MODELS)
def test_train_mode_drop_path_drops_timms_paths(name):
    """With a large rate and the same random seed, the spec's drop paths drop exactly the
    samples timm's do, in the same places: the train-mode outputs are equal. (ResNeSt's
    dead DropPaths, see `live_drop_path`, are taken out of timm's model first: they change
    nothing but still draw random numbers.)"""
    model, ref = pair(name, drop_path_rate=0.5)
    for n, block in ref.named_modules():
        if n.count(".") == 1 and n.startswith("layer") and not live_drop_path(name, block):
            block.drop_path = None
    model.train()
    ref.train()
    x = batch()
    with torch.no_grad():
        torch.manual_seed(5)
        out = model(x)
        torch.manual_seed(5)
        ref_out = ref(x)
        torch.manual_seed(6)
        other = model(x)
    assert not torch.allclose(out, other, atol=1e-3)   # paths were dropped
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
