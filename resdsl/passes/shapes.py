"""Shape inference and validation: what every backend may take for granted.

`validate(g)` re-derives every shape from the inputs with the op registry and checks
that the graph is acyclic, that every input port is filled exactly once, that shapes
agree, and that every parameter has a known shape and a name that can become a
module path. Errors carry the span of the offending layer.

>>> import resdsl
>>> from resdsl.passes import validate
>>> g = resdsl.loads("model m() { input [3, 8, 8]\\n c: conv(4, k=3) }").graph
>>> validate(g) is g
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from resdsl.errors import ResdslError
from resdsl.ir.graph import IRGraph, as_networkx, inputs_of, is_acyclic, topo_order
from resdsl.ir.ops import OPS, ShapeError

if TYPE_CHECKING:
    import networkx as nx

G = TypeVar("G", IRGraph, "nx.MultiDiGraph")


def validate(g: G) -> G:
    """Check the IR contract and (re)compute `shape` on every node; return the graph
    (a networkx.MultiDiGraph, or the IRGraph elaboration builds)."""
    if not is_acyclic(g):
        import networkx as nx
        cycle = nx.find_cycle(as_networkx(g))
        names = [e[0] for e in cycle]
        span = g.nodes[names[0]].get("span")
        raise ResdslError(f"the graph has a cycle: {' -> '.join(names + [names[0]])}", span,
                          hint="a network is acyclic: each layer may only read layers "
                               "computed before it")
    param_owners: set[str] = set()
    for name in topo_order(g):
        d = g.nodes[name]
        span = d.get("span")
        op = OPS.get(d.get("op"))
        if op is None:
            raise ResdslError(f"layer `{name}` has the unknown op `{d.get('op')}`", span,
                              hint=f"known ops: {', '.join(sorted(OPS))}")
        ports = sorted(p for _, _, p in g.in_edges(name, data="port"))
        if ports != list(range(len(ports))):
            raise ResdslError(f"layer `{name}` has input ports {ports}; they must be 0..n-1",
                              span)
        lo, hi = op.arity
        if len(ports) < lo or (hi is not None and len(ports) > hi):
            raise ResdslError(f"layer `{name}` ({op.name}) has {len(ports)} input(s), "
                              f"needs {lo}{'' if hi == lo else '+'}", span)
        ins = [g.nodes[src]["shape"] for src in inputs_of(g, name)]
        try:
            shape = op.infer(d["attrs"], ins)
        except ShapeError as err:
            raise ResdslError(err.message, span, hint=err.hint) from None
        d["shape"] = shape
        if op.param_shapes(d["attrs"], ins):
            param_owners.add(name)
    for name in param_owners:
        parts = name.split(".")
        for k in range(1, len(parts)):
            prefix = ".".join(parts[:k])
            if prefix in param_owners:
                raise ResdslError(f"`{prefix}` names a layer with parameters and also the "
                                  f"scope of `{name}`", g.nodes[name].get("span"),
                                  hint="a name is either a layer or a group of layers; "
                                       "rename one of them")
    for out in g.graph.get("outputs", []):
        if out not in g:
            raise ResdslError(f"the graph's output `{out}` is not a layer")
    return g
