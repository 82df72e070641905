"""Lift an nn.Module into a spec: `resdsl.from_torch` and `resdsl import`.

>>> import torchvision, torch
>>> text = resdsl.from_torch(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
>>> resdsl.loads(text).to_torch().load_state_dict(torchvision.models.resnet18().state_dict())
<All keys matched successfully>

How: torch.fx traces the module with a tracer that records, for every node, the stack of
(non-leaf) modules it was created in. That gives a tree of *scopes*, one per module
instance, each a small dataflow graph of items (an op, or a call into a child scope). A
scope is written as

- the model, for the root;
- `dense(...)`, for a scope whose children are layers of one block fed the concatenation
  of the input and every earlier layer's output (torchvision's `_DenseBlock`);
- a group `(a -> b -> ...)` or, when its children are instances of one block,
  `stage(b(...), n=N, first={...})`, for a plain `nn.Sequential`;
- a `block` call for anything else: the instances of one class are *anti-unified*: their
  bodies, printed with every number left as a hole, must read the same; the holes that
  differ become block parameters (`planes`, `stride`, ...), channel counts that are a
  fixed multiple of another become `planes * 4`, and a residual operand that is a
  projection in some instances and the identity in others becomes `shortcut(...)`.

Names taken from the module (class and attribute names) are checked to be labels or
identifiers before they reach the spec; anything the language cannot say stops with a
ResdslError naming the module's qualified name.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from resdsl.errors import ResdslError

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# the language's words: never a label or name; its ops and combinators: never a block
_KEYWORDS = {"use", "block", "model", "input", "return", "if", "then", "else", "true",
             "false", "and", "or", "not", "in"}
_RESERVED = _KEYWORDS | {"conv", "bn", "relu", "maxpool", "avgpool",
             "global_avgpool", "flatten", "linear", "dropout", "add", "concat", "zeropad",
             "sigmoid", "silu", "gelu", "hardsigmoid", "tanh", "leaky_relu", "identity",
             "mul", "gn", "channel_conv", "slice", "drop_path", "branch_softmax",
             "stage", "dense", "paths", "shortcut", "floor", "ceil", "round", "int", "min",
             "max", "abs", "len", "log2"}


def _show(name: str) -> str:
    """A module-given name as it may appear in a message: plain, or escaped."""
    if name == "":
        return "the model itself"
    return f"`{name}`" if re.fullmatch(r"[\w.]{1,200}", name, re.ASCII) else ascii(name)[:200]


def _fail(qname: str, what: str, hint: str | None = None) -> ResdslError:
    return ResdslError(f"cannot import {_show(qname)}: {what}", hint=hint or
                       "the importer knows the ops conv, bn, gn, relu, sigmoid, silu, gelu, "
                       "hardsigmoid, tanh, leaky_relu, maxpool, avgpool, global_avgpool, "
                       "flatten, linear, dropout, drop_path, channel_conv, identity, add, "
                       "mul and concat (docs/language.md, docs/tools.md)")


def _label_ok(name: str) -> bool:
    return bool(_IDENT.fullmatch(name)) and name not in _KEYWORDS


def _snake(cls: type, qname: str) -> str:
    raw = cls.__name__
    if not isinstance(raw, str) or not _IDENT.fullmatch(raw.lstrip("_") or "?"):
        raise _fail(qname, f"its class name {ascii(raw)[:80]} is not a valid block name",
                    hint="rename the class to a plain identifier")
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", raw.lstrip("_")).lower()
    return s + "_block" if s in _RESERVED else s


# ---- holes: the numbers of a template -------------------------------------------------

@dataclass
class Hole:
    """A number in a template. `prefix` is the text before it (`, s=`); rendered as ""
    when its value is `default` (the op's own default)."""

    kind: str          # "channels", "stride", "groups", "n" or "other"
    value: Any
    hint: str
    prefix: str = ""
    default: Any = None
    tag: str = ""      # what `fmt` writes around the value: part of the template's key
    fmt: Callable[[str | None, Any], str] | None = None   # the text for (expr, value)


@dataclass
class Skip:
    """A residual operand: a projection (its parts) or None for the identity."""

    proj: list | None


SKIPREF = object()   # where the add names its residual operand: `skip` or `in`


def _lit(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ResdslError(f"a constant {v} cannot be written in a spec")
        return repr(v)
    return str(int(v))


# ---- ops: a table from module class / function to (op, hole list) ----------------------

def _pair(v, qname: str, what: str):
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise _fail(qname, f"its {what} {tuple(v)} is not square",
                        hint="the language's conv and pooling take one size for H and W")
        v = v[0]
    if not isinstance(v, int):
        raise _fail(qname, f"its {what} {ascii(v)[:40]} is not a whole number")
    return v


def _conv(m: nn.Conv2d, q: str, label: str) -> tuple[str, list]:
    if type(m) is not nn.Conv2d or m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise _fail(q, f"{type(m).__name__} with padding {m.padding!r}/{m.padding_mode!r} "
                       "is not the language's conv (2-d, numeric zero padding)")
    k, s = _pair(m.kernel_size, q, "kernel size"), _pair(m.stride, q, "stride")
    p, d = _pair(m.padding, q, "padding"), _pair(m.dilation, q, "dilation")
    return "conv", [Hole("channels", m.out_channels, "planes"),
                    Hole("other", k, f"{label}_k", ", k="),
                    Hole("stride", s, "stride", ", s=", 1),
                    Hole("other", p, f"{label}_p", ", p=", 0),
                    Hole("other", d, f"{label}_d", ", d=", 1),
                    Hole("groups", m.groups, "groups", ", groups=", 1),
                    Hole("other", m.bias is not None, f"{label}_bias", ", bias=", False)]


def _bn(m: nn.BatchNorm2d, q: str, label: str) -> tuple[str, list]:
    if not (m.affine and m.track_running_stats) or m.momentum is None:
        raise _fail(q, "a BatchNorm2d without affine parameters, running statistics or "
                       "momentum is not the language's bn")
    return "bn", [Hole("other", float(m.eps), f"{label}_eps", "eps=", 1e-5),
                  Hole("other", float(m.momentum), f"{label}_momentum", ", momentum=", 0.1)]


def _pool(op: str):
    def make(m, q: str, label: str) -> tuple[str, list]:
        if op == "maxpool" and (_pair(m.dilation, q, "dilation") != 1 or m.return_indices):
            raise _fail(q, "a dilated max pooling or one returning indices")
        if op == "avgpool" and m.divisor_override:
            raise _fail(q, "average pooling with a divisor_override")
        k = _pair(m.kernel_size, q, "kernel size")
        holes = [Hole("other", k, f"{label}_k", "k="),
                 Hole("stride", _pair(m.stride or k, q, "stride"), "stride", ", s=", k),
                 Hole("other", _pair(m.padding, q, "padding"), f"{label}_p", ", p=", 0),
                 Hole("other", bool(m.ceil_mode), f"{label}_ceil", ", ceil_mode=", False)]
        if op == "avgpool":
            holes.append(Hole("other", bool(m.count_include_pad), f"{label}_count_pad",
                              ", count_include_pad=", True))
        return op, holes
    return make


def _gn(m: nn.GroupNorm, q: str, label: str) -> tuple[str, list]:
    if not m.affine:
        raise _fail(q, "a GroupNorm without affine parameters is not the language's gn")
    return "gn", [Hole("other", int(m.num_groups), f"{label}_groups"),
                  Hole("other", float(m.eps), f"{label}_eps", ", eps=", 1e-5)]


def _plain(op: str):
    return lambda m, q, label: (op, [])


def _gelu(m, q: str, label: str) -> tuple[str, list]:
    if getattr(m, "approximate", "none") != "none":
        raise _fail(q, f"GELU with approximate={ascii(m.approximate)[:20]} (the language's "
                       "gelu is the exact, erf form)")
    return "gelu", []


def _leaky(m: nn.LeakyReLU, q: str, label: str) -> tuple[str, list]:
    return "leaky_relu", [Hole("other", float(m.negative_slope), f"{label}_slope",
                               "slope=", 0.01)]


def _channel_conv(m: nn.Conv1d, q: str, label: str) -> tuple[str, list]:
    if type(m) is not nn.Conv1d or (m.in_channels, m.out_channels, m.groups) != (1, 1, 1) \
            or m.bias is not None or m.padding_mode != "zeros" or \
            isinstance(m.padding, str) or m.stride != (1,) or m.dilation != (1,):
        raise _fail(q, "a Conv1d other than one bias-free 1-to-1 channel filter of stride 1 "
                       "(ECA's, the language's channel_conv)")
    return "channel_conv", [Hole("other", m.kernel_size[0], f"{label}_k", "k="),
                            Hole("other", m.padding[0], f"{label}_p", ", p=", -1)]


def _drop_path(m, q: str, label: str) -> tuple[str, list]:
    p = float(getattr(m, "drop_prob", 0.0) or 0.0)
    if not getattr(m, "scale_by_keep", True) and p:
        raise _fail(q, "drop path that does not rescale the kept samples")
    return "drop_path", [Hole("other", p, f"{label}_p", "p=", 0.0)]


def _global(m, q: str, label: str) -> tuple[str, list]:
    if m.output_size not in (1, (1, 1), [1, 1]):
        raise _fail(q, f"adaptive pooling to {m.output_size!r} (only to 1x1: "
                       "global_avgpool)")
    return "global_avgpool", []


def _flatten(m, q: str, label: str) -> tuple[str, list]:
    if (m.start_dim, m.end_dim) != (1, -1):
        raise _fail(q, "a flatten of other dimensions than all but the batch")
    return "flatten", []


def _linear(m: nn.Linear, q: str, label: str) -> tuple[str, list]:
    return "linear", [Hole("channels", m.out_features, "features"),
                      Hole("other", m.bias is not None, f"{label}_bias", ", bias=", True)]


def _dropout(m, q: str, label: str) -> tuple[str, list]:
    return "dropout", [Hole("other", float(m.p), f"{label}_p", "p=", 0.5)]


MODULES: dict[type, Callable[[Any, str, str], tuple[str, list]]] = {
    nn.Conv2d: _conv, nn.BatchNorm2d: _bn,
    nn.ReLU: lambda m, q, label: ("relu", []),
    nn.MaxPool2d: _pool("maxpool"), nn.AvgPool2d: _pool("avgpool"),
    nn.AdaptiveAvgPool2d: _global, nn.Flatten: _flatten, nn.Linear: _linear,
    nn.Dropout: _dropout, nn.GroupNorm: _gn, nn.Conv1d: _channel_conv,
    nn.Sigmoid: _plain("sigmoid"), nn.SiLU: _plain("silu"), nn.GELU: _gelu,
    nn.Hardsigmoid: _plain("hardsigmoid"), nn.Tanh: _plain("tanh"), nn.LeakyReLU: _leaky,
}

# timm's own layers that compute what a torch module (or the language's op) does; matched
# by their defining module and class name, never by anything a model could rename
TIMM_MODULES: dict[tuple[str, str], Callable[[Any, str, str], tuple[str, list]]] = {
    ("timm.layers.norm", "GroupNorm"): _gn,
    ("timm.layers.activations", "Sigmoid"): _plain("sigmoid"),
    ("timm.layers.activations", "Tanh"): _plain("tanh"),
    ("timm.layers.activations", "GELU"): _plain("gelu"),
    ("timm.layers.activations", "HardSigmoid"): _plain("hardsigmoid"),
    ("timm.layers.activations", "Swish"): _plain("silu"),
    ("timm.layers.drop", "DropPath"): _drop_path,
}


def _module_op(m: nn.Module) -> Callable[[Any, str, str], tuple[str, list]] | None:
    """How the language says module `m` (one layer), or None."""
    t = type(m)
    if t in MODULES:
        return MODULES[t]
    fn = TIMM_MODULES.get((getattr(t, "__module__", ""), getattr(t, "__qualname__", "")))
    if fn is _gn and not isinstance(m, nn.GroupNorm):
        return None
    return fn


_ACTIVATIONS = {
    "sigmoid": (torch.sigmoid, torch.sigmoid_, F.sigmoid, "sigmoid", "sigmoid_"),
    "silu": (F.silu,),
    "hardsigmoid": (F.hardsigmoid,),
    "tanh": (torch.tanh, torch.tanh_, F.tanh, "tanh", "tanh_"),
}


def _shape(n: Any) -> tuple[int, ...] | None:
    """The shape ShapeProp recorded for a node (None: not a tensor)."""
    meta = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
    return tuple(int(d) for d in meta.shape) if hasattr(meta, "shape") else None


def _rank(n: Any) -> int:
    shape = _shape(n)
    return -1 if shape is None else len(shape)


def _keepdim(n: fx.Node) -> bool:
    return bool(n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False))


def _vector(shape: tuple[int, ...] | None) -> bool:
    """[N, C], [N, 1, C], [N, C, 1, 1], ...: one vector of values per sample."""
    return shape is not None and len(shape) >= 2 and \
        sum(1 for d in shape[1:] if d != 1) <= 1


def _is_size(n: Any) -> bool:
    """A node that reads a tensor's shape (`x.shape`, `x.size()`, `x.shape[0]`)."""
    if not isinstance(n, fx.Node):
        return False
    if n.op == "call_function" and n.target is getattr and len(n.args) == 2:
        return n.args[1] == "shape"
    if n.op == "call_method" and n.target == "size":
        return True
    return n.op == "call_function" and n.target is operator.getitem and \
        _is_size(n.args[0])


def _is_batch(n: Any) -> bool:
    """`x.shape[0]` or `x.size(0)`: the batch size."""
    if not isinstance(n, fx.Node):
        return False
    if n.op == "call_method" and n.target == "size":
        return (n.args[1:] + (n.kwargs.get("dim"),))[0] == 0
    return n.op == "call_function" and n.target is operator.getitem and \
        n.args[1] == 0 and _is_size(n.args[0]) and not (
            n.args[0].op == "call_method" and len(n.args[0].args) > 1)


_RESHAPES = ("view", "reshape", torch.reshape)
_EXPANDS = ("expand_as", "expand")


def _fn_op(node: fx.Node, q: str) -> tuple[str, list]:
    """The op of a call_function / call_method node (positional tensor inputs apart)."""
    t, args, kw = node.target, node.args, node.kwargs
    if t in (F.relu, torch.relu, torch.relu_, "relu", "relu_"):
        return "relu", []
    for op, fns in _ACTIVATIONS.items():
        if t in fns:
            return op, []
    if t is F.gelu or t == "gelu":
        if kw.get("approximate", args[1] if len(args) > 1 else "none") != "none":
            raise _fail(q, "it calls gelu with the tanh approximation (the language's gelu "
                           "is the exact, erf form)")
        return "gelu", []
    if t is F.leaky_relu:
        slope = kw.get("negative_slope", args[1] if len(args) > 1 else 0.01)
        return "leaky_relu", [Hole("other", float(slope), "slope", "slope=", 0.01)]
    if t in (operator.mul, operator.imul, torch.mul, "mul", "mul_"):
        if len(args) == 2 and all(isinstance(a, fx.Node) for a in args) and not kw:
            return "mul", []
        raise _fail(q, "it multiplies a tensor by a constant (the language's `*` multiplies "
                       "two tensors)")
    if t in (torch.mean, "mean"):
        dims = kw.get("dim", args[1] if len(args) > 1 else None)
        dims = dims if isinstance(dims, (tuple, list)) else (dims,)
        if len(args) >= 1 and {d % 4 for d in dims if isinstance(d, int)} == {2, 3} \
                and len(dims) == 2 and _rank(args[0]) == 4 and "dtype" not in kw:
            return "global_avgpool", []
        raise _fail(q, "it takes a mean over other dimensions than H and W")
    if t in (operator.add, operator.iadd, torch.add, "add", "add_") and len(args) == 2 \
            and all(isinstance(a, fx.Node) for a in args) and kw.get("alpha", 1) == 1:
        return "add", []
    if t is torch.cat and kw.get("dim", args[1] if len(args) > 1 else 0) == 1:
        return "concat", []
    if t in (torch.flatten, "flatten") and \
            (args[1:] + (kw.get("start_dim", 1),))[0] == 1 and kw.get("end_dim", -1) == -1:
        return "flatten", []
    if t is F.adaptive_avg_pool2d and (args[1:] + (kw.get("output_size"),))[0] in \
            (1, (1, 1), [1, 1]):
        return "global_avgpool", []
    if t is F.dropout and not kw.get("inplace", False):
        p = (args[1:] + (kw.get("p", 0.5),))[0]
        return "dropout", [Hole("other", float(p), "drop_p", "p=", 0.5)]
    raise _fail(q, f"it calls {_fname(t)}, which the language has no op for")


def _fname(t: Any) -> str:
    """A call target as a message may show it."""
    name = t if isinstance(t, str) else getattr(t, "__qualname__", None) or str(t)
    return ascii(name)[:80].strip(chr(39))


def _reshape_of(n: fx.Node) -> bool:
    return n.op in ("call_method", "call_function") and n.target in _RESHAPES


def _check_reshape(n: fx.Node, q: str) -> None:
    """A reshape is followed (as no op) only between forms of one channel vector per
    sample, [N, C], [N, 1, C], [N, C, 1, 1] (ECA's views): the language keeps [C, 1, 1]."""
    sizes = n.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    src, out = _shape(n.args[0]), _shape(n)
    ok = not n.kwargs and len(sizes) >= 2 and _is_batch(sizes[0]) and all(
        isinstance(d, int) and not isinstance(d, bool) for d in sizes[1:]) and \
        _vector(src) and _vector(out) and math.prod(src[1:]) == math.prod(out[1:])
    if not ok:
        what = n.target if isinstance(n.target, str) else "reshape"
        raise _fail(q, f"it reshapes a tensor ({what} to {ascii(sizes)[:60]}), other than "
                       "between the forms [N, C], "
                       "[N, 1, C], [N, C, 1, 1] of a channel vector with the batch size read "
                       "from a tensor (x.shape[0])")


def _check_broadcast(n: fx.Node, op: str, q: str) -> None:
    """`+` of equal shapes; `*` of equal shapes or a [N, C, 1, 1] gate and a [N, C, H, W]
    map (an expand_as of the gate looked through)."""
    shapes = []
    for a in n.args[:2]:
        if a.op == "call_method" and a.target in _EXPANDS:
            a = a.args[0]
        shapes.append(_shape(a))
    a, b = shapes
    if a == b:
        return
    if op == "mul" and a and b and len(a) == len(b) == 4 and a[:2] == b[:2] and \
            (a[2:] == (1, 1) or b[2:] == (1, 1)):
        return
    raise _fail(q, f"it {'adds' if op == 'add' else 'multiplies'} tensors of shapes "
                   f"{list(a or ())} and {list(b or ())} (the language broadcasts only a "
                   "[C, 1, 1] gate over a [C, H, W] map, with `*`)")


_MARK = "\x00"


def _switches(root: nn.Module, modules: dict[str, nn.Module]) -> dict[str, Hole]:
    """nn.Sequential positions that hold a strided pooling in some instances of a block and
    an nn.Identity (or no projection at all) in the others (timm's ResNet-D shortcut,
    `downsample.0`): one hole of
    kind stride each, written `(if stride == 1 then identity else avgpool(k=2, s=stride,
    ...))`, so the instances anti-unify and the layers after it keep their positions."""
    spots: dict[tuple, list[str]] = {}
    for qname, m in modules.items():
        parent = qname.rpartition(".")[0]
        if not qname or type(modules.get(parent)) is not nn.Sequential or \
                type(m) not in (nn.Identity, nn.AvgPool2d, nn.MaxPool2d):
            continue
        owner = parent
        while owner and type(modules[owner]) is nn.Sequential:
            owner = owner.rpartition(".")[0]
        rel = qname[len(owner) + 1:] if owner else qname
        spots.setdefault((type(modules[owner]), rel), []).append(qname)
    out: dict[str, Hole] = {}
    count = Counter(type(m) for m in modules.values())
    for (owner_type, _), names in spots.items():
        pools = [q for q in names if type(modules[q]) is not nn.Identity]
        # in every instance: a plain layer (no instance without it to write)
        if len(pools) == count[owner_type] or not pools or \
                len({type(modules[q]) for q in pools}) != 1:
            continue
        texts, strides = set(), {}
        for q in pools:
            op = "avgpool" if type(modules[q]) is nn.AvgPool2d else "maxpool"
            _, holes = _pool(op)(modules[q], q, "x")
            parts = [op, "("] + holes + [")"]
            texts.add(_render(parts, {3: _MARK}))
            strides[q] = holes[1].value
        if len(texts) != 1 or min(strides.values()) < 2:
            continue
        template = texts.pop()

        def fmt(e: str | None, v: Any, template: str = template) -> str:
            if e is None:
                return "identity" if v == 1 else template.replace(_MARK, _lit(v))
            return f"(if {e} == 1 then identity else {template.replace(_MARK, e)})"
        for q in names:
            out[q] = Hole("stride", strides.get(q, 1), "stride", tag=template, fmt=fmt)
    return out


# ---- tracing: nodes with the module stack they were made in ----------------------------

class _Tracer(fx.Tracer):
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = [""]
        self.calls: Counter = Counter()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _module_op(m) is not None or type(m) is nn.Identity or \
            super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        self.calls[name] += 1
        if self.is_leaf_module(m, name):
            return super().call_module(m, forward, args, kwargs)
        self.stack.append(name)
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self.stack.pop()

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        node.meta["resdsl_stack"] = tuple(self.stack)
        return node


# ---- scopes ----------------------------------------------------------------------------

@dataclass
class Item:
    out: fx.Node
    inputs: list[fx.Node]
    op: str | None = None            # an op, or None for a child scope
    holes: list = field(default_factory=list)
    label: str | None = None         # the module's name relative to the scope
    child: Scope | None = None


@dataclass
class Scope:
    qname: str
    module: nn.Module
    items: list[Item] = field(default_factory=list)
    inputs: list[fx.Node] = field(default_factory=list)
    output: fx.Node | None = None
    dense: bool = False               # written as dense(...)
    member: bool = False              # a layer of a dense scope: its input is a list
    block: Block | None = None
    args: dict = field(default_factory=dict)   # this instance's block arguments

    def rel(self, qname: str) -> str:
        return qname[len(self.qname) + 1:] if self.qname else qname


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(n) or n)
    return out


def _build(root: nn.Module, graph: fx.Graph, calls: Counter) -> Scope:
    modules = dict(root.named_modules())
    nodes = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
    outputs = [n for n in graph.nodes if n.op == "output"]
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise _fail("", f"its forward takes {len(placeholders)} inputs; a model has one")
    result = outputs[0].args[0]
    if not isinstance(result, fx.Node):
        raise _fail("", "its forward returns several values; a model returns one tensor")
    alias: dict[fx.Node, fx.Node] = {}     # nn.Identity: its output is its input
    switches = _switches(root, modules)

    def real(n: fx.Node) -> fx.Node:
        while n in alias:
            n = alias[n]
        return n

    def make(qname: str, depth: int, members: list[fx.Node]) -> Scope:
        scope = Scope(qname, modules[qname])
        inside = set(members)
        groups: dict[str, list[fx.Node]] = {}
        order: list[tuple[str, Any]] = []
        for n in members:
            stack = n.meta["resdsl_stack"]
            if len(stack) > depth + 1:
                if stack[depth + 1] not in groups:
                    groups[stack[depth + 1]] = []
                    order.append(("child", stack[depth + 1]))
                groups[stack[depth + 1]].append(n)
            else:
                order.append(("node", n))
        for kind, what in order:
            if kind == "child":
                child = make(what, depth + 1, groups[what])
                rel = scope.rel(what)
                scope.items.append(Item(child.output, child.inputs, child=child, label=rel))
                continue
            n = what
            if _is_size(n):      # used only as a reshape's batch size (checked there)
                other = [u for u in n.users if not _is_size(u) and not _reshape_of(u)]
                if other:
                    raise _fail(qname, "it reads a tensor's shape (x.shape) for "
                                       f"{_fname(other[0].target)}, not only as the batch "
                                       "size of a reshape")
                continue
            raw = _tensor_inputs(n)
            if any(_shape(i) is None for i in raw) and not _reshape_of(n):
                raise _fail(qname, "it reads shapes or indexes tensors "
                                   f"({n.target if isinstance(n.target, str) else 'getitem'})")
            raw = [i for i in raw if _shape(i) is not None]
            ins = [real(i) for i in raw]
            if n.op == "call_module":
                m = modules[n.target]
                label = scope.rel(n.target)
                if n.target in switches:
                    scope.items.append(Item(n, ins, "?switch", [switches[n.target]], label))
                    continue
                if type(m) is nn.Identity:
                    if type(modules[n.target.rpartition(".")[0]]) is nn.Sequential:
                        # it holds a position: the layers after it are numbered past it
                        scope.items.append(Item(n, ins, "identity", [], label))
                    else:
                        alias[n] = ins[0]
                    continue
                make_op = _module_op(m)
                if make_op is None:
                    raise _fail(n.target, f"it is {type(m).__module__}.{type(m).__name__}, "
                                          "which the language has no op for")
                op, holes = make_op(m, n.target, label if _label_ok(label) else "x")
                if op == "drop_path" and holes[0].value == 0:
                    alias[n] = ins[0]        # rate 0: nothing to compute, nothing to load
                    continue
                if op == "channel_conv" and not (len(raw) == 1 and _rank(raw[0]) == 3 and
                                                 _shape(raw[0])[1] == 1):
                    raise _fail(n.target, "a Conv1d applied to other than a [N, 1, C] view "
                                          "of a channel vector (ECA)")
                scope.items.append(Item(n, ins, op, holes, label))
            elif n.op in ("call_function", "call_method"):
                if n.target is operator.getitem or n.target in ("size", "dim"):
                    raise _fail(qname, "it reads shapes or indexes tensors "
                                       f"({n.target if isinstance(n.target, str) else 'getitem'})")
                if _reshape_of(n):
                    _check_reshape(n, qname)
                    alias[n] = ins[0]
                    continue
                if n.target in _EXPANDS:
                    if not all(u.op in ("call_function", "call_method") and u.target in
                               (operator.mul, operator.imul, torch.mul, "mul", "mul_")
                               for u in n.users):
                        raise _fail(qname, f"it expands a tensor ({n.target}) for other than "
                                           "a product")
                    alias[n] = ins[0]
                    continue
                op, holes = _fn_op(n, qname)
                if op in ("add", "mul"):
                    _check_broadcast(n, op, qname)
                if op == "global_avgpool" and n.target in ("mean", torch.mean) and \
                        not _keepdim(n) and not all(_reshape_of(u) for u in n.users):
                    raise _fail(qname, "it takes x.mean((2, 3)) without keepdim for other "
                                       "than a reshape to a channel vector (write "
                                       "keepdim=True)")
                scope.items.append(Item(n, ins, op, holes))
            else:
                raise _fail(qname, f"it uses {n.op} `{n.target}` (a parameter used directly)"
                            if n.op == "get_attr" else f"it has a {n.op} node")
        made = {i.out for i in scope.items}
        seen: list[fx.Node] = []
        for it in scope.items:
            for i in it.inputs:
                if i not in made and i not in seen:
                    seen.append(i)
        scope.inputs = seen
        used_outside = {real(n) for m in nodes if m not in inside and not _is_size(m)
                        for n in _tensor_inputs(m) if _shape(n) is not None}
        used_outside |= {real(result)}
        outs = [it.out for it in scope.items if it.out in used_outside]
        if qname and len(outs) != 1:
            raise _fail(qname, f"it returns {len(outs)} tensors; a block returns one")
        scope.output = outs[0] if outs else (seen[0] if seen else None)
        return scope

    top = make("", 0, nodes)
    top.output = real(result)
    for name, count in calls.items():
        m = modules[name]
        if count > 1 and (_module_op(m) is None or any(True for _ in m.parameters())):
            raise _fail(name, f"it is called {count} times (shared weights); every layer "
                              "of a spec has its own name and parameters")
    return top


# ---- the pieces of scopes written inline -----------------------------------------------

def _is_dense(s: Scope) -> bool:
    kids = s.items[:-1]
    if len(s.items) < 2 or len(s.inputs) != 1 or any(k.child is None for k in kids):
        return False
    last = s.items[-1]
    if last.op != "concat" or last.inputs != [s.inputs[0]] + [k.out for k in kids]:
        return False
    for i, k in enumerate(kids):
        if k.inputs != [s.inputs[0]] + [p.out for p in kids[:i]]:
            return False
        first = k.child.items[0] if k.child.items else None
        if first is None or first.op != "concat" or first.inputs != k.child.inputs:
            return False
    return True


def _mark(s: Scope) -> None:
    for it in s.items:
        if it.child is not None:
            _mark(it.child)
    if s.qname and _is_dense(s):
        s.dense = True
        for it in s.items[:-1]:
            it.child.member = True


def _name_template(qname: str, names: list[str]) -> str | None:
    """The `name=` of stage/dense for children named `names`: None for 0, 1, ...."""
    if names == [str(i) for i in range(len(names))]:
        return None
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]{0,40}?)(\d+)", names[0])
    if m:
        start = int(m.group(2))
        if names == [f"{m.group(1)}{start + i}" for i in range(len(names))]:
            return f'"{m.group(1)}{{i+{start}}}"' if start else f'"{m.group(1)}{{i}}"'
    raise _fail(qname, "its repeated layers are not named 0, 1, ... or NAME1, NAME2, ...")


# ---- templates: a scope's text with its numbers as holes -------------------------------

_ADD_NAMES = ("main", "skip")


def _channels(n: fx.Node) -> int:
    meta = n.meta.get("tensor_meta")
    return int(meta.shape[1]) if meta is not None else -1


def _label(it: Item, s: Scope, position: int | None, loose: set[str]) -> str:
    """`label: ` for an item: its module's name where the name matters (parameters), or
    where it reads well; nothing where a group's position names it."""
    if it.label is None:
        return ""
    if position is not None and it.label == str(position):
        return ""
    weighty = it.child is not None or \
        any(True for _ in s.module.get_submodule(it.label).parameters())
    if _label_ok(it.label) and (weighty or it.label not in loose):
        return it.label + ": "
    if weighty:
        q = f"{s.qname}.{it.label}" if s.qname else it.label
        raise _fail(q, f"its name {_show(it.label)} cannot be a layer label here",
                    hint="a label is an identifier; numbered names (`0`, `1`) come only "
                         "from nn.Sequential positions and stage/dense repetitions")
    return ""


def _call(block: Block, args: dict, first: bool = True) -> list:
    parts: list = [block.name, "("]
    for i, (pname, kind, default) in enumerate(block.params):
        if kind == "channels":
            parts.append(Hole(kind, args[pname], pname, "" if i == 0 else ", "))
        else:
            parts.append(Hole(kind, args[pname], pname, f", {pname}=", default))
    return parts + [")"]


def _layer(it: Item, s: Scope, position: int | None, loose: set[str]) -> list:
    head = _label(it, s, position, loose)
    if it.child is None and it.op == "?switch":
        return [head] + it.holes
    if it.child is None:
        return [head, it.op, "("] + it.holes + [")"] if it.holes else [head, it.op]
    c = it.child
    kids = [k for k in c.items if k.child is not None]
    if c.dense:
        layers = c.items[:-1]
        blocks = {id(k.child.block) for k in layers}
        if len(blocks) != 1 or any(k.child.args != layers[0].child.args for k in layers):
            raise _fail(c.qname, "its dense layers differ; dense(...) repeats one layer")
        name = _name_template(c.qname, [k.label for k in layers])
        return [head, "dense("] + _call(layers[0].child.block, layers[0].child.args) + \
            [Hole("n", len(layers), "n", ", n=")] + \
            ([f", name={name}"] if name else []) + [")"]
    if type(c.module) is not nn.Sequential:
        if c.member:
            raise _fail(c.qname, "it takes a list of tensors outside a dense block")
        return [head] + _call(c.block, c.args)
    chain = c.items and c.items[0].inputs == c.inputs[:1] and len(c.inputs) == 1 and all(
        b.inputs == [a.out] for a, b in zip(c.items, c.items[1:]))
    if not chain or c.output is not c.items[-1].out:
        raise _fail(c.qname, "its layers are not a chain (an nn.Sequential whose forward "
                             "was replaced?)")
    same = len(kids) == len(c.items) and len({id(k.child.block) for k in kids}) == 1 \
        and not any(k.child.dense or type(k.child.module) is nn.Sequential for k in kids)
    if same and all(k.child.args == kids[-1].child.args for k in kids[1:]):
        name = _name_template(c.qname, [k.label for k in kids])
        first = {p: v for p, v in kids[0].child.args.items() if v != kids[-1].child.args[p]}
        parts = [head, "stage("] + _call(kids[-1].child.block, kids[-1].child.args) + \
            [Hole("n", len(kids), "n", ", n=")]
        if first:
            parts.append(", first={")
            for i, (p, v) in enumerate(first.items()):
                kind = next(k for n, k, _ in kids[0].child.block.params if n == p)
                parts += [", " if i else "", f"{p}: ", Hole(kind, v, p)]
            parts.append("}")
        return parts + ([f", name={name}"] if name else []) + [")"]
    inner: list = []
    for i, k in enumerate(c.items):
        inner += ([" -> "] if i else []) + _layer(k, c, i, loose=set())
    return [head, "("] + inner + [")"]


def _body(s: Scope, model: bool = False) -> list:
    """A block's (or the model's) statements as parts."""
    items = list(s.items)
    if s.member:
        if not items or items[0].op != "concat" or items[0].inputs != s.inputs:
            raise _fail(s.qname, "a dense layer must start by concatenating its inputs")
        start, items = items[0].out, items[1:]
    elif len(s.inputs) == 1:
        start = s.inputs[0]
    else:
        raise _fail(s.qname, f"it takes {len(s.inputs)} tensors; a block takes one")
    uses: Counter = Counter(i for it in items for i in it.inputs)
    uses[s.output] += 1
    multi = {i for it in items if it.op in ("add", "concat", "mul") for i in it.inputs}
    loose = {it.op for it in items if it.child is None and it.label is None} | \
        {it.label for it in items if it.label and Counter(
            x.label for x in items)[it.label] > 1}
    # the residual: one add of two tensors, one of them the input or a projection of it
    adds = [it for it in items if it.op == "add"]
    skip_of, proj_item = None, None
    if len(adds) == 1 and len(adds[0].inputs) == 2 and not model:
        a, b = adds[0].inputs
        for cand, other in ((b, a), (a, b)):
            pi = next((it for it in items if it.out is cand), None)
            if cand is start and other is not start:
                skip_of = cand
                break
            if pi is not None and pi.child is not None and pi.inputs == [start] and \
                    uses[cand] == 1:
                skip_of, proj_item = cand, pi
                break
    expr: dict[fx.Node, tuple[list, str]] = {start: (["in"], "name")}
    stmts: list = []
    fresh = iter(f"x{k}" for k in range(1, 10_000))
    for it in items:
        if it is proj_item:
            continue
        if it.op in ("add", "concat", "mul"):
            ops = []
            for i in it.inputs:
                if it.op == "add" and i is skip_of:
                    stmts.append(Skip(_layer(proj_item, s, None, loose) if proj_item else
                                      None))
                    ops.append([SKIPREF])
                else:
                    ops.append(expr[i][0])
            if it.op in ("add", "mul"):
                sign = " + " if it.op == "add" else " * "
                e = [p for k, o in enumerate(ops) for p in ([sign] if k else []) + o]
                expr[it.out] = (e, "sum")
            else:
                e = ["concat("] + [p for k, o in enumerate(ops) for p in
                                   ([", "] if k else []) + o] + [")"]
                expr[it.out] = (e, "name")
        else:
            if len(it.inputs) != 1:
                raise _fail(s.qname, f"its {it.op or 'block'} takes {len(it.inputs)} tensors")
            prev, kind = expr[it.inputs[0]]
            layer = _layer(it, s, None, loose)
            if kind == "sum" and it.op == "relu" and layer[0] == "":
                expr[it.out] = (["relu("] + prev + [")"], "name")
            elif prev == ["in"]:
                expr[it.out] = (layer, "pipe")
            else:
                expr[it.out] = (prev + [" -> "] + layer, "pipe")
        if it.out is not s.output and (uses[it.out] > 1 or it.out in multi):
            name = "main" if skip_of is not None and it.out in adds[0].inputs else next(fresh)
            stmts.append([name, " = "] + expr[it.out][0])
            expr[it.out] = ([name], "name")
    if s.output not in expr or s.output is start:
        raise _fail(s.qname, "it returns its input unchanged")
    out: list = []
    for st in stmts:
        out += [st] if isinstance(st, Skip) else st + ["\n"]
    return out + ([] if model else ["return "]) + expr[s.output][0] + ["\n"]


def _key(parts: list) -> tuple:
    return tuple(p if isinstance(p, str) else ("S",) if isinstance(p, Skip) else
                 ("R",) if p is SKIPREF else ("H", p.kind, p.prefix, repr(p.default), p.tag)
                 for p in parts)


# ---- blocks: instances anti-unified ----------------------------------------------------

@dataclass
class Block:
    name: str
    params: list[tuple[str, str, Any]]     # (name, kind, default or None)
    text: str = ""


def _fill(parts: list, out_channels: int) -> list:
    """A projection as an identity instance would have it: no stride, channels kept."""
    res = []
    for p in parts:
        if isinstance(p, Hole):
            v = out_channels if p.kind == "channels" else 1 if p.kind == "stride" else p.value
            res.append(dataclasses.replace(p, value=v))
        else:
            res.append(p)
    return res


def _flatten_skips(group: list[tuple[Scope, list]]) -> list[list]:
    spots = [i for i, p in enumerate(group[0][1]) if isinstance(p, Skip)]
    flats = [list(t) for _, t in group]
    for j in reversed(spots):
        projs = [t[j].proj for _, t in group]
        real = [p for p in projs if p is not None]
        if real and len({_key(p) for p in real}) != 1:
            raise _fail(group[0][0].qname, "its instances have different projections")
        mode = "identity" if not real else "always" if len(real) == len(projs) else "shortcut"
        for (s, _), flat, proj in zip(group, flats, projs):
            if proj is None and real:
                proj = _fill(real[0], _channels(s.output))
            flat[j:j + 1] = [] if mode == "identity" else \
                ["skip = shortcut("] + proj + [")\n"] if mode == "shortcut" else \
                ["skip = "] + proj + ["\n"]
            for k, p in enumerate(flat):
                if p is SKIPREF:
                    flat[k] = "in" if mode == "identity" else "skip"
    return flats


def _render(parts: list, exprs: dict[int, str] | None = None) -> str:
    out = []
    for i, p in enumerate(parts):
        if isinstance(p, str):
            out.append(p)
        elif p.fmt is not None:
            out.append(p.prefix + p.fmt(exprs.get(i) if exprs else None, p.value))
        elif exprs and i in exprs:
            out.append(p.prefix + exprs[i])
        elif p.value != p.default or p.default is None:
            out.append(p.prefix + _lit(p.value))
    text = "".join(out)
    text = re.sub(r"\(, ", "(", text)
    return re.sub(r"\b([A-Za-z_][A-Za-z0-9_]*)\(\)", r"\1", text)


_CHANNEL_NAMES = ("planes", "width", "channels")


def _unify(name: str, group: list[tuple[Scope, list]]) -> Block:
    flats = _flatten_skips(group)
    holes = [i for i, p in enumerate(flats[0]) if isinstance(p, Hole)]
    vec = {i: tuple(f[i].value for f in flats) for i in holes}
    exprs: dict[int, str] = {}
    params: list[tuple[str, str, Any]] = []
    bases: list[tuple[str, tuple]] = []           # channel parameters and their vectors
    named: dict[tuple, str] = {}
    for i in holes:
        h, v = flats[0][i], vec[i]
        if len(set(v)) == 1:
            continue
        if h.kind == "channels":
            for pname, b in bases:
                if v == b:
                    exprs[i] = pname
                elif all(x % y == 0 for x, y in zip(v, b)) and len({x // y for x, y in
                                                                    zip(v, b)}) == 1:
                    exprs[i] = f"{pname} * {v[0] // b[0]}"
                elif all(y % x == 0 for x, y in zip(v, b)) and len({y // x for x, y in
                                                                    zip(v, b)}) == 1:
                    exprs[i] = f"{pname} // {b[0] // v[0]}"
                else:
                    continue
                break
            else:
                pname = _CHANNEL_NAMES[len(bases)] if len(bases) < 3 else f"c{len(bases) + 1}"
                bases.append((pname, v))
                params.append((pname, "channels", None))
                exprs[i] = pname
            continue
        key = (h.kind, v)
        if key not in named:
            pname = h.hint if _label_ok(h.hint) else "p"
            taken = {p for p, _, _ in params}
            k = 2
            base = pname
            while pname in taken:
                pname, k = f"{base}_{k}", k + 1
            top, count = Counter(v).most_common(1)[0]
            params.append((pname, h.kind, top if count * 2 > len(v) else None))
            named[key] = pname
        exprs[i] = named[key]
    params.sort(key=lambda p: (p[1] != "channels", p[2] is not None))
    for k, (s, _) in enumerate(group):
        s.args = {}
        for i, e in exprs.items():
            if re.fullmatch(r"[a-z_0-9]+", e):
                s.args[e] = vec[i][k]
        for pname, _, _ in params:
            if pname not in s.args:       # only used as a multiple: recover it
                i = next(i for i, e in exprs.items() if e.split(" ")[0] == pname)
                s.args[pname] = vec[i][k]
    block = Block(name, params)
    sig = ", ".join(p if d is None else f"{p} = {_lit(d)}" for p, _, d in params)
    body = _render(flats[0], exprs)
    block.text = f"block {name}({sig}) {{\n" + "".join(
        "    " + line + "\n" for line in body.splitlines()) + "}\n"
    return block


def _height(s: Scope) -> int:
    return 1 + max((_height(it.child) for it in s.items if it.child), default=0)


def _walk(s: Scope):
    for it in s.items:
        if it.child is not None:
            yield from _walk(it.child)
    yield s


# ---- the entry point -------------------------------------------------------------------

def from_torch(module: nn.Module, example_input: torch.Tensor, name: str | None = None,
               *, check: bool = True) -> str:
    """The spec text of a module: blocks for its classes, stage/dense for their runs.

    `example_input` (a batch, e.g. torch.randn(1, 3, 224, 224)) gives the shapes and
    the model's `size`. Raises ResdslError naming the module that the language cannot
    say. With `check`, the spec is elaborated and its state_dict keys and shapes are
    compared with the module's before it is returned.
    """
    from torch.fx.passes.shape_prop import ShapeProp
    qual = "" if name is None else name
    if name is None:
        name = _snake(type(module), "")
    elif not _label_ok(name):
        raise ResdslError(f"{ascii(name)[:80]} is not a valid model name",
                          hint="a model name is an identifier, e.g. resnet50")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        raise ResdslError("the example input must be a batch [N, C, H, W]")
    for qname, _ in module.named_modules():
        # checked before torch.fx generates code from these names, as well as for ours
        if qname and not all(re.fullmatch(r"[A-Za-z0-9_]{1,64}", part)
                             for part in qname.split(".")):
            raise _fail(qname, "its name is not an identifier or a number",
                        hint="layer names in a spec are identifiers (and positions)")
    tracer = _Tracer()
    try:
        graph = tracer.trace(module)
    except ResdslError:
        raise
    except Exception as err:  # noqa: BLE001 -- torch.fx refuses data-dependent control flow and more
        raise _fail(qual, f"torch.fx cannot trace it ({type(err).__name__}: "
                          f"{ascii(str(err).splitlines()[0] if str(err) else '')[1:120]})",
                    hint="make the module traceable by torch.fx (no control flow on "
                         "tensor values)") from None
    gm = fx.GraphModule(module, graph)
    was = module.training
    try:
        module.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    finally:
        module.train(was)
    root = _build(module, graph, tracer.calls)
    _mark(root)
    scopes = [s for s in _walk(root) if s.qname and not s.dense and
              type(s.module) is not nn.Sequential]
    heights = {id(s): _height(s) for s in scopes}
    by_class: dict[type, list[Scope]] = {}
    for s in sorted(scopes, key=lambda s: heights[id(s)]):
        by_class.setdefault(type(s.module), []).append(s)
    order = sorted(by_class, key=lambda c: max(heights[id(s)] for s in by_class[c]))
    blocks: list[Block] = []
    names: set[str] = {name}
    for cls in order:
        inst = by_class[cls]
        for s in inst:
            if any(isinstance(a.module, cls) for a in _walk(s) if a is not s):
                raise _fail(s.qname, "a block that contains an instance of itself")
        base = _snake(cls, inst[0].qname)
        variants: dict[tuple, list] = {}
        for s in inst:
            t = _body(s)
            variants.setdefault(_key(t), []).append((s, t))
        for k, group in enumerate(variants.values()):
            bname = base if k == 0 else f"{base}_{k + 1}"
            while bname in names:
                bname += "_"
            names.add(bname)
            block = _unify(bname, group)
            for s, _ in group:
                s.block = block
            blocks.append(block)
    body = _body(root, model=True)
    last = root.items[-1] if root.items else None
    exprs = {}
    if last is not None and last.op == "linear" and last.out is root.output:
        for i, p in enumerate(body):
            if isinstance(p, Hole) and p in last.holes and p.kind == "channels":
                exprs[i] = "num_classes"
    _, c, h, w = example_input.shape
    params = [("num_classes", last.holes[0].value)] if exprs else []
    params += [("in_chans", c)] + ([("size", h)] if h == w else [])
    sig = ", ".join(f"{p} = {v}" for p, v in params)
    shape = "[in_chans, size, size]" if h == w else f"[in_chans, {h}, {w}]"
    text = _render(body, exprs).replace(" -> ", "\n    -> ")
    model = f"model {name}({sig}) {{\n    input {shape}\n" + "".join(
        "    " + line.strip() + "\n" if not line.startswith("    ->") else line + "\n"
        for line in text.splitlines()) + "}\n"
    src = f"# {name}: written by `resdsl import` from the module's structure\n\n" + \
        "\n".join(b.text for b in blocks) + ("\n" if blocks else "") + model
    from resdsl.fmt import format_text
    src = format_text(src)
    if check:
        _check(src, module, name)
    return src


def _check(src: str, module: nn.Module, name: str) -> None:
    import resdsl
    arch = resdsl.loads(src, f"<import {name}>")
    mine = {k: tuple(v.shape) for k, v in arch.to_torch().state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if mine != theirs:
        diff = sorted(set(mine) ^ set(theirs)) or \
            [k for k in mine if mine[k] != theirs[k]]
        raise ResdslError(f"the imported spec does not reproduce the module: "
                          f"{len(diff)} tensor(s) differ, e.g. {_show(diff[0])}",
                          hint="please report this module's structure")


# ---- `resdsl import` -------------------------------------------------------------------

def build(source: str) -> tuple[nn.Module, str]:
    """The module a `resdsl import` source names, randomly initialised, and its spec
    name: `torchvision:resnet50`, `timm:resnet50` (timm builds it, pretrained=False)."""
    lib, _, name = source.partition(":")
    spec_name = name.split(".")[0]
    if lib not in ("torchvision", "timm") or not _label_ok(spec_name):
        raise ResdslError(f"{ascii(source)[:100]}: expected torchvision:NAME or timm:NAME",
                          hint="e.g. `resdsl import torchvision:resnet50`")
    try:
        if lib == "torchvision":
            import torchvision
            return torchvision.models.get_model(name, weights=None), spec_name
        import timm
        return timm.create_model(name, pretrained=False), spec_name
    except ImportError:
        raise ResdslError(f"{lib} is not installed", hint=f"pip install {lib}") from None
    except (ValueError, RuntimeError, KeyError) as err:
        raise ResdslError(f"{lib} cannot build {ascii(name)[:80]} "
                          f"({ascii(str(err))[1:120]})") from None


def cmd_import(args) -> int:
    """`resdsl import SOURCE [-o FILE] [--force] [--size N]` (argparse namespace)."""
    import os
    import sys
    module, name = build(args.source)
    chans = getattr(module, "in_chans", 3)
    example = torch.randn(1, chans if isinstance(chans, int) else 3, args.size, args.size)
    text = from_torch(module, example, name)
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    from resdsl.atomic import write_text
    exists = ResdslError(f"{args.output} exists; not overwriting it",
                         hint="pass --force to replace it, or choose another -o")
    if os.path.lexists(args.output) and not args.force:
        raise exists
    try:
        write_text(args.output, text, force=args.force)
    except FileExistsError:
        raise exists from None
    print(f"wrote {args.output} (model {name}, {len(text.splitlines())} lines)")
    return 0
