"""The language, construct by construct: tables of small specs and what they must build."""

import pytest

import resdsl
from resdsl.ir.graph import inputs_of


def build(body: str, header: str = "", **kw):
    return resdsl.loads(f"{header}\nmodel m() {{\n input [16, 8, 8]\n {body}\n}}", **kw)


def ops(arch):
    return [d["op"] for _, d in arch.graph.nodes(data=True)]


@pytest.mark.parametrize("body,shape", [
    ("conv(32, k=3, p=1)", (32, 8, 8)),
    ("conv(32, k=3, s=2, p=1)", (32, 4, 4)),
    ("conv(32, k=3)", (32, 6, 6)),
    ("conv(32, k=3, p=2, d=2)", (32, 8, 8)),
    ("conv(32, k=1, groups=4)", (32, 8, 8)),
    ("maxpool(k=3, s=2, p=1)", (16, 4, 4)),
    ("maxpool(k=2)", (16, 4, 4)),
    ("avgpool(k=3, s=2, ceil_mode=true)", (16, 4, 4)),
    ("global_avgpool -> flatten", (16,)),
    ("flatten -> linear(10)", (10,)),
    ("zeropad(32, s=2)", (32, 4, 4)),
    ("zeropad(16)", (16, 8, 8)),
    ("bn -> relu -> dropout(0.2)", (16, 8, 8)),
])
def test_op_shapes(body, shape):
    assert build(body).output_shape == shape


@pytest.mark.parametrize("expr,value", [
    ("2 + 3 * 4", 14), ("(2 + 3) * 4", 20), ("7 // 2", 3), ("7 % 4", 3), ("2 ** 5", 32),
    ("64 / 64 * 4", 4), ("-3 + 5", 2), ("floor(25 * 0.5)", 12), ("ceil(25 * 0.5)", 13),
    ("max(3, 9, 4)", 9), ("min(3, 9)", 3), ("[4, 8, 16][1]", 8), ("len([1, 2, 3])", 3),
    ("if 3 > 2 then 5 else 6", 5), ("if 2 >= 3 or false then 5 else 6", 6),
    ("if not (1 == 2) and 2 != 3 then 7 else 8", 7), ("in.c * 2", 32), ("in.h + in.w", 16),
])
def test_arithmetic(expr, value):
    arch = build(f"c = {expr}\n conv(c, k=1)")
    assert arch.output_shape[0] == value


def test_block_parameters_defaults_and_arithmetic():
    arch = build("layer: b(64)", header="""
        block b(planes, groups = 32, base_width = 4) {
            width = planes * base_width / 64 * groups
            return conv1: conv(width, k=1) -> conv2: conv(width, k=3, p=1, groups=groups)
        }""")
    assert arch.graph.nodes["layer.conv2"]["shape"] == (128, 8, 8)
    assert arch.graph.nodes["layer.conv2"]["attrs"].groups == 32


def test_shortcut_is_identity_when_shapes_agree_and_projection_otherwise():
    header = """
        block unit(planes, stride = 1) {
            main = conv1: conv(planes, k=3, s=stride, p=1) -> bn1: bn
            skip = shortcut(downsample: (conv(planes, k=1, s=stride) -> bn))
            return relu(main + skip)
        }"""
    arch = build("a: unit(16) -> b: unit(32) -> c: unit(32, stride=2) -> d: unit(32)", header)
    g = arch.graph
    assert "a.downsample.0" not in g and "d.downsample.0" not in g
    assert g.nodes["b.downsample.0"]["attrs"].s == 1      # channels change: projection
    assert g.nodes["c.downsample.0"]["attrs"].s == 2      # stride: projection
    assert g.nodes["c.downsample.1"]["op"] == "bn"
    assert inputs_of(g, "a.add") == ["a.bn1", "input"]   # identity: the block input itself
    assert arch.output_shape == (32, 4, 4)


def test_stride_forces_projection_even_when_the_shape_would_agree():
    header = """
        block unit(stride) {
            main = maxpool(k=1, s=stride) -> conv(16, k=1)
            skip = shortcut(downsample: conv(16, k=1, s=stride))
            return main + skip
        }"""
    # a stride-2 layer keeps a 1x1 map 1x1: same shape, but the projection is strided
    g = resdsl.loads(header + "\nmodel m() { input [16, 1, 1]\n x: unit(2) }").graph
    assert "x.downsample" in g
    g = resdsl.loads(header + "\nmodel m() { input [16, 1, 1]\n x: unit(1) }").graph
    assert "x.downsample" not in g


def test_always_projection_and_zero_pad_shortcuts():
    header = """
        block proj(planes) {
            return relu((conv1: conv(planes, k=3, p=1) -> bn1: bn) + (downsample: (conv(planes, k=1) -> bn)))
        }
        block opt_a(planes, stride = 1) {
            return relu((conv1: conv(planes, k=3, s=stride, p=1) -> bn1: bn) + shortcut(zeropad(planes, s=stride)))
        }"""
    arch = build("a: proj(16) -> b: opt_a(16) -> c: opt_a(32, stride=2)", header)
    g = arch.graph
    assert "a.downsample.0" in g                      # projection even though 16 -> 16
    assert not any(n.startswith("b.zeropad") for n in g)
    pad = g.nodes["c.zeropad"]
    assert pad["attrs"].c == 32 and pad["attrs"].s == 2 and pad["shape"] == (32, 4, 4)


def test_preactivation_projection_reads_the_preactivated_input():
    arch = resdsl.load("specs/preact_resnet164.arch")
    g = arch.graph
    assert inputs_of(g, "layer2.0.downsample") == ["layer2.0.relu"]
    assert inputs_of(g, "layer2.0.bn1") == ["layer1.17.add"]
    assert inputs_of(g, "layer2.1.add") == ["layer2.1.conv3", "layer2.0.add"]  # raw identity
    assert "layer2.1.downsample" not in g


def test_stage_first_overrides_and_name_template():
    header = "block u(c, stride = 1) { return conv(c, k=3, s=stride, p=1) }"
    arch = build("s: stage(u(8), n=3, first={stride: 2}, name=\"unit{i+1}\")", header)
    g = arch.graph
    assert [g.nodes[f"s.unit{i}.conv"]["attrs"].s for i in (1, 2, 3)] == [2, 1, 1]
    assert arch.output_shape == (8, 4, 4)


def test_dense_block_concatenates_all_earlier_outputs():
    header = "block layer(k) { return norm: bn -> relu -> conv: conv(k, k=3, p=1) }"
    arch = build("d: dense(layer(4), n=3, name=\"l{i+1}\")", header)
    g = arch.graph
    assert inputs_of(g, "d.l1.norm") == ["input"]
    assert inputs_of(g, "d.l2.cat") == ["input", "d.l1.conv"]
    assert inputs_of(g, "d.l3.cat") == ["input", "d.l1.conv", "d.l2.conv"]
    assert inputs_of(g, "d.cat") == ["input", "d.l1.conv", "d.l2.conv", "d.l3.conv"]
    assert g.nodes["d.l3.conv"]["attrs"].out == 4
    assert arch.output_shape == (16 + 3 * 4, 8, 8)


@pytest.mark.parametrize("merge,channels", [("sum", 16), ("concat", 4 * 3)])
def test_paths_split_transform_merge(merge, channels):
    header = "block p(d, out) { return a: conv(d, k=1) -> b: conv(out, k=1) }"
    out = 16 if merge == "sum" else 3
    arch = build(f"x: paths(p(4, {out}), n=4, merge=\"{merge}\")", header)
    g = arch.graph
    merged = "x.sum" if merge == "sum" else "x.cat"
    assert inputs_of(g, merged) == [f"x.{i}.b" for i in range(4)]
    assert all(inputs_of(g, f"x.{i}.a") == ["input"] for i in range(4))
    assert arch.output_shape == (channels, 8, 8)


def test_names_sequential_groups_are_numbered_like_nn_sequential():
    arch = build("features: (conv(8, k=1) -> bn -> relu -> last: conv(4, k=1)) -> relu -> relu")
    assert list(arch.graph)[1:] == ["features.0", "features.1", "features.2", "features.last",
                                    "relu", "relu_1"]


def test_blocks_as_parameters_and_model_aliases():
    text = """
        block wide(c) { return conv(c * 2, k=1) }
        block narrow(c) { return conv(c, k=1) }
        model base(unit, c = 8) { input [3, 8, 8]  x: unit(c) }
        model alias(c = 4) = base(wide, c=c)
    """
    arch = resdsl.loads(text, model="alias")
    assert arch.output_shape == (8, 8, 8)
    assert resdsl.loads(text, model="alias", params={"c": 5}).output_shape == (10, 8, 8)


def test_model_parameters_from_the_caller():
    arch = resdsl.load("specs/resnet50.arch", params={"num_classes": 10, "size": 64})
    assert arch.input_shape == (3, 64, 64) and arch.output_shape == (10,)
    with pytest.raises(resdsl.ResdslError, match="no parameter `clases`"):
        resdsl.load("specs/resnet50.arch", params={"clases": 10})


def test_use_shares_blocks_between_specs():
    a = resdsl.load("specs/resnext29_8x64d.arch")
    b = resdsl.load("specs/resnet50.arch")
    assert a.graph.nodes["layer1.0.conv2"]["block"] == b.graph.nodes["layer1.0.conv2"]["block"]


def test_every_node_has_a_span_into_its_defining_file():
    g = resdsl.load("specs/resnet18.arch").graph
    conv = g.nodes["layer1.0.conv1"]
    assert conv["span"].path.endswith("lib/resnet.arch")
    line = conv["span"].source.line(conv["span"].line)
    assert "conv1: conv(planes, k=3, s=stride, p=1)" in line
    assert conv["scope"] == "layer1.0" and conv["block"] == "basic"


def test_comments_and_statement_continuation():
    arch = resdsl.loads("""
        # a comment
        model m() {   # another
            input [3, 8, 8]
            x = conv1: conv(4, k=1)   # trailing
                -> relu
            return x
                -> conv2: conv(2, k=1)
        }""")
    assert list(arch.graph) == ["input", "conv1", "relu", "conv2"]


def test_the_reference_pages_first_example_is_resnet18():
    text = open("docs/language.md").read()
    example = text.split("```\n", 2)[1]
    arch = resdsl.loads(example, model="resnet18")
    assert arch.num_params() == 11_689_512
    assert "layer2.0.downsample.0" in arch.graph
