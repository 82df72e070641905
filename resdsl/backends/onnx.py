"""IR -> ONNX, built straight from the graph with `onnx.helper` (no detour through torch).

Node names are the layer names, initializer names the state_dict keys
(`layer1.0.conv1.weight`), the input and output keep the IR's input and output layer
names, and the batch dimension is dynamic (`batch`). Batch norm stays a
BatchNormalization node (inference form: running statistics) unless `fold_bn`, which
folds each batch norm into the convolution before it when that convolution feeds
nothing else (the folded convolution then has a `<conv>.bias`); the others stay.
Dropout is the identity (an inference graph). The opset is `OPSET`.

>>> import resdsl
>>> model = resdsl.load("specs/resnet18.arch").to_onnx(seed=0)
>>> model.graph.node[0].name, model.graph.initializer[0].name
('conv1', 'conv1.weight')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from resdsl import __version__
from resdsl.errors import ResdslError
from resdsl.ir.graph import inputs_of, topo_order

OPSET = 17          # ONNX Runtime >= 1.13, TensorRT >= 8.6
BATCH = "batch"     # the dynamic batch dimension's name


def _np(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(t, dtype=np.float32))


@dataclass
class _Ctx:
    """What an op's entry needs: the IR, the weights, and the graph being built."""

    g: Any
    weights: dict
    fold: dict[str, str]                 # conv -> batch norm folded into it
    nodes: list = field(default_factory=list)
    inits: dict[str, np.ndarray] = field(default_factory=dict)
    consts: int = 0

    def weight(self, key: str) -> np.ndarray:
        if key not in self.weights:
            raise ResdslError(f"the weights have no `{key}`",
                              hint="give a state_dict with every parameter and buffer of "
                                   "the spec (resdsl inspect --weights FILE lists them)")
        return _np(self.weights[key])

    def init(self, key: str, value: np.ndarray | None = None) -> str:
        """An initializer named `key` (a state_dict key) holding `value` (default: the
        weight of that key)."""
        self.inits[key] = self.weight(key) if value is None else value
        return key

    def const(self, owner: str, what: str, value: np.ndarray) -> str:
        """A constant that is not a weight (pads, slice bounds): `<layer>.<what>`."""
        key = f"{owner}.{what}"
        self.inits[key] = value
        return key

    def node(self, op_type: str, name: str, inputs: list[str], output: str,
             **attrs: Any) -> None:
        from onnx import helper
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))


def _conv(ctx: _Ctx, name: str, a, x: list[str], out: str) -> None:
    inputs = [x[0], f"{name}.weight"]
    if name in ctx.fold:
        bn = ctx.fold[name]
        scale, shift = _bn_affine(ctx, bn)
        w = ctx.weight(f"{name}.weight") * scale[:, None, None, None]
        b = shift + (ctx.weight(f"{name}.bias") * scale if a.bias else 0)
        ctx.init(f"{name}.weight", w.astype(np.float32))
        inputs.append(ctx.init(f"{name}.bias", np.asarray(b, dtype=np.float32)))
    else:
        ctx.init(f"{name}.weight")
        if a.bias:
            inputs.append(ctx.init(f"{name}.bias"))
    ctx.node("Conv", name, inputs, out, kernel_shape=[a.k, a.k], strides=[a.s, a.s],
             pads=[a.p] * 4, dilations=[a.d, a.d], group=a.groups)


def _bn_affine(ctx: _Ctx, bn: str) -> tuple[np.ndarray, np.ndarray]:
    eps = ctx.g.nodes[bn]["attrs"].eps
    gamma, beta = ctx.weight(f"{bn}.weight"), ctx.weight(f"{bn}.bias")
    mean, var = ctx.weight(f"{bn}.running_mean"), ctx.weight(f"{bn}.running_var")
    scale = (gamma / np.sqrt(var.astype(np.float64) + eps)).astype(np.float32)
    return scale, (beta - mean * scale).astype(np.float32)


def _bn(ctx: _Ctx, name: str, a, x: list[str], out: str) -> None:
    keys = [ctx.init(f"{name}.{k}") for k in ("weight", "bias", "running_mean",
                                               "running_var")]
    ctx.node("BatchNormalization", name, [x[0], *keys], out, epsilon=float(a.eps),
             momentum=float(1 - a.momentum))


def _linear(ctx: _Ctx, name: str, a, x: list[str], out: str) -> None:
    inputs = [x[0], ctx.init(f"{name}.weight")]
    if a.bias:
        inputs.append(ctx.init(f"{name}.bias"))
    ctx.node("Gemm", name, inputs, out, transB=1)


def _pool(op_type: str, **extra: Any) -> Callable:
    def emit(ctx: _Ctx, name: str, a, x: list[str], out: str) -> None:
        ctx.node(op_type, name, x[:1], out, kernel_shape=[a.k, a.k],
                 strides=[a.stride, a.stride], pads=[a.p] * 4,
                 ceil_mode=int(a.ceil_mode), **extra)
    return emit


def _zeropad(ctx: _Ctx, name: str, a, x: list[str], out: str) -> None:
    src = x[0]
    in_c = ctx.g.nodes[inputs_of(ctx.g, name)[0]]["shape"][0]
    if a.s != 1:
        sub = f"{name}.subsample"
        big = np.iinfo(np.int64).max
        ctx.node("Slice", sub, [src, ctx.const(name, "starts", np.array([0, 0], np.int64)),
                                ctx.const(name, "ends", np.array([big, big], np.int64)),
                                ctx.const(name, "axes", np.array([2, 3], np.int64)),
                                ctx.const(name, "steps", np.array([a.s, a.s], np.int64))],
                 sub)
        src = sub
    before, after = a.pads(in_c)
    pads = np.array([0, before, 0, 0, 0, after, 0, 0], np.int64)
    ctx.node("Pad", name, [src, ctx.const(name, "pads", pads)], out, mode="constant")


def _unary(op_type: str, **attrs: Any) -> Callable:
    def emit(ctx: _Ctx, name: str, a, x: list[str], out: str) -> None:
        ctx.node(op_type, name, x[:1], out, **attrs)
    return emit


def _add(ctx: _Ctx, name: str, a, x: list[str], out: str) -> None:
    ctx.node("Add" if len(x) == 2 else "Sum", name, x, out)


# Ops that take several ONNX nodes name their inner nodes and outputs `<layer>.<what>` (as
# zeropad's `<layer>.subsample`) and their constants `<layer>.<what>`; the last node is
# the layer's, named and output as the layer.

def _scalar(ctx: _Ctx, name: str, what: str, value: float) -> str:
    return ctx.const(name, what, np.array(value, np.float32))


def _shape(ctx: _Ctx, name: str, what: str, dims: list[int]) -> str:
    """A Reshape target: 0 keeps the (dynamic) batch dimension."""
    return ctx.const(name, what, np.array(dims, np.int64))


def _silu(ctx: _Ctx, name: str, a, x: list[str], out: str) -> None:
    ctx.node("Sigmoid", f"{name}.sigmoid", x[:1], f"{name}.sigmoid")
    ctx.node("Mul", name, [x[0], f"{name}.sigmoid"], out)


def _gelu(ctx: _Ctx, name: str, a, x: list[str], out: str) -> None:
    """The exact (erf) form, x * (1 + erf(x / sqrt 2)) / 2 -- opset 17 has no Gelu (20
    has); written as torch's exporter writes it, the pattern ONNX Runtime fuses into its
    Gelu kernel."""
    ctx.node("Div", f"{name}.scaled", [x[0], _scalar(ctx, name, "sqrt2", np.sqrt(2.0))],
             f"{name}.scaled")
    ctx.node("Erf", f"{name}.erf", [f"{name}.scaled"], f"{name}.erf")
    ctx.node("Add", f"{name}.one_plus", [f"{name}.erf", _scalar(ctx, name, "one", 1.0)],
             f"{name}.one_plus")
    ctx.node("Mul", f"{name}.product", [x[0], f"{name}.one_plus"], f"{name}.product")
    ctx.node("Mul", name, [f"{name}.product", _scalar(ctx, name, "half", 0.5)], out)


def _avgpool(ctx: _Ctx, name: str, a, x: list[str], out: str) -> None:
    _pool("AveragePool", count_include_pad=int(a.count_include_pad))(ctx, name, a, x, out)


def _gn(ctx: _Ctx, name: str, a, x: list[str], out: str) -> None:
    """Group norm from primitives. Opset 17 has no GroupNormalization: opset 18's scales
    per group (a spec error, deprecated) and opset 21's needs ONNX Runtime >= 1.20 and IR
    version 10, so raising the opset would raise it for every model. Reshape to
    [N, G, C/G * H * W], two-pass mean and biased variance (torch's), normalise, reshape
    back, and the per-channel affine with the state_dict's (C,) weight and bias unsqueezed
    to (C, 1, 1) (ONNX Runtime folds those constant branches)."""
    c, h, w = ctx.g.nodes[name]["shape"]

    def step(op_type: str, what: str, inputs: list[str], **attrs: Any) -> str:
        ctx.node(op_type, f"{name}.{what}", inputs, f"{name}.{what}", **attrs)
        return f"{name}.{what}"
    grouped = step("Reshape", "grouped", [x[0], _shape(ctx, name, "group_shape",
                                                       [0, a.groups, -1])])
    mean = step("ReduceMean", "mean", [grouped], axes=[2], keepdims=1)
    centered = step("Sub", "centered", [grouped, mean])
    square = step("Mul", "square", [centered, centered])
    var = step("ReduceMean", "var", [square], axes=[2], keepdims=1)
    std = step("Sqrt", "std", [step("Add", "var_eps", [var, _scalar(ctx, name, "eps",
                                                                      a.eps)])])
    normed = step("Div", "normed", [centered, std])
    ungrouped = step("Reshape", "ungrouped", [normed, _shape(ctx, name, "map_shape",
                                                             [0, c, h, w])])
    axes = ctx.const(name, "affine_axes", np.array([1, 2], np.int64))
    weight = step("Unsqueeze", "weight_map", [ctx.init(f"{name}.weight"), axes])
    bias = step("Unsqueeze", "bias_map", [ctx.init(f"{name}.bias"), axes])
    scaled = step("Mul", "scaled", [ungrouped, weight])
    ctx.node("Add", name, [scaled, bias], out)


def _channel_conv(ctx: _Ctx, name: str, a, x: list[str], out: str) -> None:
    """ECA: the pooled [N, C, 1, 1] (or [N, C]) vector as a one-channel row [N, 1, C], a
    1-D Conv with the state_dict's (1, 1, k) weight, and back."""
    shape = ctx.g.nodes[name]["shape"]
    ctx.node("Reshape", f"{name}.row", [x[0], _shape(ctx, name, "row_shape", [0, 1, -1])],
             f"{name}.row")
    ctx.node("Conv", f"{name}.conv", [f"{name}.row", ctx.init(f"{name}.weight")],
             f"{name}.conv", kernel_shape=[a.k], pads=[a.pad, a.pad])
    ctx.node("Reshape", name, [f"{name}.conv", _shape(ctx, name, "out_shape",
                                                      [0, *shape])], out)


def _slice(ctx: _Ctx, name: str, a, x: list[str], out: str) -> None:
    ctx.node("Slice", name, [x[0], ctx.const(name, "starts", np.array([a.start], np.int64)),
                             ctx.const(name, "ends", np.array([a.stop], np.int64)),
                             ctx.const(name, "axes", np.array([1], np.int64))], out)


def _branch_softmax(ctx: _Ctx, name: str, a, x: list[str], out: str) -> None:
    """timm's rSoftMax: [N, card, n, K] -> [N, n, card, K], softmax over n, back."""
    shape = ctx.g.nodes[name]["shape"]
    ctx.node("Reshape", f"{name}.split", [x[0], _shape(ctx, name, "split_shape",
                                                       [0, a.card, a.n, -1])],
             f"{name}.split")
    ctx.node("Transpose", f"{name}.branches", [f"{name}.split"], f"{name}.branches",
             perm=[0, 2, 1, 3])
    ctx.node("Softmax", f"{name}.softmax", [f"{name}.branches"], f"{name}.softmax", axis=1)
    ctx.node("Reshape", name, [f"{name}.softmax", _shape(ctx, name, "out_shape",
                                                         [0, *shape])], out)


# op -> emitter(ctx, layer name, attrs, input tensor names, output tensor name); one entry
# per op of resdsl.ir.ops.OPS (tests/test_onnx.py checks), "input" is the graph input
ONNX_OPS: dict[str, Callable | None] = {
    "input": None,
    "conv": _conv,
    "bn": _bn,
    "relu": _unary("Relu"),
    "maxpool": _pool("MaxPool"),
    "avgpool": _avgpool,
    "global_avgpool": _unary("GlobalAveragePool"),
    "flatten": _unary("Flatten", axis=1),
    "linear": _linear,
    "dropout": _unary("Identity"),
    "add": _add,
    "concat": lambda ctx, name, a, x, out: ctx.node("Concat", name, x, out, axis=1),
    "zeropad": _zeropad,
    "sigmoid": _unary("Sigmoid"),
    "silu": _silu,
    "gelu": _gelu,
    # torch's relu6(x + 3) / 6 is x / 6 + 1/2 clipped to [0, 1]; ONNX's default alpha is 0.2
    "hardsigmoid": _unary("HardSigmoid", alpha=1.0 / 6.0, beta=0.5),
    "tanh": _unary("Tanh"),
    "leaky_relu": lambda ctx, name, a, x, out: ctx.node("LeakyRelu", name, x[:1], out,
                                                        alpha=float(a.slope)),
    "identity": _unary("Identity"),
    "mul": lambda ctx, name, a, x, out: ctx.node("Mul", name, x, out),  # broadcasts a gate
    "gn": _gn,
    "channel_conv": _channel_conv,
    "slice": _slice,
    "drop_path": _unary("Identity"),      # inference
    "branch_softmax": _branch_softmax,
}


def _folds(g) -> dict[str, str]:
    """conv -> the batch norm right after it, when the conv feeds only that."""
    out = {}
    for name in g:
        d = g.nodes[name]
        if d["op"] != "bn":
            continue
        (src,) = inputs_of(g, name)
        if g.nodes[src]["op"] == "conv" and g.out_degree(src) == 1:
            out[src] = name
    return out


def to_onnx(arch, weights: dict | None = None, *, seed: int = 0, fold_bn: bool = False,
            opset: int = OPSET):
    """The network as an `onnx.ModelProto`, weights from `weights` (a state_dict; default
    the seeded initialisation of `arch.to_torch(seed=seed)`), checked with
    `onnx.checker.check_model(full_check=True)`."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ResdslError("the onnx backend needs the `onnx` package",
                          hint="pip install 'resdsl[onnx]' (or pip install onnx)") from None

    g = arch.graph
    for name in g:
        op = g.nodes[name]["op"]
        if op not in ONNX_OPS:
            raise ResdslError(f"op `{op}` (layer `{name}`) is not supported by the onnx "
                              "backend", g.nodes[name].get("span"),
                              hint="export through the torch backend (torch.onnx.export) "
                                   "or add an entry to resdsl.backends.onnx.ONNX_OPS")
    if weights is None:
        weights = arch.to_torch(seed=seed).state_dict()
    fold = _folds(g) if fold_bn else {}
    folded = set(fold.values())
    alias: dict[str, str] = {}          # a folded batch norm's name -> its conv's output
    ctx = _Ctx(g, weights, fold)
    inputs, outputs = [], []
    for name in topo_order(g):
        d = g.nodes[name]
        if d["op"] == "input":
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                        [BATCH, *d["shape"]]))
            continue
        if name in folded:
            alias[name] = alias.get(inputs_of(g, name)[0], inputs_of(g, name)[0])
            continue
        x = [alias.get(s, s) for s in inputs_of(g, name)]
        ONNX_OPS[d["op"]](ctx, name, d["attrs"], x, name)
    for name in g.graph["outputs"]:
        out = alias.get(name, name)
        if out != name:     # a folded batch norm is the output: keep the output's name
            ctx.node("Identity", f"{name}.output", [out], name)
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                     [BATCH, *g.nodes[name]["shape"]]))
    clash = set(ctx.inits) & set(g.nodes)
    if clash:
        raise ResdslError(f"layer name `{sorted(clash)[0]}` is also a weight's name; ONNX "
                          "needs distinct tensor names", hint="rename that layer")
    # an op of several nodes names its inner tensors `<layer>.<what>`: one may meet a layer
    # or a weight of that name
    seen = set(ctx.inits)
    for n in ctx.nodes:
        for o in n.output:
            if o in seen:
                raise ResdslError(f"the ONNX tensor name `{o}` is both a layer's (or a "
                                  "weight's) and an inner tensor of a layer; ONNX needs "
                                  "distinct tensor names", hint="rename that layer")
            seen.add(o)
    graph = helper.make_graph(
        ctx.nodes, arch.name, inputs, outputs,
        initializer=[numpy_helper.from_array(v, k) for k, v in ctx.inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="resdsl", producer_version=__version__,
                              doc_string=_text(f"{arch.name} from {arch.path or 'a spec'}"))
    model.ir_version = min(model.ir_version, 8)   # what ONNX Runtime >= 1.13 reads
    helper.set_model_props(model, {"resdsl.spec_hash": arch.spec_hash(),
                                   "resdsl.fold_bn": str(bool(fold_bn)).lower()})
    onnx.checker.check_model(model, full_check=True)
    return model


def to_bytes(model) -> bytes:
    return model.SerializeToString()


def _text(s: str) -> str:
    """Valid UTF-8 for a protobuf string field (a file name may hold undecodable bytes)."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")
