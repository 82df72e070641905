"""IR -> Relax, directly with relax.BlockBuilder, inference mode.

Batch norm is folded into the convolution before it (when that convolution feeds
nothing else); a batch norm elsewhere (pre-activation blocks) becomes a per-channel
scale and shift. Weights are function parameters, prepared here in numpy (folded,
transposed), so an artifact's weights file holds exactly what its kernels read.

>>> import resdsl, numpy as np
>>> from resdsl.backends.tvm.lower import lower
>>> arch = resdsl.load("specs/resnet20.arch")
>>> lowered = lower(arch, arch.to_torch(seed=0).state_dict(), batch=1)
>>> lowered.param_names[:2]
['conv1.weight', 'conv1.bias']
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from resdsl.backends import require_ops
from resdsl.backends.tvm.kernels import (candidate_plans, concat_func, concat_grow_func,
                                         conv_func, linear_func, maxpool_func, pack_linear,
                                         pack_weights, plan_conv, plan_linear, plan_pointwise,
                                         plan_window)
from resdsl.errors import ResdslError
from resdsl.ir.graph import inputs_of, topo_order
from resdsl.weights import check_weights


@dataclass
class Lowered:
    """A Relax module whose `main(x, *params)` runs the network, and its parameters."""

    mod: Any                        # tvm.IRModule
    param_names: list[str]
    params: dict[str, np.ndarray]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    folded: list[str] = field(default_factory=list)   # batch norms folded into convs
    convs: dict = field(default_factory=dict)         # conv kernels by task key (llvm)
    conv_calls: list = field(default_factory=list)    # (task key, kernel) of each conv call


def _np(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(t, dtype=np.float32))


class _Ctx:
    def __init__(self, arch, weights: dict, batch: int) -> None:
        from tvm import relax
        self.relax = relax
        self.arch = arch
        self.g = arch.graph
        self.weights = weights
        self.batch = batch
        self.params: dict[str, np.ndarray] = {}
        self.vars: dict[str, Any] = {}
        self.lanes: int | None = None   # resdsl's CPU kernels, when set
        self.bb: Any = None             # the BlockBuilder (for ops that add PrimFuncs)
        self.funcs: dict = {}           # PrimFuncs added by ops, by shape
        self.chains: dict = {}          # growing concatenations: their buffer, so far
        self.fold_bn: set = set()       # growing steps whose bn/relu the next 1x1 applies
        self.prologues: dict = {}       # a tail a 1x1 applies -> (scale, shift, relu, width)
        self.shared = True              # kernels shared across input-channel counts
        self.plans: dict = {}           # conv task key -> ConvPlan chosen by tuning
        self.convs: dict = {}           # conv task key -> its kernel's arguments, plan, calls
        self.conv_calls: list = []      # (task key, kernel) of every call, in emitted order

    def weight(self, key: str) -> np.ndarray:
        return _np(self.weights[key])

    def param(self, name: str, value: np.ndarray):
        """A function parameter holding `value`."""
        relax = self.relax
        value = np.ascontiguousarray(value, dtype=np.float32)
        self.params[name] = value
        var = relax.Var(name, relax.TensorType(value.shape, "float32"))
        self.vars[name] = var
        return var

    def bn_affine(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        a = self.g.nodes[name]["attrs"]
        gamma, beta = self.weight(f"{name}.weight"), self.weight(f"{name}.bias")
        mean, var = self.weight(f"{name}.running_mean"), self.weight(f"{name}.running_var")
        scale = gamma / np.sqrt(var + np.float32(a.eps))
        return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)


def _folds(g) -> dict[str, str]:
    """conv -> the batch norm folded into it."""
    out = {}
    for name, d in g.nodes(data=True):
        if d["op"] != "bn":
            continue
        (src,) = inputs_of(g, name)
        if g.nodes[src]["op"] == "conv" and g.out_degree(src) == 1:
            out[src] = name
    return out


def _conv(ctx: _Ctx, name: str, a, args, folds: dict[str, str]):
    nn = ctx.relax.op.nn
    w = ctx.weight(f"{name}.weight")
    b = ctx.weight(f"{name}.bias") if a.bias else np.zeros(w.shape[0], np.float32)
    if name in folds:
        scale, shift = ctx.bn_affine(folds[name])
        w = w * scale[:, None, None, None]
        b = b * scale + shift
    y = nn.conv2d(args[0], ctx.param(f"{name}.weight", w), strides=a.s, padding=a.p,
                  dilation=a.d, groups=a.groups)
    if a.bias or name in folds:
        y = ctx.relax.op.add(y, ctx.param(f"{name}.bias", b.reshape(1, -1, 1, 1)))
    return y


def _bn(ctx: _Ctx, name: str, a, args, folds):
    scale, shift = ctx.bn_affine(name)
    op = ctx.relax.op
    return op.add(op.multiply(args[0], ctx.param(f"{name}.scale", scale.reshape(1, -1, 1, 1))),
                  ctx.param(f"{name}.shift", shift.reshape(1, -1, 1, 1)))


def _linear(ctx: _Ctx, name: str, a, args, folds):
    op = ctx.relax.op
    y = op.matmul(args[0], ctx.param(f"{name}.weight_t", ctx.weight(f"{name}.weight").T))
    if a.bias:
        y = op.add(y, ctx.param(f"{name}.bias", ctx.weight(f"{name}.bias")))
    return y


def _pool(kind: str) -> Callable:
    def rule(ctx: _Ctx, name, a, args, folds):
        nn = ctx.relax.op.nn
        if ctx.lanes and kind == "max" and (a.k, a.stride, a.p) == (3, 2, 1) \
                and not a.ceil_mode and len(args[0].ty.shape) == 4:   # the ImageNet stems'
            shape = tuple(int(d) for d in args[0].ty.shape)    # pool: resdsl's CPU kernel
            key = ("maxpool",) + shape
            if key not in ctx.funcs:
                fname = f"maxpool{len(ctx.funcs)}"
                func = maxpool_func(*shape).with_attr("global_symbol", fname)
                ctx.funcs[key] = ctx.bb.add_func(func.with_attr("op_pattern", 8), fname)
            return ctx.relax.call_tir(ctx.funcs[key], [args[0]],
                                      ctx.relax.TensorType(_shape(ctx, name), "float32"))
        fn = nn.max_pool2d if kind == "max" else nn.avg_pool2d
        kwargs = {} if kind == "max" else {"count_include_pad": a.count_include_pad}
        return fn(args[0], pool_size=a.k, strides=a.stride, padding=a.p,
                  ceil_mode=a.ceil_mode, **kwargs)
    return rule


def _zeropad(ctx: _Ctx, name, a, args, folds):
    op = ctx.relax.op
    (src,) = inputs_of(ctx.g, name)
    c, h, w = ctx.g.nodes[src]["shape"]
    x = args[0]
    if a.s != 1:
        x = op.strided_slice(x, axes=[2, 3], begin=[0, 0], end=[h, w], strides=[a.s, a.s])
    lo, hi = a.pads(c)
    return op.nn.pad(x, pad_width=[0, 0, lo, hi, 0, 0, 0, 0])


def _shape(ctx: _Ctx, name: str) -> tuple[int, ...]:
    """The batched shape of layer `name`'s output."""
    return (ctx.batch, *ctx.g.nodes[name]["shape"])


def _hardsigmoid(ctx: _Ctx, name, a, args, folds):
    # torch's form, relu6(x + 3) / 6, rather than clip(x / 6 + 1/2, 0, 1): same rounding
    op = ctx.relax.op
    three, six = ctx.relax.const(3.0, "float32"), ctx.relax.const(6.0, "float32")
    return op.divide(op.clip(op.add(args[0], three), 0.0, 6.0), six)


def _gn(ctx: _Ctx, name, a, args, folds):
    return ctx.relax.op.nn.group_norm(
        args[0], ctx.param(f"{name}.weight", ctx.weight(f"{name}.weight")),
        ctx.param(f"{name}.bias", ctx.weight(f"{name}.bias")), num_groups=a.groups,
        channel_axis=1, axes=[2, 3], epsilon=a.eps)


def _channel_conv(ctx: _Ctx, name, a, args, folds):
    """ECA: the pooled [N, C, 1, 1] (or [N, C]) vector as a one-channel row [N, 1, C],
    a 1-D convolution along it, and back."""
    op = ctx.relax.op
    (src,) = inputs_of(ctx.g, name)
    c = ctx.g.nodes[src]["shape"][0]
    out = _shape(ctx, name)
    row = op.reshape(args[0], (ctx.batch, 1, c))
    y = op.nn.conv1d(row, ctx.param(f"{name}.weight", ctx.weight(f"{name}.weight")),
                     padding=a.pad)
    return op.reshape(y, out)


def _mul(ctx: _Ctx, name, a, args, folds):
    """Element-wise product; a [N, C, 1, 1] gate broadcasts over [N, C, H, W].

    On the default (GPU) pipeline a gate's multiply is an opaque kernel: FuseOps would
    otherwise fuse squeeze-and-excitation's last 1x1 convolution, through its bias and
    sigmoid, with the broadcasting multiply (and the residual add after it) into one
    function, and dlight's matmul rule fails on that epilogue ("consumers of the
    cache-write stage that are not properly inlined"). With resdsl's CPU kernels the
    convolutions are opaque already and the multiply stays fusible."""
    shapes = [tuple(int(d) for d in x.ty.shape) for x in args]
    if ctx.lanes or shapes[0] == shapes[1]:
        return ctx.relax.op.multiply(args[0], args[1])
    from tvm import te
    big, small = (0, 1) if len(shapes[0]) == 4 and shapes[0][2:] != (1, 1) else (1, 0)
    key = ("gate", shapes[big])
    if key not in ctx.funcs:
        x = te.placeholder(shapes[big], "float32", name="x")
        gate = te.placeholder(shapes[small], "float32", name="gate")
        out = te.compute(shapes[big], lambda n, c, h, w: x[n, c, h, w] * gate[n, c, 0, 0],
                         name="gated")
        fname = f"gate{len(ctx.funcs)}"
        func = te.create_prim_func([x, gate, out]).with_attr("global_symbol", fname)
        ctx.funcs[key] = ctx.bb.add_func(func.with_attr("op_pattern", 8), fname)
    return ctx.relax.call_tir(ctx.funcs[key], [args[big], args[small]],
                              ctx.relax.TensorType(shapes[big], "float32"))


def _slice(ctx: _Ctx, name, a, args, folds):
    return ctx.relax.op.strided_slice(args[0], axes=[1], begin=[a.start], end=[a.stop])


def _branch_softmax(ctx: _Ctx, name, a, args, folds):
    """timm's rSoftMax: channels viewed as [card, n, K], softmax over the n branches,
    laid out as [n, card, K]."""
    op = ctx.relax.op
    shape = _shape(ctx, name)
    k = shape[1] // (a.n * a.card)
    y = op.reshape(args[0], (ctx.batch, a.card, a.n, k))
    y = op.nn.softmax(op.permute_dims(y, [0, 2, 1, 3]), axis=1)
    return op.reshape(y, shape)


# op -> lowering; a missing entry is "not supported by the tvm backend"
LOWER: dict[str, Callable] = {
    "conv": _conv,
    "bn": _bn,
    "relu": lambda ctx, n, a, x, f: ctx.relax.op.nn.relu(x[0]),
    "maxpool": _pool("max"),
    "avgpool": _pool("avg"),
    "global_avgpool": lambda ctx, n, a, x, f: ctx.relax.op.mean(x[0], axis=[2, 3],
                                                                 keepdims=True),
    "flatten": lambda ctx, n, a, x, f: ctx.relax.op.reshape(
        x[0], (ctx.batch, int(np.prod(ctx.g.nodes[n]["shape"])))),
    "linear": _linear,
    "dropout": lambda ctx, n, a, x, f: x[0],
    "add": lambda ctx, n, a, x, f: _sum(ctx, x),
    "concat": lambda ctx, n, a, x, f: ctx.relax.op.concat(x, axis=1) if len(x) > 1 else x[0],
    "zeropad": _zeropad,
    "sigmoid": lambda ctx, n, a, x, f: ctx.relax.op.sigmoid(x[0]),
    "silu": lambda ctx, n, a, x, f: ctx.relax.op.nn.silu(x[0]),
    "gelu": lambda ctx, n, a, x, f: ctx.relax.op.nn.gelu(x[0]),     # the erf form
    "hardsigmoid": _hardsigmoid,
    "tanh": lambda ctx, n, a, x, f: ctx.relax.op.tanh(x[0]),
    "leaky_relu": lambda ctx, n, a, x, f: ctx.relax.op.nn.leakyrelu(x[0], alpha=a.slope),
    "identity": lambda ctx, n, a, x, f: x[0],
    "mul": _mul,
    "gn": _gn,
    "channel_conv": _channel_conv,
    "slice": _slice,
    "drop_path": lambda ctx, n, a, x, f: x[0],                         # inference
    "branch_softmax": _branch_softmax,
}

# op -> why the tvm backend cannot express it (shown to the user)
UNSUPPORTED: dict[str, str] = {}


def _emit_plain(ctx, bb, name: str, values: dict, folds: dict) -> None:
    g = ctx.g
    d = g.nodes[name]
    if d["op"] == "bn" and inputs_of(g, name)[0] in folds:
        values[name] = values[inputs_of(g, name)[0]]
        return
    args = [values[i] for i in inputs_of(g, name)]
    values[name] = bb.emit(LOWER[d["op"]](ctx, name, d["attrs"], args, folds),
                           name_hint=name.replace(".", "_"))


def _sum(ctx, xs):
    out = xs[0]
    for x in xs[1:]:
        out = ctx.relax.op.add(out, x)
    return out


@dataclass
class _Fused:
    """conv [-> folded bn] [-> add(other)] [-> relu], emitted as one kernel at `tail`."""

    conv: str
    members: list[str]
    tail: str
    residual: str | None
    relu: bool


def _fusions(g, folds: dict[str, str]) -> dict[str, _Fused]:
    """Epilogues to fuse into each convolution, keyed by the pattern's last node."""
    out: dict[str, _Fused] = {}
    claimed: set[str] = set()
    for name in topo_order(g):
        if g.nodes[name]["op"] != "conv":
            continue
        members, last = [name], folds.get(name, name)
        if last != name:
            members.append(last)
        residual = None
        succ = list(g.successors(last))
        if g.out_degree(last) == 1 and g.nodes[succ[0]]["op"] == "add" \
                and g.in_degree(succ[0]) == 2 and last not in g.graph["outputs"] \
                and succ[0] not in claimed:
            add = succ[0]
            others = [i for i in inputs_of(g, add) if i != last]
            if len(others) == 1:
                residual, last = others[0], add
                members.append(add)
                succ = list(g.successors(last))
        relu = False
        if g.out_degree(last) == 1 and g.nodes[succ[0]]["op"] == "relu" \
                and last not in g.graph["outputs"] and succ[0] not in claimed:
            last = succ[0]
            members.append(last)
            relu = True
        claimed.update(members)
        out[last] = _Fused(name, members, last, residual, relu)
    return out


@dataclass
class _Concat:
    """concat [-> bn] [-> relu], emitted as one copy kernel at `tail`; or, as a step of a
    growing concatenation (`chain`), copying only its new part into the chain's buffer."""

    concat: str
    bn: str | None
    relu: str | None
    tail: str
    chain: str | None = None       # the first concatenation of its chain
    channels: int = 0              # the chain's final width (its buffer's channels)


def _concat_fusions(g, taken: set[str]) -> dict[str, _Concat]:
    """Channel concatenations (DenseNet's, before every layer), with the batch norm and
    ReLU that follow them, keyed by the pattern's last node."""
    out: dict[str, _Concat] = {}
    outputs = set(g.graph["outputs"])

    def sole_successor(name: str, op: str) -> str | None:
        succ = list(g.successors(name))
        if len(succ) == 1 and g.nodes[succ[0]]["op"] == op and name not in outputs \
                and succ[0] not in taken:
            return succ[0]
        return None
    for name in topo_order(g):
        if g.nodes[name]["op"] != "concat" or g.in_degree(name) < 2 or name in taken:
            continue
        bn = sole_successor(name, "bn")
        relu = sole_successor(bn or name, "relu")
        tail = relu or bn or name
        out[tail] = _Concat(name, bn, relu, tail)
    _chains(g, out)
    return out


def _chains(g, concats: dict[str, _Concat]) -> None:
    """Link growing concatenations: one whose inputs are another's plus one more (DenseNet:
    each layer's input is the previous layer's plus its output). A chain is computed in
    one buffer of its final width, each step copying in only its new part
    (`concat_grow_func`): one kernel per dense block instead of one per width, and no
    channel copied twice into it."""
    by_parts = {tuple(inputs_of(g, fc.concat)): fc for fc in concats.values()}
    nxt: dict[str, list[_Concat]] = {}
    for parts, fc in by_parts.items():
        prev = by_parts.get(parts[:-1])
        if prev is not None:
            nxt.setdefault(prev.concat, []).append(fc)
    has_prev = {fcs[0].concat for fcs in nxt.values() if len(fcs) == 1}
    for fc in by_parts.values():
        if fc.concat in has_prev or len(nxt.get(fc.concat, [])) != 1:
            continue   # not the first of a chain of two or more
        chain = [fc]
        while len(nxt.get(chain[-1].concat, [])) == 1:
            chain.append(nxt[chain[-1].concat][0])
        width = g.nodes[chain[-1].concat]["shape"][0]
        for member in chain:
            member.chain, member.channels = fc.concat, width


def _emit_concat(ctx: _Ctx, bb, fc: _Concat, values: dict, cache: dict):
    from tvm import relax
    g = ctx.g
    parts = inputs_of(g, fc.concat)
    channels = tuple(g.nodes[p]["shape"][0] for p in parts)
    c, h, w = g.nodes[fc.concat]["shape"]
    if fc.chain is not None:
        return _emit_grow(ctx, bb, fc, values, cache, parts, channels)
    key = ("concat", ctx.batch, channels, h, w, fc.bn is not None, fc.relu is not None)
    if key not in cache:
        fname = f"concat{len(cache)}_{len(parts)}x{h}x{w}"
        func = concat_func(ctx.batch, list(channels), h, w, fc.bn is not None,
                           fc.relu is not None)
        func = func.with_attr("global_symbol", fname).with_attr("op_pattern", 8)
        cache[key] = bb.add_func(func, fname)
    args = [values[p] for p in parts]
    if fc.bn is not None:
        scale, shift = ctx.bn_affine(fc.bn)
        args += [ctx.param(f"{fc.bn}.scale", scale), ctx.param(f"{fc.bn}.shift", shift)]
    return relax.call_tir(cache[key], args, relax.TensorType((ctx.batch, c, h, w), "float32"))


def conv_task_key(n, cin, h, w, f, k, s, p, d, groups, residual, relu, lanes) -> str:
    """A convolution kernel's shape, as the knob tuner's records name it (no plan)."""
    return (f"n{n}_c{cin}_h{h}_w{w}_f{f}_k{k}_s{s}_p{p}_d{d}_g{groups}"
            f"_r{int(residual)}_relu{int(relu)}_l{lanes}")


def conv_class(k: int, groups: int) -> str:
    """The class a convolution is reported under: 1x1, 3x3, grouped, stem 7x7, ..."""
    if groups > 1:
        return "grouped"
    if k == 7:
        return "stem 7x7"
    return f"{k}x{k}"


def _emit_grow(ctx: _Ctx, bb, fc: _Concat, values: dict, cache: dict, parts, channels):
    """A step of a growing concatenation: the chain's buffer (made by its first step from
    all but the last input) gets the new part in place, and the step's output is the
    buffer's first channels through the batch norm and ReLU."""
    from tvm import relax
    c, h, w = ctx.g.nodes[fc.concat]["shape"]
    n, total = ctx.batch, fc.channels
    buf_ty = relax.TensorType((n, total, h, w), "float32")
    if fc.chain == fc.concat:
        # the chain's first step: its buffer, with all the first step's parts (the last one
        # is copied again below: a kernel reading a single input could be taken for a
        # reshape by Relax's RewriteDataflowReshape)
        key = ("concat-start", n, channels, h, w, total)
        if key not in cache:
            fname = f"concat_start{len(cache)}_{total}x{h}x{w}"
            func = concat_func(n, list(channels), h, w, False, False, out_channels=total)
            cache[key] = bb.add_func(func.with_attr("global_symbol", fname)
                                     .with_attr("op_pattern", 8), fname)
        ctx.chains[fc.chain] = bb.emit(relax.call_tir(
            cache[key], [values[p] for p in parts], buf_ty))
    if fc.tail in ctx.fold_bn:
        # only the new part is copied in: the 1x1 convolution after the step reads the
        # buffer and applies the batch norm and ReLU as it packs its input chunks (its
        # prologue), instead of this step writing them out for all c channels (DenseNet:
        # a pass over every layer's whole input, 11% of DenseNet-121 at batch 8)
        scale, shift = ctx.bn_affine(fc.bn)
        scale_v = ctx.param(f"{fc.bn}.scale", scale)
        shift_v = ctx.param(f"{fc.bn}.shift", shift)
        ctx.prologues[fc.tail] = (scale_v, shift_v, fc.relu is not None, total)
        key = ("concat-copy", n, total, h, w)
        if key not in cache:
            fname = f"concat_copy{len(cache)}_{total}x{h}x{w}"
            func = concat_grow_func(n, total, h, w, False, False, out=False)
            cache[key] = bb.add_func(func.with_attr("global_symbol", fname)
                                     .with_attr("op_pattern", 8), fname)
        return relax.call_tir_inplace(cache[key], [ctx.chains[fc.chain], values[parts[-1]],
                                                   scale_v], 0, buf_ty)
    key = ("concat-grow", n, total, h, w, fc.bn is not None, fc.relu is not None)
    if key not in cache:
        fname = f"concat_grow{len(cache)}_{total}x{h}x{w}"
        func = concat_grow_func(n, total, h, w, fc.bn is not None, fc.relu is not None)
        cache[key] = bb.add_func(func.with_attr("global_symbol", fname)
                                 .with_attr("op_pattern", 8), fname)
    args = [ctx.chains[fc.chain], values[parts[-1]]]
    if fc.bn is not None:
        scale, shift = ctx.bn_affine(fc.bn)
        args += [ctx.param(f"{fc.bn}.scale", scale), ctx.param(f"{fc.bn}.shift", shift)]
    step = bb.emit(relax.call_tir_inplace(
        cache[key], args, [0, -1], [buf_ty, relax.TensorType((n, c, h, w), "float32")]))
    ctx.chains[fc.chain] = bb.emit(relax.TupleGetItem(step, 0))
    return relax.TupleGetItem(step, 1)


def _emit_kernel(ctx: _Ctx, bb, fused: _Fused, values: dict, lanes: int, cache: dict,
                 tunable: bool = False):
    """Emit a fused convolution as a call to a hand-scheduled PrimFunc, or None when the
    kernel does not fit this convolution."""
    import tvm
    from tvm import relax
    g = ctx.g
    name = fused.conv
    a = g.nodes[name]["attrs"]
    (src,) = inputs_of(g, name)
    cin, h, w = g.nodes[src]["shape"]
    h_in, w_in = h, w
    f, oh, ow = g.nodes[name]["shape"]
    # a 1x1 stride-1 convolution is a matrix product over the H*W pixels: computed on
    # (zero-copy) reshaped views as one row of H*W columns. A strided 1x1 one (the
    # downsampling shortcut) is the same product over its gathered pixels: read in
    # place, its rows of every other pixel wasted half of each cache line it loaded
    s = a.s
    subsample = a.k == 1 and a.p == 0 and s > 1 and oh * ow > ow
    pointwise = a.k == 1 and a.p == 0 and (s == 1 or subsample) and oh * ow > ow
    if pointwise:
        plan = plan_pointwise(f, cin, a.groups, oh * ow, lanes, subsample=subsample,
                              images=ctx.batch)
        h, w, oh, ow, s = 1, oh * ow, 1, oh * ow, 1
    else:
        plan = plan_window(f, cin, a.groups, ow, lanes, a.k, a.s, w) if a.k > 1 \
            else plan_conv(f, cin, a.groups, ow, lanes)
    if plan is None:
        if src in ctx.prologues:   # its input is a dense block's whole buffer
            raise AssertionError(f"{name}: no kernel for a convolution with a prologue")
        return None
    task = conv_task_key(ctx.batch, cin, h, w, f, a.k, a.s, a.p, a.d, a.groups,
                         fused.residual is not None, fused.relu, lanes)
    tuned = ctx.plans.get(task)          # a tuned blocking (`resdsl tune --knobs`), taken
    if tuned is not None and tuned in candidate_plans(   # only if the search could propose it
            plan, f, cin, a.groups, ow, lanes, a.k, limit=10_000):
        plan = tuned
    if task in ctx.convs:
        ctx.convs[task]["calls"] += 1
    else:
        ctx.convs[task] = {"args": (ctx.batch, cin, h, w, f, a.k, s, a.p, a.d, a.groups,
                                    fused.residual is not None, fused.relu),
                           "plan": plan, "calls": 1, "width": ow}
    wt = ctx.weight(f"{name}.weight")
    b = ctx.weight(f"{name}.bias") if a.bias else np.zeros(f, np.float32)
    bn = fused.members[1] if len(fused.members) > 1 and g.nodes[fused.members[1]]["op"] == "bn" \
        else None
    if bn is not None:
        scale, shift = ctx.bn_affine(bn)
        wt = wt * scale[:, None, None, None]
        b = b * scale + shift
    # one kernel for the 1x1 convolutions that differ only in their input channels
    # (DenseNet: one width per layer), unless tuning (a task per shape)
    generic = _shared_pointwise(ctx, name, tunable)
    prologue = ctx.prologues.get(src)   # the batch norm and ReLU of a dense block's buffer
    if prologue is not None:
        if not generic:
            raise AssertionError(f"{name}: a prologue needs the shared 1x1 kernel")
        plan = replace(plan, pack=True) if plan.xc else plan
    key = (ctx.batch, None if generic else cin, h, w, f, a.k, s, a.p, a.d, a.groups,
           (h_in, w_in, a.s) if subsample else None,
           replace(plan, cb=0) if generic else plan, fused.residual is not None, fused.relu,
           prologue and prologue[2:])
    if key not in cache:
        func = conv_func(ctx.batch, None if generic else cin, h, w, f, a.k, s, a.p, a.d,
                         a.groups, plan, fused.residual is not None, fused.relu,
                         schedule=not tunable,
                         subsample=(h_in, w_in, a.s) if subsample else None,
                         prologue=prologue and (prologue[3], prologue[2]))
        fname = f"conv{len(cache)}_{f}x{'C' if generic else cin}k{a.k}s{a.s}"
        # opaque (op_pattern 8): operator fusion leaves the kernel whole, so its schedule
        # (or, when tuning, its hand schedule for untuned builds) still applies
        func = func.with_attr("global_symbol", fname).with_attr("op_pattern", 8)
        if tunable:
            func = func.with_attr("resdsl.kernel", json.dumps([f, dataclasses.asdict(plan)]))
        # what the benchmark reports per class of convolution: useful MACs of one call
        if not generic:
            func = func.with_attr("resdsl.conv", json.dumps(
                {"class": conv_class(a.k, a.groups), "macs": ctx.batch * f * oh * ow
                 * (cin // a.groups) * a.k * a.k}))
        cache[key] = bb.add_func(func, fname)
    def view(value, channels):
        if not pointwise:
            return value
        # a view of a view is a view of its source: two chained reshapes would be fused
        # into one kernel that copies
        bound = bb.lookup_binding(value) if isinstance(value, relax.Var) else None
        if isinstance(bound, relax.Call) and bound.op == tvm.ir.Op.get("relax.reshape"):
            value = bound.args[0]
        shape = (ctx.batch, channels, 1, ow)
        if [int(v) for v in value.ty.shape] == list(shape):
            return value
        return bb.emit(relax.op.reshape(value, shape))
    args = [values[src] if subsample else view(values[src], prologue[3] if prologue else cin),
            ctx.param(f"{name}.weight", pack_weights(wt, a.groups, plan)),
            ctx.param(f"{name}.bias", b)]
    if prologue is not None:
        args += list(prologue[:2])
    if fused.residual is not None:
        args.append(view(values[fused.residual], f))
    call = relax.call_tir(cache[key], args, relax.TensorType((ctx.batch, f, oh, ow), "float32"))
    ctx.conv_calls.append((task, cache[key].name_hint))
    if pointwise:
        call = relax.op.reshape(bb.emit(call), (ctx.batch, f) + tuple(g.nodes[name]["shape"][1:]))
    return call


def _shared_pointwise(ctx: _Ctx, conv: str, tunable: bool) -> bool:
    """Whether convolution `conv` becomes the shared 1x1 kernel (a matrix product over
    its pixels, its input channels symbolic)."""
    a = ctx.g.nodes[conv]["attrs"]
    _, oh, ow = ctx.g.nodes[conv]["shape"]
    return a.k == 1 and a.p == 0 and a.s == 1 and oh * ow > ow and a.groups == 1 \
        and not tunable and ctx.shared


def _feeds_shared_pointwise(ctx: _Ctx, tail: str, convs: set, tunable: bool) -> bool:
    """Whether `tail`'s only consumer is one of `convs` that becomes the shared 1x1
    kernel, which can then apply a batch norm [and ReLU] ending at `tail` itself."""
    succ = list(ctx.g.successors(tail))
    return tail not in ctx.g.graph["outputs"] and len(succ) == 1 and succ[0] in convs \
        and _shared_pointwise(ctx, succ[0], tunable)


def _bn_prologues(ctx: _Ctx, concats: dict, fusions: dict, tunable: bool) -> set[str]:
    """The growing concatenation steps whose batch norm (and ReLU) the next convolution
    applies as its prologue: a step whose only successor is a convolution that becomes
    the shared 1x1 kernel (DenseNet's bottleneck and transition convolutions)."""
    convs = {f.conv for f in fusions.values()}
    return {fc.tail for fc in concats.values() if fc.chain is not None and fc.bn is not None
            and _feeds_shared_pointwise(ctx, fc.tail, convs, tunable)}


def _plain_prologues(ctx: _Ctx, fusions: dict, taken: set, folds: dict,
                     tunable: bool) -> dict[str, str]:
    """A batch norm [-> ReLU] whose only consumer is a convolution that becomes the shared
    1x1 kernel, which then applies them as its prologue (the first layer of each of
    DenseNet's dense blocks; a pre-activation bottleneck's first convolution): tail ->
    the batch norm."""
    g = ctx.g
    outputs = set(g.graph["outputs"])
    convs = {f.conv for f in fusions.values()}
    out = {}
    for name in topo_order(g):
        if g.nodes[name]["op"] != "bn" or name in taken or name in outputs \
                or inputs_of(g, name)[0] in folds:
            continue
        tail = name
        succ = list(g.successors(tail))
        if len(succ) == 1 and g.nodes[succ[0]]["op"] == "relu" and succ[0] not in taken \
                and succ[0] not in outputs:
            tail = succ[0]
        if _feeds_shared_pointwise(ctx, tail, convs, tunable):
            out[tail] = name
    return out


def _emit_linear(ctx: _Ctx, bb, name: str, values: dict, lanes: int, cache: dict):
    """The classifier as a call to resdsl's linear kernel (weights packed by blocks of
    output features)."""
    from tvm import relax
    g = ctx.g
    a = g.nodes[name]["attrs"]
    (src,) = inputs_of(g, name)
    (k,) = g.nodes[src]["shape"]
    (j,) = g.nodes[name]["shape"]
    plan = plan_linear(ctx.batch, j, lanes)
    key = ("linear", ctx.batch, k, j, plan, bool(a.bias))
    if key not in cache:
        fname = f"linear{len(cache)}_{j}x{k}"
        func = linear_func(ctx.batch, k, j, plan, bool(a.bias))
        cache[key] = bb.add_func(func.with_attr("global_symbol", fname)
                                 .with_attr("op_pattern", 8), fname)
    args = [values[src], ctx.param(f"{name}.weight", pack_linear(ctx.weight(f"{name}.weight"),
                                                                 plan))]
    if a.bias:
        args.append(ctx.param(f"{name}.bias", ctx.weight(f"{name}.bias")))
    return relax.call_tir(cache[key], args, relax.TensorType((ctx.batch, j), "float32"))


def lower(arch, weights: dict, batch: int = 1, lanes: int | None = None,
          tunable: bool = False, shared: bool = True, plans: dict | None = None) -> Lowered:
    """Lower a validated Arch with a state_dict (torch tensors or numpy arrays).

    lanes: the host's float32 SIMD width; when given, convolutions (with their bias,
    residual add and ReLU) become resdsl's hand-scheduled CPU kernels (llvm target);
    tunable: leave those kernels unscheduled, for MetaSchedule; shared: one kernel for
    the 1x1 convolutions that differ only in their input channels (symbolic there),
    else one per shape (as tuning and the benchmark's per-kernel timing need); plans:
    blockings chosen by `resdsl tune --knobs`, by task key, instead of the cost model's."""
    from tvm import relax
    report = check_weights(arch, weights)
    if not report.ok:
        raise ResdslError(report.render("the weights"))
    g = arch.graph
    require_ops(g, LOWER, UNSUPPORTED, "tvm")
    if batch < 1:
        raise ResdslError(f"batch must be at least 1, got {batch}")
    ctx = _Ctx(arch, weights, batch)
    in_shape = (batch, *arch.input_shape)
    x = relax.Var("x", relax.TensorType(in_shape, "float32"))
    folds = _folds(g)
    fusions = _fusions(g, folds) if lanes else {}
    inside = {m: f for f in fusions.values() for m in f.members if m != f.tail}
    concats = _concat_fusions(g, set(inside) | set(fusions)) if lanes else {}
    for fc in concats.values():
        inside.update({m: fc for m in (fc.concat, fc.bn, fc.relu) if m and m != fc.tail})
    cache: dict = {}
    bb = relax.BlockBuilder()
    ctx.lanes, ctx.bb, ctx.shared, ctx.plans = lanes, bb, shared, dict(plans or {})
    ctx.fold_bn = _bn_prologues(ctx, concats, fusions, tunable)
    plain = _plain_prologues(ctx, fusions, set(inside) | set(fusions) | set(concats), folds,
                             tunable) if lanes else {}
    inside.update({bn: None for tail, bn in plain.items() if bn != tail})
    # parameters are created while lowering; build the body first, then the signature
    values: dict[str, Any] = {}
    with bb.function("main"):
        with bb.dataflow():
            for name in topo_order(g):
                d = g.nodes[name]
                if d["op"] == "input":
                    values[name] = x
                    continue
                if name in plain:   # the batch norm [and ReLU] the next 1x1 applies
                    bn = plain[name]
                    scale, shift = ctx.bn_affine(bn)
                    (src,) = inputs_of(g, bn)
                    ctx.prologues[name] = (ctx.param(f"{bn}.scale", scale),
                                           ctx.param(f"{bn}.shift", shift), name != bn,
                                           g.nodes[src]["shape"][0])
                    values[name] = values[src]
                    continue
                if name in fusions:
                    call = _emit_kernel(ctx, bb, fusions[name], values, lanes, cache,
                                        tunable)
                    if call is not None:
                        values[name] = bb.emit(call, name_hint=name.replace(".", "_"))
                        continue
                    for member in fusions[name].members[:-1]:   # kernel does not fit
                        _emit_plain(ctx, bb, member, values, folds)
                elif name in concats:
                    values[name] = bb.emit(_emit_concat(ctx, bb, concats[name], values, cache),
                                           name_hint=name.replace(".", "_"))
                    if name in ctx.prologues:   # the step's value is the chain's buffer
                        ctx.chains[concats[name].chain] = values[name]
                    continue
                elif name in inside:
                    continue
                elif lanes and d["op"] == "linear":
                    values[name] = bb.emit(_emit_linear(ctx, bb, name, values, lanes, cache),
                                           name_hint=name.replace(".", "_"))
                    continue
                _emit_plain(ctx, bb, name, values, folds)
            out = bb.emit_output(values[g.graph["outputs"][0]])
        names = list(ctx.params)
        bb.emit_func_output(out, params=[x] + [ctx.vars[n] for n in names])
    mod = bb.get()
    return Lowered(mod, names, ctx.params, in_shape, (batch, *arch.output_shape),
                   sorted(folds.values()), ctx.convs, ctx.conv_calls)
