"""The graph being built: nodes added with inferred shapes, the limits' totals, rollback."""

from __future__ import annotations

import math

from resdsl.elab.values import Tensor
from resdsl.errors import ResdslError, Span
from resdsl.ir.graph import new_ir
from resdsl.ir.ops import OpDef, ShapeError, fmt
from resdsl.limits import DEFAULT, Limits


class Builder:
    """Owns the graph being built: adding nodes with inferred shapes, and rolling back.
    It keeps the totals the limits bound (layers, edges, parameters, activations) and
    refuses a node that would exceed one, before adding it."""

    def __init__(self, name: str, limits: Limits = DEFAULT) -> None:
        self.g = new_ir(name)
        self.limits = limits
        self.added: list[str] = []
        self.auto: dict[str, Span] = {}  # names given automatically -> the layer's span
        self.cost: dict[str, tuple[int, int]] = {}  # node -> (parameters, activations)
        self.params = 0
        self.activations = 0
        self.edges = 0

    def room(self, layers: int, edges: int, span: Span, what: str) -> None:
        """Refuse work that would add `layers` nodes and `edges` edges beyond the limits."""
        lim = self.limits
        if len(self.added) + layers > lim.max_layers:
            raise ResdslError(f"{what} would give the network more than {lim.max_layers:,} "
                              "layers", span,
                              hint="check the repeat counts (`n=`) of stages and dense "
                                   "blocks; " + lim.describe("max_layers"))
        if self.edges + edges > lim.max_edges:
            raise ResdslError(f"{what} would give the network more than {lim.max_edges:,} "
                              "connections", span,
                              hint="dense connectivity grows with the square of the layers "
                                   "per block; " + lim.describe("max_edges"))

    def add(self, name: str, op: OpDef, attrs, inputs: list[Tensor], span: Span, scope: str,
            block: str, label_span: Span | None = None) -> Tensor:
        if name in self.g:
            first = self.g.nodes[name]["span"]
            where = f" (line {first.line})" if first else ""
            hint = "labels must be unique within a block; choose another name"
            if name in self.auto:
                hint = (f"that name was given automatically to an unnamed layer{where}; "
                        "label that layer, or choose another name here")
            raise ResdslError(f"the name `{name}` is already used by another layer{where}",
                              label_span or span, hint=hint)
        lo, hi = op.arity
        if len(inputs) < lo or (hi is not None and len(inputs) > hi):
            want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise ResdslError(f"{op.name} takes {want} input tensor(s), got {len(inputs)}", span)
        in_shapes = [t.shape for t in inputs]
        try:
            shape = op.infer(attrs, in_shapes)
        except ShapeError as err:
            raise ResdslError(err.message, span, hint=err.hint) from None
        self.room(1, len(inputs), span, "this layer")
        params = sum(math.prod(s) for s in op.param_shapes(attrs, in_shapes).values())
        acts = math.prod(shape)
        lim = self.limits
        if self.params + params > lim.max_params:
            raise ResdslError(f"this layer brings the network to {self.params + params:,} "
                              f"parameters, more than {lim.max_params:,}", span,
                              hint="check its channel counts; " + lim.describe("max_params"))
        if self.activations + acts > lim.max_activations:
            raise ResdslError(f"this layer's output {fmt(shape)} brings the activations to "
                              f"{self.activations + acts:,} values per sample, more than "
                              f"{lim.max_activations:,}", span,
                              hint="check the input size and the channel counts; "
                                   + lim.describe("max_activations"))
        self.g.add_node(name, op=op.name, attrs=attrs, shape=shape, span=span, scope=scope,
                        block=block)
        for port, t in enumerate(inputs):
            self.g.add_edge(t.node, name, port=port)
        self.added.append(name)
        self.cost[name] = (params, acts)
        self.edges += len(inputs)
        self.params += params
        self.activations += acts
        return Tensor(name, shape)

    def mark(self) -> int:
        return len(self.added)

    def rollback(self, mark: int) -> None:
        for name in self.added[mark:]:
            self.edges -= self.g.in_degree(name)
            self.g.remove_node(name)
            self.auto.pop(name, None)
            params, acts = self.cost.pop(name)
            self.params -= params
            self.activations -= acts
        del self.added[mark:]
