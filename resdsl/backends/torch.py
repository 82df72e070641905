"""IR -> PyTorch: standalone module source, and an nn.Module built from it.

The module is generated Python source (not an interpreter over the graph), so a
forward pass costs what hand-written torchvision code costs, works with
`torch.compile(fullgraph=True)`, `torch.export`, DDP and channels_last, and can be
written out with `resdsl compile SPEC --target torch -o model.py`. Submodules follow
the IR's dotted names, so the reference specs' state_dict keys are torchvision's.

>>> import resdsl, torch
>>> model = resdsl.load("specs/resnet18.arch").to_torch(seed=0).eval()
>>> model(torch.randn(1, 3, 224, 224)).shape
torch.Size([1, 1000])
"""

from __future__ import annotations

import hashlib
import keyword
import linecache
import math
import re
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable

import networkx as nx

from resdsl import __version__
from resdsl import extend
from resdsl.backends import require_ops
from resdsl.errors import ResdslError
from resdsl.ir.graph import inputs_of, topo_order
from resdsl.ir.ops import fmt
from resdsl.weights import check_weights

# ---- the one way a value reaches generated source ------------------------------------

def literal(v: Any) -> str:
    """`v` as a Python literal that evaluates back to `v`: the one escaping function for
    every value that reaches generated source (paths, names, labels, numbers).

    >>> literal("x.arch; import os")
    "'x.arch; import os'"
    >>> literal((3, 224, 224))
    '(3, 224, 224)'
    """
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, int):
        return repr(int(v))
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ResdslError(f"the value {v} cannot be written into PyTorch source")
        return repr(float(v))
    if isinstance(v, str):
        return repr(str(v))
    if isinstance(v, tuple):
        items = [literal(x) for x in v]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    raise TypeError(f"no literal for {type(v).__name__}")  # pragma: no cover


def comment(text: str) -> str:
    """Text for a `#` comment: one line, printable characters only."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))


_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")

# ---- the op table (sqlglot-style): one entry per op ------------------------------------

@dataclass(frozen=True)
class Call:
    """What a table entry sees of one layer: its submodule's expression (ops that own
    parameters), its attributes, its argument variables and their shapes."""

    module: str | None
    attrs: Any
    args: list[str]
    shapes: list[tuple[int, ...]]


@dataclass(frozen=True)
class TorchOp:
    """How one op becomes PyTorch source.

    expr: the forward expression; module: the constructor source, for ops that own
    parameters (f(attrs, input shapes)); fresh: the output is a new tensor nothing else
    aliases, so its sole consumer may update it in place; inplace: this op's in-place
    form, used when its first input is such a tensor (torchvision's ReLU(inplace=True)
    and `out += identity`).
    """

    expr: Callable[[Call], str]
    module: Callable[[Any, list], str] | None = None
    fresh: bool = False
    inplace: Callable[[Call], str] | None = None


def _pool(fn: str) -> Callable[[Call], str]:
    def expr(c: Call) -> str:
        a = c.attrs
        return (f"F.{fn}({c.args[0]}, {literal(a.k)}, {literal(a.stride)}, {literal(a.p)}"
                + (", ceil_mode=True" if a.ceil_mode else "")
                + ("" if getattr(a, "count_include_pad", True) else ", count_include_pad=False")
                + ")")
    return expr


def _zeropad_expr(c: Call) -> str:
    before, after = c.attrs.pads(c.shapes[0][0])
    return (f"_zeropad({c.args[0]}, {literal(before)}, {literal(after)}, "
            f"{literal(c.attrs.s)})")


def _channel_conv_expr(c: Call) -> str:
    x = c.args[0]
    rest = ", 1, 1" if len(c.shapes[0]) == 3 else ""
    return f"{c.module}({x}.view({x}.shape[0], 1, -1)).view({x}.shape[0], -1{rest})"


def _act(fn: str, inplace: bool = True, extra: Callable[[Any], str] = lambda a: "") \
        -> TorchOp:
    """An element-wise activation `F.fn(x, ...)`, with its in-place form where torch has one."""
    return TorchOp(lambda c: f"{fn}({c.args[0]}{extra(c.attrs)})",
                   inplace=(lambda c: f"{fn}({c.args[0]}{extra(c.attrs)}, inplace=True)")
                   if inplace else None)


def _submodule(c: Call) -> str:
    return f"{c.module}({c.args[0]})"


TORCH: dict[str, TorchOp] = {
    "conv": TorchOp(_submodule, fresh=True, module=lambda a, ins: (
        f"nn.Conv2d({literal(ins[0][0])}, {literal(a.out)}, kernel_size={literal(a.k)}, "
        f"stride={literal(a.s)}, padding={literal(a.p)}"
        + (f", dilation={literal(a.d)}" if a.d != 1 else "")
        + (f", groups={literal(a.groups)}" if a.groups != 1 else "")
        + f", bias={literal(a.bias)})")),
    "bn": TorchOp(_submodule, fresh=True, module=lambda a, ins: (
        f"nn.BatchNorm2d({literal(ins[0][0])}"
        + (f", eps={literal(a.eps)}" if a.eps != 1e-5 else "")
        + (f", momentum={literal(a.momentum)}" if a.momentum != 0.1 else "") + ")")),
    "linear": TorchOp(_submodule, fresh=True, module=lambda a, ins: (
        f"nn.Linear({literal(ins[0][0])}, {literal(a.out)}, bias={literal(a.bias)})")),
    "relu": TorchOp(lambda c: f"F.relu({c.args[0]})",
                    inplace=lambda c: f"F.relu({c.args[0]}, inplace=True)"),
    "maxpool": TorchOp(_pool("max_pool2d"), fresh=True),
    "avgpool": TorchOp(_pool("avg_pool2d"), fresh=True),
    "global_avgpool": TorchOp(lambda c: f"F.adaptive_avg_pool2d({c.args[0]}, 1)", fresh=True),
    "flatten": TorchOp(lambda c: f"torch.flatten({c.args[0]}, 1)"),
    "dropout": TorchOp(lambda c: f"F.dropout({c.args[0]}, {literal(c.attrs.p)}, "
                                 "self.training)"),
    "add": TorchOp(lambda c: " + ".join(c.args), fresh=True,
                   inplace=lambda c: c.args[0] + "".join(f".add_({a})" for a in c.args[1:])),
    "concat": TorchOp(lambda c: f"torch.cat([{', '.join(c.args)}], 1)", fresh=True),
    "zeropad": TorchOp(_zeropad_expr),
    "sigmoid": TorchOp(lambda c: f"torch.sigmoid({c.args[0]})", fresh=True),
    "silu": _act("F.silu"),
    "gelu": _act("F.gelu", inplace=False),
    "hardsigmoid": _act("F.hardsigmoid"),
    "tanh": TorchOp(lambda c: f"torch.tanh({c.args[0]})", fresh=True),
    "leaky_relu": _act("F.leaky_relu", extra=lambda a: f", {literal(a.slope)}"),
    "identity": TorchOp(lambda c: c.args[0]),
    "mul": TorchOp(lambda c: f"{c.args[0]} * {c.args[1]}", fresh=True),
    "gn": TorchOp(_submodule, fresh=True, module=lambda a, ins: (
        f"nn.GroupNorm({literal(a.groups)}, {literal(ins[0][0])}"
        + (f", eps={literal(a.eps)}" if a.eps != 1e-5 else "") + ")")),
    "channel_conv": TorchOp(_channel_conv_expr, fresh=True, module=lambda a, ins: (
        f"nn.Conv1d(1, 1, kernel_size={literal(a.k)}, padding={literal(a.pad)}, "
        "bias=False)")),
    "slice": TorchOp(lambda c: f"{c.args[0]}[:, {literal(c.attrs.start)}:"
                               f"{literal(c.attrs.stop)}]"),
    "drop_path": TorchOp(lambda c: c.args[0] if c.attrs.p == 0 else
                         f"_drop_path({c.args[0]}, {literal(c.attrs.p)}, self.training)"),
    "branch_softmax": TorchOp(lambda c: f"_branch_softmax({c.args[0]}, {literal(c.attrs.n)}, "
                                        f"{literal(c.attrs.card)})", fresh=True),
}

# op -> why the torch backend cannot express it (shown to the user)
UNSUPPORTED: dict[str, str] = {}


def _owns_module(op: str) -> bool:
    return op in TORCH and TORCH[op].module is not None


def _fresh(op: str) -> bool:
    return op in TORCH and TORCH[op].fresh


_RESERVED = set(dir(__import__("torch").nn.Module)) | {"memory_efficient"}

_PRELUDE = '''
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp


class _Scope(nn.ModuleDict):
    """A group of layers (a block instance, a stage): it only namespaces its children,
    so that state_dict keys follow the spec's dotted names."""


def _zeropad(x, before: int, after: int, stride: int):
    """Option-A shortcut: keep every `stride`-th pixel, add zero channels around them."""
    if stride != 1:
        x = x[:, :, ::stride, ::stride]
    return F.pad(x, (0, 0, 0, 0, before, after))


def _drop_path(x, p: float, training: bool):
    """Stochastic depth: in training, zero whole samples with probability p and scale the
    kept ones by 1 / (1 - p) (timm's drop_path); the identity in eval."""
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


def _branch_softmax(x, n: int, card: int):
    """Softmax across n branches: channels viewed as [card, n, K], normalised over n,
    laid out as [n, card, K] (timm's rSoftMax; card=1 is selective kernel's)."""
    b = x.shape[0]
    return x.reshape(b, card, n, -1).transpose(1, 2).softmax(1).reshape(x.shape)


def _concat_norm_relu_conv(norm, conv, memory_efficient: bool, *features):
    """A dense layer's input: concatenate, normalise, ReLU, 1x1 conv. With
    memory_efficient, recompute it in backward instead of storing the concatenation."""
    def bottleneck(*xs):
        return conv(F.relu(norm(torch.cat(xs, 1))))
    if memory_efficient and any(t.requires_grad for t in features):
        return cp.checkpoint(bottleneck, *features, use_reentrant=False)
    return bottleneck(*features)


def _init(module: nn.Module, zero_init: tuple = ()) -> None:
    """torchvision's initialisation: Kaiming-normal (fan_out) convolutions, batch norm
    weight 1 and bias 0, nn.Linear's default; `zero_init` names batch norms to zero
    (the last of each residual branch), so every block starts as the identity."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 0.0 if name in zero_init else 1.0)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            m.reset_parameters()
'''


_REGISTERED_PRELUDE = '''


def _registered_module(name: str, attrs: dict, shapes: tuple) -> nn.Module:
    """A layer of an op registered with resdsl.register_op (in this process)."""
    from resdsl.extend import torch_module
    return torch_module(name, attrs, shapes)'''


# model-name prefixes -> the class torchvision/timm would use for that family
_FAMILIES = [("densenet", "DenseNet"), ("preact_resnet", "PreActResNet"),
             ("resnext", "ResNet"), ("wide_resnet", "ResNet"), ("resnet", "ResNet"),
             # timm builds its variants on its ResNet class
             ("seresne", "ResNet"), ("ecaresnet", "ResNet"), ("res2ne", "ResNet"),
             ("skresne", "ResNet"), ("resnest", "ResNet")]


def class_name(model: str) -> str:
    """The generated class's name: the family's, as torchvision names it (`resnet50`,
    `resnext50_32x4d` -> `ResNet`, `densenet121` -> `DenseNet`), else the model's name in
    CamelCase (`my_net` -> `MyNet`)."""
    for prefix, family in _FAMILIES:
        if model.lower().startswith(prefix):
            return family
    name = "".join(part[:1].upper() + part[1:] for part in
                   re.sub(r"[^0-9A-Za-z_]", "_", model).split("_"))
    return name if name.isidentifier() and not keyword.iskeyword(name) else f"Model_{name}"


def _attach(holder: str, leaf: str, ctor: str) -> str:
    """The statement that registers a submodule: `self.conv1 = ...` where that is plain,
    else `holder.add_module('0', ...)`."""
    if holder == "self" and _plain(leaf):
        return f"self.{leaf} = {ctor}"
    return f"{holder}.add_module({literal(leaf)}, {ctor})"


def _plain(part: str) -> bool:
    return part.isidentifier() and part not in _RESERVED and not keyword.iskeyword(part)


def _access(path: str) -> str:
    """Python expression for the submodule at a dotted path, e.g. self.layer1["0"].conv1."""
    parts = path.split(".")
    out = "self." + parts[0] if _plain(parts[0]) else f"getattr(self, {literal(parts[0])})"
    for p in parts[1:]:
        out += f".{p}" if _plain(p) else f"[{literal(p)}]"
    return out


@dataclass
class _Pattern:
    """A concat -> bn -> relu -> 1x1 conv chain: a dense layer's bottleneck input."""

    concat: str
    norm: str
    relu: str
    conv: str


def _dense_bottlenecks(g: nx.MultiDiGraph) -> dict[str, _Pattern]:
    found: dict[str, _Pattern] = {}
    for name, d in g.nodes(data=True):
        if d["op"] != "concat":
            continue
        chain = [name]
        for want in ("bn", "relu", "conv"):
            succ = list(g.successors(chain[-1]))
            if len(succ) != 1 or g.out_degree(chain[-1]) != 1 or g.nodes[succ[0]]["op"] != want:
                break
            chain.append(succ[0])
        if len(chain) == 4 and g.nodes[chain[3]]["attrs"].k == 1:
            found[chain[3]] = _Pattern(*chain)
    return found


def residual_bns(g: nx.MultiDiGraph) -> list[str]:
    """The last batch norm of each residual branch: for every add, the input whose branch
    has more layers of its own (not the shortcut), if it is a batch norm."""
    out = []
    for name, d in g.nodes(data=True):
        if d["op"] != "add":
            continue
        ins = inputs_of(g, name)
        ancestors = [nx.ancestors(g, i) | {i} for i in ins]
        common = set.intersection(*ancestors)
        own = [len(a - common) for a in ancestors]
        branch = ins[max(range(len(ins)), key=lambda k: own[k])]
        if g.nodes[branch]["op"] == "bn" and own.count(max(own)) == 1:
            out.append(branch)
    return out


def _check_names(g: nx.MultiDiGraph) -> None:
    for name, d in g.nodes(data=True):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ResdslError(f"layer name {str(name)[:60]!r} is not a dotted name",
                              d.get("span"), hint="names are letters, digits and `_`, "
                                                  "joined by `.`")
        if _owns_module(d["op"]):
            for part in name.split("."):
                if part in _RESERVED and part == name.split(".")[0]:
                    raise ResdslError(f"layer name `{part}` clashes with an nn.Module "
                                      "attribute", d.get("span"),
                                      hint="rename the layer (e.g. add a suffix)")


class _Vars:
    """Allocates forward-local variable names; a dead variable's name is reused."""

    def __init__(self) -> None:
        self.free: list[str] = []
        self.count = 0

    def take(self) -> str:
        if self.free:
            self.free.sort(key=lambda v: (len(v), v))
            return self.free.pop(0)
        name = "x" if self.count == 0 else f"x{self.count}"
        self.count += 1
        return name

    def release(self, name: str) -> None:
        self.free.append(name)


@dataclass
class Head:
    """What follows the last spatial layer: pooling, flatten, dropout, the classifier."""

    features: str      # the last node of forward_features
    nodes: list[str]   # the head's nodes, in order
    pre_logits: str    # the classifier's input
    classifier: str    # the last linear layer
    num_features: int
    num_classes: int


HEAD_OPS = {"global_avgpool", "flatten", "dropout", "linear"}


def classifier_head(g: nx.MultiDiGraph) -> Head | None:
    """The head of a network (timm's view: forward_features, then pooling and the
    classifier), or None when the output is not a linear layer after such a chain."""
    outputs = g.graph.get("outputs", [])
    if len(outputs) != 1 or g.nodes[outputs[0]]["op"] != "linear":
        return None
    nodes: list[str] = []
    n = outputs[0]
    while g.nodes[n]["op"] in HEAD_OPS and g.in_degree(n) == 1 and \
            (n == outputs[0] or g.out_degree(n) == 1):
        nodes.insert(0, n)
        n = inputs_of(g, n)[0]
    if g.nodes[n]["op"] == "input":
        return None
    classifier = outputs[0]
    pre = inputs_of(g, classifier)[0]
    return Head(n, nodes, pre, classifier, g.nodes[pre]["shape"][0],
                g.nodes[classifier]["shape"][0])


def _after(g: nx.MultiDiGraph, node: str) -> set[str]:
    return nx.descendants(g, node)


def _emit(g: nx.MultiDiGraph, nodes: list[str], given: dict[str, str], returns: list[str],
          patterns: dict, fused: set[str]) -> list[str]:
    """Statements computing `nodes` (in order) from the tensors in `given` (node -> local
    variable), ending with the return of `returns`; variables are reused once dead."""
    inside = set(nodes)
    uses = {n: sum(1 for s in g.successors(n) for _ in range(g.number_of_edges(n, s))
                   if s in inside) for n in [*given, *nodes]}
    keep = set(returns) | set(given)   # never released, never updated in place
    vars_ = _Vars()
    var: dict[str, str] = {}
    for node, name in given.items():
        var[node] = name   # "x" or "x<k>": later names are numbered after it
        vars_.count = max(vars_.count, int(name[1:] or 0) + 1)
    body: list[str] = []
    scope_shown = None
    for name in nodes:
        d = g.nodes[name]
        if name in fused:
            continue
        ins = inputs_of(g, name)
        scope = d.get("scope") or ""
        if scope != scope_shown:
            if scope:
                body.append(f"# {comment(scope)}: {comment(d.get('block', ''))}")
            scope_shown = scope
        if name in patterns:
            p = patterns[name]
            feats = inputs_of(g, p.concat)
            expr = (f"_concat_norm_relu_conv({_access(p.norm)}, {_access(name)}, "
                    f"self.memory_efficient, {', '.join(var[f] for f in feats)})")
            consumed = feats
        else:
            entry = TORCH[d["op"]]
            call = Call(_access(name) if entry.module else None, d["attrs"],
                        [var[i] for i in ins], [g.nodes[i]["shape"] for i in ins])
            expr = entry.expr(call)
            first = ins[0] if ins else None
            if entry.inplace and first is not None and uses.get(first) == 1 \
                    and g.out_degree(first) == 1 and first not in keep \
                    and _fresh(g.nodes[first]["op"]) and ins.count(first) == 1:
                expr = entry.inplace(call)
            consumed = ins
        pending: list[str] = []
        for i in consumed:
            uses[i] -= 1
            if uses[i] == 0 and i not in keep and var[i] not in pending:
                pending.append(var[i])
        for v in pending:
            vars_.release(v)
        var[name] = vars_.take()
        body.append(f"{var[name]} = {expr}  # {comment(name)} {fmt(d['shape'])}")
    body.append("return " + ", ".join(var[o] for o in returns))
    return body


def _docstring(text: str) -> str:
    """A module docstring holding `text` verbatim: triple-quoted and readable when the
    text is plain, else the escaped literal (a file name may hold any character)."""
    plain = all(ch.isprintable() or ch == "\n" for ch in text) and '"' not in text \
        and "\\" not in text
    return f'"""{text}\n"""' if plain else literal(text)


def to_source(arch, class_name_: str | None = None) -> str:
    """Standalone PyTorch source for `arch`: imports only torch, defines one nn.Module."""
    g = arch.graph
    cls = class_name(class_name_ or arch.name)
    require_ops(g, TORCH, UNSUPPORTED, "torch")
    _check_names(g)
    order = topo_order(g)
    patterns = _dense_bottlenecks(g)
    fused = {p.concat for p in patterns.values()} | {p.norm for p in patterns.values()} | \
        {p.relu for p in patterns.values()}
    zero = residual_bns(g)

    # __init__: scopes first (parents before children), then modules in graph order
    init: list[str] = []
    scopes: set[str] = set()
    for name in order:
        d = g.nodes[name]
        if not _owns_module(d["op"]):
            continue
        parts = name.split(".")
        for k in range(1, len(parts)):
            scope = ".".join(parts[:k])
            if scope not in scopes:
                scopes.add(scope)
                parent, _, leaf = scope.rpartition(".")
                holder = _access(parent) if parent else "self"
                init.append(_attach(holder, leaf, "_Scope()"))
        ins = [g.nodes[s]["shape"] for s in inputs_of(g, name)]
        parent, _, leaf = name.rpartition(".")
        ctor = TORCH[d["op"]].module(d["attrs"], ins)
        init.append(_attach(_access(parent) if parent else "self", leaf, ctor))

    # forward = forward_head(forward_features(x)), timm's classifier API
    head = classifier_head(g)
    inp = g.graph["inputs"][0]
    feats_out = head.features if head else g.graph["outputs"][0]
    head_nodes = set(head.nodes) if head else set()
    feature_order = [n for n in order if n not in head_nodes and n != inp]
    features_body = _emit(g, feature_order, {inp: "x"}, [feats_out], patterns, fused)
    if head:
        pre_order = [n for n in order if n in head_nodes and n != head.classifier
                     and n not in _after(g, head.classifier)]
        post_order = [n for n in order if n == head.classifier or n in _after(g, head.classifier)]
        pre = _emit(g, pre_order, {head.features: "x"}, [head.pre_logits], patterns, fused)
        pre_var = pre[-1].split("return ", 1)[1]
        post = _emit(g, post_order, {head.pre_logits: pre_var}, g.graph["outputs"], patterns,
                     fused)
        head_body = pre[:-1] + ["if pre_logits:", f"    return {pre_var}"] + post
    else:
        head_body = ["return x"]

    src_hash = arch.spec_hash()
    zero_init = tuple(zero)
    doc = "\n".join([
        f"{arch.name}: generated by resdsl {__version__} from "
        f"{arch.path or 'a spec string'} (spec hash {src_hash}).",
        "",
        f"Input: a float tensor [N, {', '.join(map(str, arch.input_shape))}]; output: "
        f"[N, {', '.join(map(str, arch.output_shape))}]. "
        f"{arch.num_params():,} parameters, {arch.macs():,} MACs per sample.",
        "This file imports only torch.",
    ])
    registered = sorted({d["op"] for _, d in g.nodes(data=True)} & set(extend.REGISTERED))
    if registered:
        doc = doc.replace("This file imports only torch.",
                          "It uses ops registered with resdsl.register_op "
                          f"({', '.join(registered)}): import resdsl and register them "
                          "before loading it.")
    lines = [
        _docstring(doc),
        _PRELUDE.rstrip() + (_REGISTERED_PRELUDE if registered else ""),
        "",
        "",
        f"class {cls}(nn.Module):",
        f"    input_shape = {literal(tuple(arch.input_shape))}",
        f"    zero_init_bns = {literal(zero_init)}",
        f"    classifier_name = {literal(head.classifier if head else '')}",
        "",
        "    def __init__(self, memory_efficient: bool = False, "
        "zero_init_residual: bool = False) -> None:",
        "        super().__init__()",
        "        self.memory_efficient = memory_efficient",
        f"        self.num_classes = {literal(head.num_classes if head else 0)}",
        f"        self.num_features = {literal(head.num_features if head else 0)}",
        *[f"        {s}" for s in init],
        "        self.reset_parameters(zero_init_residual)",
        "",
        "    def reset_parameters(self, zero_init_residual: bool = False) -> None:",
        "        _init(self, self.zero_init_bns if zero_init_residual else ())",
        "",
        "    def forward_features(self, x: torch.Tensor) -> torch.Tensor:",
        *[f"        {s}" for s in features_body],
        "",
        "    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:",
        *[f"        {s}" for s in head_body],
        "",
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
        "        return self.forward_head(self.forward_features(x))",
        "",
        "    def get_classifier(self) -> nn.Module:",
        "        return self.get_submodule(self.classifier_name) if self.classifier_name "
        "else nn.Identity()",
        "",
        "    def reset_classifier(self, num_classes: int) -> None:",
        "        \"\"\"A new classifier for `num_classes` outputs (0: none, the head returns "
        "the pooled features).\"\"\"",
        "        if not self.classifier_name:",
        "            raise ValueError(\"this network has no classifier to reset\")",
        "        fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()",
        "        parent, _, leaf = self.classifier_name.rpartition(\".\")",
        "        holder = self.get_submodule(parent) if parent else self",
        "        holder._modules[leaf] = fc",
        "        self.num_classes = num_classes",
        "",
    ]
    return "\n".join(lines)


def load_source(source: str, cls: str, tag: str) -> type:
    """Execute generated source as an importable module and return its model class."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    modname = f"resdsl_generated.{re.sub(r'[^0-9A-Za-z_]', '_', tag)}_{digest}"
    if modname in sys.modules:
        return getattr(sys.modules[modname], cls)
    filename = f"<resdsl:{tag}:{digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(modname)
    module.__file__ = filename
    if "resdsl_generated" not in sys.modules:
        sys.modules["resdsl_generated"] = types.ModuleType("resdsl_generated")
    sys.modules[modname] = module
    exec(compile(source, filename, "exec"), module.__dict__)
    klass = getattr(module, cls)
    klass.__reduce_ex__ = _reduce  # pickles as its own source: loads in any process
    klass._resdsl_source = (source, cls, tag)
    return klass


def _reduce(self, protocol):
    """`torch.save(model)`: the module pickles as (its generated source, its state), so
    `torch.load` in a new process rebuilds the class from the source (resdsl installed)."""
    return _rebuild, type(self)._resdsl_source, self.__getstate__()


def _rebuild(source: str, cls: str, tag: str):
    klass = load_source(source, cls, tag)
    return klass.__new__(klass)


def to_module(arch, *, seed: int | None = None, zero_init_residual: bool = False,
              memory_efficient: bool = False, weights: dict | None = None):
    """Build the nn.Module for `arch`.

    seed: initialise reproducibly (the global RNG is left untouched);
    zero_init_residual: zero the last batch norm of each residual branch;
    memory_efficient: recompute dense layers' concat + BN + ReLU + 1x1 conv in backward;
    weights: a state_dict to load (strict; errors name missing/unexpected tensors).
    """
    import torch

    cls_name = class_name(arch.name)
    cls = load_source(to_source(arch), cls_name, arch.name)
    if seed is None:
        model = cls(memory_efficient=memory_efficient, zero_init_residual=zero_init_residual)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(memory_efficient=memory_efficient,
                        zero_init_residual=zero_init_residual)
    if weights is not None:
        report = check_weights(arch, weights)
        if not report.ok:
            raise ResdslError(report.render("the given weights"))
        model.load_state_dict(weights, strict=False)
    return model
