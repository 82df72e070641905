"""The IR contract: networkx graph, ports, JSON round trip, validation."""

import networkx as nx
import pytest

import resdsl
from resdsl.ir import from_json, inputs_of, to_json
from resdsl.ir.ops import OPS
from resdsl.passes import validate


def test_graph_is_a_multidigraph_with_ports_and_node_attributes():
    g = resdsl.loads("model m() { input [4, 8, 8]\n x = conv(4, k=1)\n return x + x }").graph
    assert isinstance(g, nx.MultiDiGraph)
    assert g.number_of_edges("conv", "add") == 2           # the same tensor feeds twice
    assert sorted(p for _, _, p in g.in_edges("add", data="port")) == [0, 1]
    d = g.nodes["conv"]
    assert set(d) >= {"op", "attrs", "shape", "span", "scope"}
    assert g.graph["inputs"] == ["input"] and g.graph["outputs"] == ["add"]


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "resnet20", "preact_resnet164"])
def test_json_round_trip(name):
    arch = resdsl.load(f"specs/{name}.arch")
    g2 = from_json(to_json(arch.graph))
    assert list(g2.nodes) == list(arch.graph.nodes)
    for n in g2:
        a, b = arch.graph.nodes[n], g2.nodes[n]
        assert (a["op"], a["attrs"], a["shape"], a["scope"]) == (b["op"], b["attrs"], b["shape"],
                                                                  b["scope"])
        assert (a["span"].line, a["span"].column) == (b["span"].line, b["span"].column)
        assert inputs_of(arch.graph, n) == inputs_of(g2, n)
    validate(g2)
    assert resdsl.Arch(g2, "", None).num_params() == arch.num_params()


def test_validate_rejects_a_cycle_with_the_span_of_a_layer():
    g = resdsl.loads("model m() { input [4, 8, 8]\n a: conv(4, k=1) -> b: conv(4, k=1) }").graph
    g.add_edge("b", "a", port=1)
    with pytest.raises(resdsl.ResdslError, match="cycle") as err:
        validate(g)
    assert err.value.span is not None


def test_validate_recomputes_shapes_and_catches_inconsistency():
    g = resdsl.loads("model m() { input [4, 8, 8]\n a: conv(4, k=1) -> b: conv(4, k=3) }").graph
    g.nodes["input"]["attrs"] = OPS["input"].attrs((4, 2, 2))
    with pytest.raises(resdsl.ResdslError, match="collapses"):
        validate(g)


def test_validate_rejects_missing_ports():
    g = resdsl.loads("model m() { input [4, 8, 8]\n x = conv(4, k=1)\n return x + x }").graph
    key = next(k for _, _, k, p in g.in_edges("add", keys=True, data="port") if p == 0)
    g.remove_edge("conv", "add", key)
    with pytest.raises(resdsl.ResdslError, match="input"):
        validate(g)


def test_registry_is_the_single_op_table():
    for name, op in OPS.items():
        assert op.name == name and op.doc
        assert callable(op.infer)
