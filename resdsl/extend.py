"""Registering a new op from Python, without editing resdsl: `register_op`.

A registered op joins the op registry (`resdsl.ir.ops.OPS`) like a built-in one: specs
call it by name with its attributes checked and coerced, its shape rule runs in the
shape checker (errors point at the spec), its parameters and MACs count in `inspect`.
Each backend reaches it through its own lowering, given here by name: `torch` (required)
builds an `nn.Module` for one layer, `tvm` (optional) emits Relax. A spec that uses the op
with a backend it has no lowering for stops with a resdsl error naming the op and layer.

>>> import resdsl, torch
>>> from resdsl.extend import register_op, unregister_op
>>> class Scale(torch.nn.Module):
...     def __init__(self, attrs, shapes):
...         super().__init__()
...         self.weight = torch.nn.Parameter(torch.full((shapes[0][0], 1, 1), attrs.init))
...     def forward(self, x):
...         return x * self.weight
>>> _ = register_op("scale", {"init": 1.0}, shape=lambda a, ins: ins[0],
...                 params=lambda a, ins: {"weight": (ins[0][0], 1, 1)}, torch=Scale)
>>> arch = resdsl.loads("model m() { input [4, 8, 8]\\n conv(4, k=1) -> gamma: scale(0.5) }")
>>> arch.num_params(), list(arch.to_torch(seed=0).state_dict())
(20, ['conv.weight', 'gamma.weight'])
>>> unregister_op("scale")
"""

from __future__ import annotations

import dataclasses
import keyword
import re
from dataclasses import dataclass
from typing import Any, Callable

from resdsl.ir.ops import OPS, OpDef, Shape, ShapeError

REQUIRED = dataclasses.MISSING   # an attribute without a default: `{"out": REQUIRED}`


@dataclass(frozen=True)
class Registered:
    """A registered op's backend lowerings (the registry entry itself is in OPS)."""

    op: OpDef
    torch: Callable[[Any, list[Shape]], Any]
    tvm: Callable[..., Any] | None = None


REGISTERED: dict[str, Registered] = {}

_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_TYPES = {bool: "bool", int: "int", float: "float"}


def register_op(name: str, attrs: dict[str, Any] | None = None, *,
                shape: Callable[[Any, list[Shape]], Shape],
                torch: Callable[[Any, list[Shape]], Any],
                params: Callable[[Any, list[Shape]], dict[str, Shape]] | None = None,
                macs: Callable[[Any, list[Shape], Shape], int] | None = None,
                tvm: Callable[..., Any] | None = None,
                arity: tuple[int, int | None] = (1, 1),
                types: dict[str, type] | None = None,
                doc: str = "", example: str | None = None) -> OpDef:
    """Add the op `name` to the registry; specs can use it at once.

    attrs: attribute name -> default (`REQUIRED` for none), in the order a spec passes
      them positionally; each attribute's type is its default's (bool, int or float) or
      `types[name]`.
    shape(attrs, input_shapes) -> output shape (per sample, e.g. `(C, H, W)`); raise
      `resdsl.ir.ops.ShapeError(message, hint)` to refuse an input, shown at the layer.
    params(attrs, input_shapes) -> {parameter name: shape}: the layer's state_dict
      entries, which the torch module must own under the same names.
    macs(attrs, input_shapes, output_shape) -> multiply-accumulates per sample.
    torch(attrs, input_shapes) -> nn.Module whose forward takes the input tensors (a
      class with that constructor will do). The generated source builds it through
      `resdsl.extend.torch_module`, so a process loading such a model must have
      registered the op first.
    tvm(relax, attrs, inputs, weights) -> a Relax expression (optional): `relax` is
      `tvm.relax`, `inputs` the input expressions (batch first), `weights` parameter
      name -> Relax variable holding that parameter.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or keyword.iskeyword(name):
        raise ValueError(f"op name {name!r} must be a lower-case identifier")
    from resdsl.elab.combinators import COMBINATORS
    from resdsl.elab.expressions import FUNCTIONS
    if name in OPS or name in COMBINATORS or name in FUNCTIONS or name in ("in", "true",
                                                                           "false"):
        raise ValueError(f"`{name}` is already defined; choose another name "
                         "(unregister_op removes a registered op)")
    from torch.nn import Module
    if hasattr(Module, name):
        raise ValueError(f"`{name}` is an attribute of torch.nn.Module: an unlabelled layer "
                         "named after the op would clash with it; choose another name")
    if not callable(shape) or not callable(torch) or (tvm is not None and not callable(tvm)):
        raise TypeError("shape, torch (and tvm, if given) must be callables")
    fields = []
    for key, default in (attrs or {}).items():
        if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key):
            raise ValueError(f"attribute name {key!r} must be an identifier")
        typ = (types or {}).get(key, type(default) if default is not REQUIRED else int)
        if typ not in _TYPES:
            raise TypeError(f"attribute `{key}` must be a bool, int or float, not {typ}")
        fields.append((key, _TYPES[typ]) if default is REQUIRED else
                      (key, _TYPES[typ], dataclasses.field(default=default)))
    attr_cls = dataclasses.make_dataclass(f"{name.title().replace('_', '')}Attrs", fields,
                                          frozen=True)

    def infer(a, ins: list[Shape]) -> Shape:
        out = shape(a, ins)
        if not isinstance(out, tuple | list) or not out or \
                not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in out):
            raise ShapeError(f"the shape rule of the registered op `{name}` gave {out!r}, "
                             "not a shape of whole numbers >= 1")
        return tuple(out)

    op = OpDef(name, attr_cls, infer, doc or f"registered op `{name}`",
               example or name, arity=arity,
               param_shapes=(lambda a, ins: {k: tuple(v) for k, v in params(a, ins).items()})
               if params else (lambda *_: {}),
               macs=(lambda a, ins, out: int(macs(a, ins, out))) if macs else (lambda *_: 0))
    OPS[name] = op
    REGISTERED[name] = Registered(op, torch, tvm)
    return op


def unregister_op(name: str) -> None:
    """Remove an op added by `register_op` (built-in ops cannot be removed)."""
    if name not in REGISTERED:
        raise ValueError(f"`{name}` is not a registered op")
    del REGISTERED[name]
    OPS.pop(name, None)
    import sys
    for module, table in (("resdsl.backends.torch", "TORCH"),
                          ("resdsl.backends.tvm.lower", "LOWER"),
                          ("resdsl.backends.onnx", "ONNX_OPS")):
        if module in sys.modules:
            getattr(sys.modules[module], table).pop(name, None)


def torch_module(name: str, attrs: dict, shapes: tuple):
    """The nn.Module of one layer of the registered op `name` (called by generated code)."""
    if name not in REGISTERED:
        raise RuntimeError(f"this model uses the op `{name}`, registered with "
                           "resdsl.register_op: register it in this process first")
    reg = REGISTERED[name]
    return reg.torch(reg.op.attrs(**attrs), [tuple(s) for s in shapes])


def lowering(op: str, backend: str) -> Callable | None:
    """A backend's table entry for a registered op, or None (not registered, or no
    lowering for that backend)."""
    reg = REGISTERED.get(op)
    if reg is None:
        return None
    if backend == "torch":
        from resdsl.backends.torch import TorchOp, literal
        def ctor(a, ins) -> str:
            attrs = ", ".join(f"{literal(k)}: {literal(v)}"
                              for k, v in dataclasses.asdict(a).items())
            return (f"_registered_module({literal(op)}, {{{attrs}}}, "
                    f"{literal(tuple(tuple(s) for s in ins))})")
        return TorchOp(lambda c: f"{c.module}({', '.join(c.args)})", module=ctor)
    if backend == "tvm" and reg.tvm is not None:
        def lower(ctx, node, a, args, folds):
            weights = {k: ctx.param(f"{node}.{k}", ctx.weight(f"{node}.{k}"))
                       for k in reg.op.param_shapes(a, [ctx.g.nodes[i]["shape"]
                                                        for i in _inputs(ctx.g, node)])}
            return reg.tvm(ctx.relax, a, args, weights)
        return lower
    return None


def _inputs(g, node: str) -> list[str]:
    from resdsl.ir.graph import inputs_of
    return inputs_of(g, node)
