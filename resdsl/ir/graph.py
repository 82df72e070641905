"""The graph IR: a networkx.MultiDiGraph of layers, with JSON round-trip.

Node key: the layer's dotted name (`layer1.0.conv1`). Node attributes:
`op` (a key of `ops.OPS`), `attrs` (that op's frozen attribute record), `shape`
(per sample), `span` (where in the spec it came from), `scope` (the block instance
path it came from) and `block` (that block's name). Edge attribute `port` orders a
node's inputs. `graph.graph` holds `name`, `inputs`, `outputs` and `params`.

>>> import resdsl
>>> g = resdsl.loads("model m() { input [3, 8, 8]\\n c: conv(4, k=3, p=1) -> relu }").graph
>>> list(g.nodes)
['input', 'c', 'relu']
>>> g.nodes["c"]["shape"]
(4, 8, 8)

Elaboration and validation build an `IRGraph` instead: the few MultiDiGraph methods they use
over plain dicts, so `resdsl check` never imports networkx. `Arch.graph` turns it into the
networkx graph on first use (`IRGraph.to_networkx`); every function here takes either.
"""

from __future__ import annotations

import heapq
import json
from typing import TYPE_CHECKING, Any

from resdsl.errors import Source, Span
from resdsl.ir.ops import OPS, attrs_from_json, attrs_to_json

if TYPE_CHECKING:
    import networkx as nx


class _NodeView(dict):
    """`g.nodes` of an IRGraph: `nodes[name]` is the attribute dict; `nodes(data=True)`
    gives (name, attrs) pairs, as networkx's NodeView does."""

    def __call__(self, data: bool = False):
        return list(self.items()) if data else list(self)


class IRGraph:
    """The IR while it is built and checked: what elaboration and validation use of
    networkx.MultiDiGraph (nodes with attribute dicts in insertion order, parallel edges
    with a `port`, the `graph` dict), without importing networkx. `to_networkx()` gives
    the same graph as a MultiDiGraph, edge keys included."""

    def __init__(self) -> None:
        self.graph: dict[str, Any] = {}
        self.nodes = _NodeView()
        self._pred: dict[str, list[tuple[str, dict[str, Any]]]] = {}  # in-edges, in order
        self._succ: dict[str, list[str]] = {}  # successors, once per edge
        self._edges: list[tuple[str, str, dict[str, Any]]] = []  # every edge, in order

    def __contains__(self, node: object) -> bool:
        return node in self.nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self):
        return iter(self.nodes)

    def add_node(self, name: str, **attrs: Any) -> None:
        if name not in self.nodes:
            self.nodes[name] = {}
            self._pred[name] = []
            self._succ[name] = []
        self.nodes[name].update(attrs)

    def add_edge(self, u: str, v: str, **attrs: Any) -> None:
        self.add_node(u)
        self.add_node(v)
        self._pred[v].append((u, attrs))
        self._succ[u].append(v)
        self._edges.append((u, v, attrs))

    def in_degree(self, node: str) -> int:
        return len(self._pred[node])

    def in_edges(self, node: str, data: str | bool = False) -> list[tuple]:
        if data is True:
            return [(u, node, d) for u, d in self._pred[node]]
        if data:
            return [(u, node, d.get(data)) for u, d in self._pred[node]]
        return [(u, node) for u, _ in self._pred[node]]

    def remove_node(self, name: str) -> None:
        del self.nodes[name]
        gone = {u for u, _ in self._pred.pop(name)} | set(self._succ.pop(name))
        for other in gone - {name}:
            self._pred[other] = [(u, d) for u, d in self._pred[other] if u != name]
            self._succ[other] = [v for v in self._succ[other] if v != name]
        self._edges = [e for e in self._edges if name not in (e[0], e[1])]

    def to_networkx(self) -> nx.MultiDiGraph:
        """The same graph as a networkx.MultiDiGraph (node, edge and key order kept)."""
        import networkx as nx
        g = nx.MultiDiGraph()
        g.graph.update(self.graph)
        g.add_nodes_from(self.nodes.items())
        for u, v, d in self._edges:
            g.add_edge(u, v, **d)
        return g


def new_graph(name: str) -> nx.MultiDiGraph:
    import networkx as nx
    g = nx.MultiDiGraph()
    g.graph.update(name=name, inputs=[], outputs=[], params={})
    return g


def new_ir(name: str) -> IRGraph:
    """An empty IRGraph for elaboration (`new_graph` without networkx)."""
    g = IRGraph()
    g.graph.update(name=name, inputs=[], outputs=[], params={})
    return g


def as_networkx(g: IRGraph | nx.MultiDiGraph) -> nx.MultiDiGraph:
    """`g` as a networkx graph (itself when it is one)."""
    return g.to_networkx() if isinstance(g, IRGraph) else g


def inputs_of(g: IRGraph | nx.MultiDiGraph, node: str) -> list[str]:
    """The node's input tensors in port order."""
    edges = sorted(g.in_edges(node, data="port"), key=lambda e: e[2])
    return [src for src, _, _ in edges]


def to_json(g: IRGraph | nx.MultiDiGraph) -> str:
    """Serialise the IR (node-link form); spans keep file, line and column."""
    g = as_networkx(g)
    nodes = []
    for name, d in g.nodes(data=True):
        nodes.append({"id": name, "op": d["op"], "attrs": attrs_to_json(d["attrs"]),
                      "shape": list(d["shape"]) if d.get("shape") is not None else None,
                      "span": d["span"].to_json() if d.get("span") else None,
                      "scope": d.get("scope", ""), "block": d.get("block", "")})
    edges = [{"source": u, "target": v, "port": p} for u, v, p in g.edges(data="port")]
    return json.dumps({"graph": dict(g.graph), "nodes": nodes, "edges": edges}, indent=1)


def from_json(text: str) -> nx.MultiDiGraph:
    """Inverse of to_json. Shapes are kept as stored; run `passes.validate` to re-check."""
    import networkx as nx
    data: dict[str, Any] = json.loads(text)
    g = nx.MultiDiGraph()
    g.graph.update(data["graph"])
    sources: dict[str, Source] = {}
    for n in data["nodes"]:
        span = None
        if n.get("span"):
            s = n["span"]
            src = sources.setdefault(s["file"], _load_source(s["file"]))
            span = Span(src, s["line"], s["column"], s["end_line"], s["end_column"])
        g.add_node(n["id"], op=n["op"],
                   attrs=attrs_from_json(n["op"], n["attrs"]) if n["op"] in OPS else n["attrs"],
                   shape=tuple(n["shape"]) if n.get("shape") is not None else None,
                   span=span, scope=n.get("scope", ""), block=n.get("block", ""))
    for e in data["edges"]:
        g.add_edge(e["source"], e["target"], port=e["port"])
    return g


def _load_source(path: str) -> Source:
    try:
        with open(path, encoding="utf-8") as f:
            return Source(path, f.read())
    except OSError:
        return Source(path, "")


def topo_order(g: IRGraph | nx.MultiDiGraph) -> list[str]:
    """Nodes in a topological order that follows the spec's order of creation (so
    generated code and state_dicts list layers as the spec writes them)."""
    index = {n: i for i, n in enumerate(g.nodes)}
    if isinstance(g, IRGraph):
        order = _ir_topo_order(g, index)
        if order is not None:
            return order
        g = g.to_networkx()  # a cycle: networkx raises its own error, as it always did
    import networkx as nx
    return list(nx.lexicographical_topological_sort(g, key=index.__getitem__))


def _ir_topo_order(g: IRGraph, index: dict[str, int]) -> list[str] | None:
    """networkx's lexicographical_topological_sort (Kahn's, smallest index first) on an
    IRGraph; None when the graph has a cycle."""
    indegree = {n: len(g._pred[n]) for n in g.nodes}
    heap = [index[n] for n, k in indegree.items() if k == 0]
    heapq.heapify(heap)
    names = list(g.nodes)
    order = []
    while heap:
        n = names[heapq.heappop(heap)]
        order.append(n)
        for v in g._succ[n]:
            indegree[v] -= 1
            if indegree[v] == 0:
                heapq.heappush(heap, index[v])
    return order if len(order) == len(names) else None


def is_acyclic(g: IRGraph | nx.MultiDiGraph) -> bool:
    if isinstance(g, IRGraph):
        return _ir_topo_order(g, {n: i for i, n in enumerate(g.nodes)}) is not None
    import networkx as nx
    return nx.is_directed_acyclic_graph(g)


# ---- exports for tools: networkx's own readers load these back -----------------------

def to_plain(g: IRGraph | nx.MultiDiGraph, scalars: bool = False) -> nx.MultiDiGraph:
    """A copy of the IR whose attributes are plain data (str, int, float, bool, lists),
    for networkx's writers: node-link JSON (`nx.node_link_data`) and, with `scalars`,
    GraphML (`nx.write_graphml`), where lists and records become JSON text. Node
    attributes: op, attrs, shape, span (`file:line:col`), scope, block; edge: port.

    >>> import resdsl
    >>> plain = to_plain(resdsl.load("specs/resnet18.arch").graph, scalars=True)
    >>> plain.nodes["conv1"]["shape"]
    '[64, 112, 112]'
    """
    import networkx as nx

    def value(v: Any) -> Any:
        return json.dumps(v) if scalars and isinstance(v, (list, dict)) else v

    g = as_networkx(g)
    out = nx.MultiDiGraph()
    out.graph.update({k: value(_jsonable(v)) for k, v in g.graph.items()})
    for name, d in g.nodes(data=True):
        attrs = {"op": d["op"],
                 "attrs": value(_jsonable(attrs_to_json(d["attrs"]))
                                if d["op"] in OPS else _jsonable(d["attrs"])),
                 "scope": d.get("scope", ""), "block": d.get("block", "")}
        if d.get("shape") is not None:
            attrs["shape"] = value(list(d["shape"]))
        if d.get("span") is not None:
            s = d["span"]
            attrs["span"] = f"{s.source.path}:{s.line}:{s.column}"
        out.add_node(name, **attrs)
    for u, v, k, port in g.edges(keys=True, data="port"):
        out.add_edge(u, v, key=k, port=port)
    return out


def to_node_link(g: IRGraph | nx.MultiDiGraph) -> str:
    """The IR as node-link JSON that `nx.node_link_graph(json.loads(text))` reads back."""
    import networkx as nx
    return json.dumps(nx.node_link_data(to_plain(g), edges="edges"), indent=1)


def to_graphml(g: IRGraph | nx.MultiDiGraph) -> str:
    """The IR as GraphML that `nx.read_graphml` reads back (lists as JSON text)."""
    import networkx as nx
    return "\n".join(nx.generate_graphml(to_plain(g, scalars=True))) + "\n"


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v
