"""The constructs timm's ResNet variants need: each new op computes what torch's own
function does, labels can be numbers and dotted paths, `*` gates, `stage(each=...)`
schedules, and bad uses are resdsl errors at the spot."""

import pytest
import torch
import torch.nn.functional as F

import resdsl
from resdsl.errors import ResdslError


def _model(body: str, shape: str = "[8, 6, 6]", **kw):
    arch = resdsl.loads(f"model m() {{\n    input {shape}\n    {body}\n}}\n", "t.arch", **kw)
    return arch, arch.to_torch(seed=0)


@pytest.mark.parametrize("op,fn", [
    ("sigmoid", torch.sigmoid), ("silu", F.silu), ("gelu", F.gelu),
    ("hardsigmoid", F.hardsigmoid), ("tanh", torch.tanh),
    ("leaky_relu(0.2)", lambda x: F.leaky_relu(x, 0.2)), ("identity", lambda x: x),
])
def test_activations_equal_torch(op, fn):
    _, m = _model(f"conv(8, k=1) -> {op}")
    m.eval()
    x = torch.randn(2, 8, 6, 6) * 4
    with torch.no_grad():
        assert torch.allclose(m(x), fn(m.conv(x)), atol=1e-6)


def test_in_place_activations_keep_gradients_right():
    arch, m = _model("conv(8, k=1) -> silu -> conv_1: conv(8, k=1) -> hardsigmoid "
                     "-> leaky_relu")
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    m(x).sum().backward()
    ref = resdsl.loads("model m() {\n    input [8, 6, 6]\n    conv(8, k=1) -> silu -> "
                       "conv_1: conv(8, k=1) -> hardsigmoid -> leaky_relu\n}\n")
    m2 = ref.to_torch(seed=0)
    y = x.detach().clone().requires_grad_(True)
    out = F.leaky_relu(F.hardsigmoid(m2.conv_1(F.silu(m2.conv(y)))))
    out.sum().backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-6)


def test_gate_multiplies_a_map_by_a_pooled_vector():
    arch, m = _model("x = conv(8, k=1)\n    g = x -> global_avgpool -> sigmoid\n"
                     "    return x * g")
    assert arch.output_shape == (8, 6, 6)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        y = m.conv(x)
        assert torch.allclose(m(x), y * torch.sigmoid(y.mean((2, 3), keepdim=True)),
                              atol=1e-6)


def test_group_norm_equals_torch():
    arch, m = _model("gn: gn(4, eps=1e-3)")
    assert arch.parameters() == {"gn.weight": (8,), "gn.bias": (8,)}
    assert isinstance(m.gn, torch.nn.GroupNorm) and m.gn.num_groups == 4 and m.gn.eps == 1e-3


def test_channel_conv_is_a_1d_conv_along_channels():
    arch, m = _model("global_avgpool -> eca: channel_conv(k=5)", "[16, 4, 4]")
    assert arch.parameters() == {"eca.weight": (1, 1, 5)}
    assert arch.output_shape == (16, 1, 1)
    x = torch.randn(3, 16, 4, 4)
    with torch.no_grad():
        v = x.mean((2, 3)).view(3, 1, 16)
        want = F.conv1d(v, m.eca.weight, padding=2).view(3, 16, 1, 1)
        assert torch.allclose(m(x), want, atol=1e-6)
    arch, _ = _model("global_avgpool -> channel_conv(k=3, p=0)", "[16, 4, 4]")
    assert arch.output_shape == (14, 1, 1)


def test_slice_takes_channels():
    _, m = _model("a = slice(in, 2, 5)\n    return a", "[8, 3, 3]")
    x = torch.randn(2, 8, 3, 3)
    assert torch.equal(m(x), x[:, 2:5])


def test_avgpool_without_padding_in_the_average():
    _, m = _model("avgpool(k=3, s=2, p=1, count_include_pad=false)", "[2, 5, 5]")
    x = torch.randn(1, 2, 5, 5)
    assert torch.allclose(m(x), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))
    assert not torch.allclose(m(x), F.avg_pool2d(x, 3, 2, 1))


def test_branch_softmax_is_timms_radix_softmax():
    _, m = _model("branch_softmax(2, card=3)", "[24, 1, 1]")
    x = torch.randn(4, 24, 1, 1)
    want = x.view(4, 3, 2, -1).transpose(1, 2).softmax(1).reshape(4, -1, 1, 1)
    assert torch.allclose(m(x), want)
    # the n branches' weights sum to one for every channel
    y = m(x).view(4, 2, 12)
    assert torch.allclose(y.sum(1), torch.ones(4, 12))


def test_drop_path_drops_whole_samples_in_training_only():
    _, m = _model("drop_path(0.5)", "[4, 3, 3]")
    x = torch.ones(400, 4, 3, 3)
    m.train()
    torch.manual_seed(0)
    y = m(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert all(len(set(row.tolist())) == 1 for row in per_sample)    # whole samples
    dropped = float((per_sample[:, 0] == 0).float().mean())
    assert 0.4 < dropped < 0.6
    m.eval()
    assert torch.equal(m(x), x)
    _, m0 = _model("drop_path(0)", "[4, 3, 3]")
    assert "_drop_path(" not in resdsl.loads(
        "model m() {\n    input [4, 3, 3]\n    drop_path(0)\n}\n").torch_source().split(
        "def forward_features")[1]


def test_labels_may_be_numbers_and_quoted_dotted_paths():
    arch, m = _model('0: conv(8, k=1) -> 1: bn -> "convs.0": conv(8, k=1) -> '
                     '"bns.0": bn -> "convs.1": conv(8, k=1)')
    keys = list(m.state_dict())
    assert keys[0] == "0.weight" and "convs.0.weight" in keys and "convs.1.weight" in keys
    assert "bns.0.running_mean" in keys


@pytest.mark.parametrize("label", ['"a..b"', '"a.b-c"', "1.", '""', '"a b"', '"x."'])
def test_a_bad_label_is_an_error_at_it(label):
    with pytest.raises(ResdslError, match="is not a label") as err:
        _model(f"{label}: conv(8, k=1)")
    assert "t.arch:3:5" in str(err.value)


def test_stage_each_schedules_a_rate_per_repetition():
    arch = resdsl.loads("""
block b(drop = 0.0) {
    main = conv1: conv(8, k=3, p=1) -> bn1: bn -> drop_path(drop)
    return relu(main + in)
}
model m(rate = 0.3) {
    input [8, 4, 4]
    layer1: stage(b, n=2, each={drop: rate * i / 3})
        -> layer2: stage(b, n=2, first={drop: 0.25}, each={drop: rate * (2 + i) / 3})
}
""")
    rates = {n: d["attrs"].p for n, d in arch.graph.nodes(data=True) if d["op"] == "drop_path"}
    assert rates == pytest.approx({"layer1.0.drop_path": 0.0, "layer1.1.drop_path": 0.1,
                                   "layer2.0.drop_path": 0.2, "layer2.1.drop_path": 0.3})


@pytest.mark.parametrize("body,message", [
    ("x = conv(8, k=1)\n    g = x -> global_avgpool -> conv_1: conv(4, k=1)\n"
     "    return x * g", r"mul of tensors with shapes \[8, 6, 6\] and \[4, 1, 1\]"),
    ("a = slice(in, 4, 9)\n    return a", r"slice\(4, 9\) of 8 channels"),
    ("gn(3)", r"gn with groups=3: channels 8 are not divisible by 3"),
    ("channel_conv(k=3)", r"channel_conv works on a pooled vector"),
    ("global_avgpool -> branch_softmax(3)", r"8 channels are not divisible by n \* card = 3"),
    ("global_avgpool -> branch_softmax(1)", r"needs at least 2 branches"),
    ("drop_path(1.0)", r"drop_path p=1.0 must be at least 0 and below 1"),
    ("x = conv(8, k=1)\n    return x * 2", r"`\*` of a tensor"),
    ("layer1: stage(relu, n=2, each=3)", r"`each` must be written"),
    ("layer1: stage(relu, n=2, each={p: log2(0)})", r"wrong arguments to `log2`"),
])
def test_bad_uses_are_resdsl_errors(body, message):
    with pytest.raises(ResdslError, match=message):
        _model(body)


def test_fmt_keeps_the_new_label_forms():
    from resdsl.fmt import format_text
    text = ('model m() {\n    input [8, 6, 6]\n    0: conv(8, k=1) -> "convs.0": bn -> '
            'x: identity\n}\n')
    out = format_text(text)
    assert '0: conv(8, k=1) -> "convs.0": bn -> x: identity' in out
    assert format_text(out) == out


def test_a_labelled_conditional_names_the_chosen_layer():
    for g, op in ((True, "gn"), (False, "bn")):
        arch = resdsl.loads("model m(g = true) {\n    input [8, 4, 4]\n    conv1: conv(8, k=1) "
                            "-> bn1: (if g then gn(4) else bn)\n    -> ds: (if g then "
                            "(avgpool(k=2) -> conv(8, k=1)) else identity)\n}\n",
                            params={"g": g})
        assert arch.graph.nodes["bn1"]["op"] == op
        assert [n for n in arch.graph if n.startswith("ds")] == (["ds.0", "ds.1"] if g
                                                                  else ["ds"])


def test_a_string_parameter_stays_a_string_where_a_block_has_that_name():
    """`attn="se"` selects SE in timm_resnet, although lib/attention.arch has a block `se`;
    a parameter without a string default still takes a block by name (`unit`)."""
    params = {"unit": "bottleneck", "layers": [3, 4, 6, 3], "attn": "se"}
    arch = resdsl.load("specs/lib/timm_resnet.arch", model="timm_resnet", params=params)
    assert arch.num_params() == 28_088_024          # timm's seresnet50
    from resdsl.cli import main
    assert main(["check", "specs/lib/timm_resnet.arch", "--model", "timm_resnet",
                 "-D", "unit=bottleneck", "-D", "layers=[3,4,6,3]", "-D", 'attn="eca"']) == 0
