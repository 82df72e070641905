"""timm's ResNet family as zoo specs (specs/lib/timm_resnet.arch, specs/lib/attention.arch),
each checked against timm's model of the same name: parameter count (the issue's numbers
and timm's own count), timm's state_dict loading with strict=True under the same key order,
equal eval outputs, equal gradients of one training-mode backward, and timm's per-block
stochastic-depth schedule.

Oracle: timm 1.0.31 (models built offline with random weights), never resdsl itself.
"""

from __future__ import annotations

import pytest
import timm
import torch

import resdsl
from resdsl.cli import main

# timm 1.0.31's parameter counts (issue 10).
PARAMS = {
    "resnet18d": 11_708_744,
    "resnet26d": 16_014_408,
    "resnet50d": 25_576_264,
    "seresnet50": 28_088_024,
    "seresnext50_32x4d": 27_559_896,
    "ecaresnet50d": 25_576_350,
    "resnetrs50": 35_691_912,
    "resnet50_gn": 25_557_032,
}
NAMES = list(PARAMS)
# The input side for the numerical checks: 72 makes the shortcut's 2x2 average pools
# (ceil_mode) meet odd sides (18 -> 9 -> 5 -> 3), where ceil_mode matters.
SIZE = 72


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a small shared machine, OpenMP threads that wait for each
    other make these batch-2 passes tens of times slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec(name: str) -> str:
    return f"specs/{name}.arch"


def timm_model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs)


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random norm affine parameters and BN running statistics: timm zero-initialises the
    last norm of every residual branch, which would hide a wrong branch entirely."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                c = m.weight.shape[0]
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the spec's module with timm's weights, timm's randomized model)."""
    ref = randomized(timm_model(name))
    model = resdsl.load(spec(name), params={"size": SIZE}).to_torch(seed=0)
    model.load_state_dict(ref.state_dict(), strict=True)
    return model, ref


def batch(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_equals_timm(name):
    arch = resdsl.load(spec(name))
    ref = timm_model(name)
    assert arch.num_params() == PARAMS[name]
    assert sum(p.numel() for p in ref.parameters()) == PARAMS[name]
    assert sum(p.numel() for p in arch.to_torch(seed=0).parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", ["resnet18d", "resnet50_gn"])
def test_num_classes_and_in_chans_as_timm(name):
    ref = timm_model(name, num_classes=10, in_chans=1)
    model = resdsl.create_model(name, num_classes=10, in_chans=1, size=SIZE, weights=ref.state_dict())
    assert list(model.state_dict()) == list(ref.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_timm_state_dict_loads_strictly_with_timm_key_order(name):
    ref = timm_model(name)
    model = resdsl.load(spec(name), params={"size": SIZE}).to_torch(seed=0)
    result = model.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert list(model.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert model.state_dict()[key].shape == value.shape, key


@pytest.mark.parametrize("name", NAMES)
def test_eval_outputs_agree(name):
    model, ref = pair(name)
    model.eval()
    ref.eval()
    x = batch()
    with torch.no_grad():
        out, expected = model(x), ref(x)
    assert out.shape == expected.shape == (2, 1000)
    assert (out - expected).abs().max().item() <= 1e-5
    assert expected.std() > 1e-3    # the check is not vacuous


@pytest.mark.parametrize("name", NAMES)
def test_train_mode_gradients_agree(name):
    model, ref = pair(name)
    model.train()
    ref.train()
    x = batch(2)
    w = torch.randn(2, 1000, generator=torch.Generator().manual_seed(3))
    (model(x) * w).sum().backward()
    (ref(x) * w).sum().backward()
    ref_params = dict(ref.named_parameters())
    assert sum(p.grad.abs().sum().item() for p in ref_params.values()) > 0
    assert [n for n, _ in model.named_parameters()] == list(ref_params)
    for n, p in model.named_parameters():
        g, expected = p.grad, ref_params[n].grad
        assert g is not None and expected is not None, n
        scale = expected.abs().max().item()
        assert (g - expected).abs().max().item() <= 1e-4 * max(scale, 1e-6), n
    # the training-mode pass updated the same batch-norm statistics
    ref_buffers = dict(ref.named_buffers())
    for n, b in model.named_buffers():
        torch.testing.assert_close(b, ref_buffers[n], rtol=1e-5, atol=1e-6, msg=n)


def _drop_probs(graph) -> dict[str, float]:
    """Block name -> the probability of its drop_path node, from the IR."""
    return {key.rsplit(".", 1)[0]: data["attrs"].p for key, data in graph.nodes(data=True)
            if data["op"] == "drop_path"}


@pytest.mark.parametrize("name", NAMES)
def test_drop_path_schedule_equals_timm(name):
    ref = timm_model(name, drop_path_rate=0.1)
    blocks = {n: m for n, m in ref.named_modules() if isinstance(m, (
        timm.models.resnet.BasicBlock, timm.models.resnet.Bottleneck))}
    expected = {n: b.drop_path.drop_prob for n, b in blocks.items() if b.drop_path is not None}
    probs = _drop_probs(resdsl.load(spec(name), params={"drop_path_rate": 0.1}).graph)
    # timm leaves the first block without DropPath (its rate is 0), as the spec does
    assert probs == expected
    assert len(expected) == len(blocks) - 1
    total = len(blocks)
    for k, n in enumerate(blocks):
        assert probs.get(n, 0.0) == pytest.approx(0.1 * k / (total - 1), abs=0, rel=1e-12)
    # at the default rate 0, no block has a drop_path, in timm or in the spec
    assert _drop_probs(resdsl.load(spec(name)).graph) == {}
    assert all(b.drop_path is None for b in timm_model(name).modules()
               if isinstance(b, (timm.models.resnet.BasicBlock, timm.models.resnet.Bottleneck)))


@pytest.mark.parametrize("name", ["resnet50d", "seresnext50_32x4d"])
def test_drop_path_rate_leaves_eval_outputs_alone(name):
    """drop_path is the identity in eval mode: at rate 0.1 the outputs still agree."""
    ref = randomized(timm_model(name, drop_path_rate=0.1)).eval()
    model = resdsl.load(spec(name), params={"size": SIZE, "drop_path_rate": 0.1}).to_torch(seed=0)
    model.load_state_dict(ref.state_dict(), strict=True)
    model.eval()
    x = batch()
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max().item() <= 1e-5


def test_zoo_lists_the_family(capsys):
    assert set(NAMES) <= set(resdsl.list_models())
    assert main(["models", "resnet*d"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet18d", "resnet26d", "resnet50d"):
        assert name in out and f"{PARAMS[name]:,}" in out
    for name in NAMES:
        first = open(spec(name), encoding="utf-8").readline()
        assert first.startswith("# ") and f'timm.create_model("{name}")' in first


def test_specs_are_formatted(capsys):
    paths = ["specs/lib/timm_resnet.arch", "specs/lib/attention.arch"] + [spec(n) for n in NAMES]
    assert main(["fmt", "--check", *paths]) == 0


@pytest.mark.parametrize("name", ["resnet18d", "seresnet50"])
def test_drop_path_in_training_draws_as_timm_does(name):
    """In train mode at a nonzero rate, the spec's drop_path draws its per-sample masks from
    the same generator in the same order as timm's DropPath: seeded alike, the outputs and
    gradients agree, and another seed gives other outputs (other samples were dropped)."""
    ref = randomized(timm_model(name, drop_path_rate=0.5)).train()
    model = resdsl.load(spec(name), params={"size": SIZE, "drop_path_rate": 0.5}).to_torch(seed=0)
    model.load_state_dict(ref.state_dict(), strict=True)
    model.train()
    x = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(5)
    out = model(x)
    torch.manual_seed(5)
    expected = ref(x)
    assert (out - expected).abs().max().item() <= 1e-5 * max(expected.abs().max().item(), 1.0)
    out.sum().backward()
    expected.sum().backward()
    ref_params = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        scale = ref_params[n].grad.abs().max().item()
        assert (p.grad - ref_params[n].grad).abs().max().item() <= 1e-4 * max(scale, 1e-6), n
    torch.manual_seed(6)
    assert (model(x) - out).abs().max().item() > 1e-3   # another draw drops other samples
