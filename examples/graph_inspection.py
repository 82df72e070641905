"""Programmatic inspection of a network through its networkx graph.

    python examples/graph_inspection.py specs/resnet50.arch

Prints the skip connections (adds whose inputs come from different depths), the
longest path (the network's depth in layers), the receptive field of the last
spatial layer, and the parameters per stage.
"""

import sys
from collections import defaultdict

import networkx as nx

import resdsl
from resdsl.ir import inputs_of


def skip_connections(g: nx.MultiDiGraph) -> list[tuple[str, str]]:
    """(shortcut source, add) for every add: the input reached by the shorter branch."""
    out = []
    for node, d in g.nodes(data=True):
        if d["op"] == "add":
            ins = inputs_of(g, node)
            depth = {i: len(nx.ancestors(g, i)) for i in ins}
            out.append((min(ins, key=depth.get), node))
    return out


def longest_path(g: nx.MultiDiGraph) -> list[str]:
    return nx.dag_longest_path(nx.DiGraph(g))


def receptive_field(g: nx.MultiDiGraph) -> tuple[str, int, int]:
    """Receptive field (pixels) and cumulative stride of the last [C, H, W] layer,
    taking the largest field over all paths through the graph."""
    rf, jump = {}, {}
    last = None
    for node in nx.topological_sort(g):
        d = g.nodes[node]
        ins = inputs_of(g, node)
        if not ins:
            rf[node], jump[node] = 1, 1
            continue
        r = max(rf[i] for i in ins)
        j = max(jump[i] for i in ins)
        a = d["attrs"]
        if d["op"] in ("conv", "maxpool", "avgpool"):
            k, s = a.k, (a.stride if hasattr(a, "stride") else a.s)
            dil = getattr(a, "d", 1)
            r, j = r + (k - 1) * dil * j, j * s
        elif d["op"] == "zeropad":
            j = j * a.s
        rf[node], jump[node] = r, j
        if len(d["shape"]) == 3:
            last = node
    return last, rf[last], jump[last]


def main(path: str) -> None:
    arch = resdsl.load(path)
    g = arch.graph
    skips = skip_connections(g)
    print(f"{arch.name}: {g.number_of_nodes()} layers, {g.number_of_edges()} edges")
    print(f"skip connections: {len(skips)}")
    for src, add in skips[:3]:
        print(f"  {src} -> {add}")
    path_ = longest_path(g)
    weighted = [n for n in path_ if g.nodes[n]["op"] in ("conv", "linear")]
    print(f"longest path: {len(path_)} layers, {len(weighted)} of them conv/linear")
    last, rf, stride = receptive_field(g)
    print(f"receptive field of {last}: {rf}x{rf} pixels, stride {stride}")
    per_stage = defaultdict(int)
    for row in arch.rows():
        per_stage[row.name.split(".")[0]] += row.params
    print("parameters by top-level name:")
    for name, n in per_stage.items():
        if n:
            print(f"  {name:<12} {n:>12,}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "specs/resnet50.arch")
