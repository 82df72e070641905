"""`Arch`: a loaded, validated network and what can be asked of it.

>>> import resdsl
>>> arch = resdsl.load("specs/resnet18.arch")
>>> arch.num_params()
11689512
>>> arch.macs()
1814073344
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resdsl.ir.graph import IRGraph, inputs_of, topo_order
from resdsl.ir.ops import OPS, fmt

if TYPE_CHECKING:
    import networkx as nx


@dataclass(frozen=True)
class Row:
    """One line of `inspect`: a layer, or a group of layers when collapsed by depth."""

    name: str
    op: str
    shape: tuple[int, ...]
    params: int
    macs: int
    layers: int = 1


class Arch:
    """A validated network: its IR graph plus summaries and lowerings."""

    def __init__(self, graph: nx.MultiDiGraph | IRGraph, source_text: str,
                 path: str | None) -> None:
        self._g = graph
        self.path = path
        self.name: str = graph.graph["name"]
        self._source_text = source_text

    @property
    def graph(self) -> nx.MultiDiGraph:
        """The IR as a networkx.MultiDiGraph (made from the elaborated IRGraph on first
        use, so that what only summarises a network never imports networkx); changes
        made to it are what the other methods see."""
        if isinstance(self._g, IRGraph):
            self._g = self._g.to_networkx()
        return self._g

    @graph.setter
    def graph(self, graph: nx.MultiDiGraph) -> None:
        self._g = graph

    # ---- facts
    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._g.nodes[self._g.graph["inputs"][0]]["shape"]

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self._g.nodes[self._g.graph["outputs"][0]]["shape"]

    def num_layers(self) -> int:
        """Number of layers (nodes of the graph, the input included)."""
        return len(self._g)

    def layer_inputs(self, name: str) -> list[str]:
        return inputs_of(self._g, name)

    def parameters(self) -> dict[str, tuple[int, ...]]:
        """Trainable parameters by state_dict key (`layer1.0.conv1.weight`) -> shape."""
        return self._tensors("param_shapes")

    def buffers(self) -> dict[str, tuple[int, ...]]:
        """Non-trainable state (batch-norm running statistics) by key -> shape."""
        return self._tensors("buffer_shapes")

    def _tensors(self, kind: str) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        g = self._g
        for name in topo_order(g):
            d = g.nodes[name]
            ins = [g.nodes[s]["shape"] for s in inputs_of(g, name)]
            for key, shape in getattr(OPS[d["op"]], kind)(d["attrs"], ins).items():
                out[f"{name}.{key}"] = shape
        return out

    def num_params(self) -> int:
        """Number of trainable parameters (what torchvision's `sum(p.numel())` counts)."""
        return sum(r.params for r in self.rows())

    def macs(self) -> int:
        """Multiply-accumulates of one forward pass for one sample (convs and linears)."""
        return sum(r.macs for r in self.rows())

    def spec_hash(self) -> str:
        """A hash of the elaborated network (graph structure, attributes, shapes)."""
        h = hashlib.sha256()
        g = self._g
        for name in topo_order(g):
            d = g.nodes[name]
            h.update(json.dumps([name, d["op"], repr(d["attrs"]), list(d["shape"]),
                                 inputs_of(g, name)]).encode())
        return h.hexdigest()[:16]

    # ---- tables
    def rows(self, depth: int | None = None) -> list[Row]:
        """Per-layer rows in execution order; with `depth`, layers are grouped by the first
        `depth` parts of their dotted names (`--depth 1` gives conv1, layer1, ..., fc)."""
        g = self._g
        rows: list[Row] = []
        for name in topo_order(g):
            d = g.nodes[name]
            op = OPS[d["op"]]
            ins = [g.nodes[s]["shape"] for s in inputs_of(g, name)]
            params = sum(_numel(s) for s in op.param_shapes(d["attrs"], ins).values())
            rows.append(Row(name, d["op"], d["shape"], params, op.macs(d["attrs"], ins,
                                                                       d["shape"])))
        if depth is None:
            return rows
        grouped: dict[str, list[Row]] = {}
        for r in rows:
            grouped.setdefault(".".join(r.name.split(".")[:depth]), []).append(r)
        out = []
        for key, members in grouped.items():
            if len(members) == 1 and members[0].name == key:
                out.append(members[0])
                continue
            blocks = {g.nodes[m.name].get("block") for m in members
                      if g.nodes[m.name].get("scope") == key}
            op = blocks.pop() if len(blocks) == 1 else "group"
            out.append(Row(key, op, members[-1].shape, sum(m.params for m in members),
                           sum(m.macs for m in members), len(members)))
        return out

    def summary(self, depth: int | None = None) -> str:
        """A per-layer table (name, op, output shape, params, MACs) with totals."""
        rows = self.rows(depth)
        header = ("name", "op", "output", "params", "MACs")
        body = [(r.name, r.op if r.layers == 1 else f"{r.op} ({r.layers} layers)",
                 fmt(r.shape), f"{r.params:,}", f"{r.macs:,}") for r in rows]
        total = ("total", f"{self.num_layers()} layers", fmt(self.output_shape),
                 f"{self.num_params():,}", f"{self.macs():,}")
        widths = [max(len(x[i]) for x in [header, total, *body]) for i in range(5)]

        def line(cells):
            return "  ".join(c.rjust(w) if i >= 3 else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        sep = "  ".join("-" * w for w in widths)
        return "\n".join([f"{self.name}  input {fmt(self.input_shape)}", line(header), sep,
                          *map(line, body), sep, line(total)])

    def to_json(self, depth: int | None = None) -> dict[str, Any]:
        return {"model": self.name, "file": self.path, "input": list(self.input_shape),
                "output": list(self.output_shape), "params": self.num_params(),
                "macs": self.macs(),
                "layers": [{"name": r.name, "op": r.op, "shape": list(r.shape),
                            "params": r.params, "macs": r.macs, "layers": r.layers}
                           for r in self.rows(depth)]}

    # ---- lowerings (imported lazily: `resdsl check` must not pay for torch)
    def to_torch(self, **kwargs: Any):
        """An nn.Module for this network; see `resdsl.backends.torch.to_module`."""
        from resdsl.backends.torch import to_module
        return to_module(self, **kwargs)

    def to_dot(self, depth: int | None = None, **kwargs: Any) -> str:
        """Graphviz DOT text of this network; see `resdsl.dot.to_dot`."""
        from resdsl.dot import to_dot
        return to_dot(self, depth, **kwargs)

    def to_onnx(self, weights: dict | None = None, **kwargs: Any):
        """An onnx.ModelProto of this network; see `resdsl.backends.onnx.to_onnx`."""
        from resdsl.backends.onnx import to_onnx
        return to_onnx(self, weights, **kwargs)

    def torch_source(self, **kwargs: Any) -> str:
        """Standalone PyTorch source defining this network's module class."""
        from resdsl.backends.torch import to_source
        return to_source(self, **kwargs)

    def __repr__(self) -> str:
        return (f"<Arch {self.name}: {self.num_layers()} layers, "
                f"{self.num_params():,} params, input {fmt(self.input_shape)}>")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
