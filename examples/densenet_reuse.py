"""Feature reuse: DenseNet-BC against CIFAR ResNets of about its accuracy, from the IR.

Huang et al. (2017) report that DenseNet-BC (L = 100, k = 12) reaches a lower CIFAR-10
error than ResNets with as many or twice as many parameters, because each layer reads
every earlier layer's features (a channel concatenation) and adds only k new ones. This
example loads the reference specs, prints their parameters and multiply-accumulates (as
resdsl counts them, from the IR) next to the published CIFAR-10 errors (standard
augmentation), and plots, for every dense layer of DenseNet-BC, the width of the
concatenation it reads -- the input channels of the layer, read from the IR graph -- which
grows by k per layer and is halved by each transition.

    python examples/densenet_reuse.py                 # writes densenet_reuse.png
    python examples/densenet_reuse.py --models densenet_bc_100_12 resnet56 --quick

Printed: the table (model, parameters, MACs, published error and its source), then the
concatenation widths per dense block.
"""

from __future__ import annotations

import argparse

import networkx as nx

import resdsl
from resdsl.ir.graph import inputs_of, topo_order

# CIFAR-10 test error (%) with standard augmentation, as published
PUBLISHED = {
    "densenet_bc_100_12": (4.51, "Huang et al. 2017, Table 2"),
    "resnet56": (6.97, "He et al. 2015, Table 6"),
    "resnet110": (6.43, "He et al. 2015, Table 6"),
    "preact_resnet164": (5.46, "He et al. 2016, Table 2"),
}
DEFAULT_MODELS = ["densenet_bc_100_12", "resnet56", "resnet110", "preact_resnet164"]


def table(names: list[str]) -> list[dict]:
    """One row per model: name, params, MACs (resdsl's counts), published error."""
    rows = []
    for name in names:
        arch = resdsl.load(name)
        err, source = PUBLISHED.get(name, (None, ""))
        rows.append({"model": name, "params": arch.num_params(), "macs": arch.macs(),
                     "error": err, "source": source})
    return rows


def dense_layers(g: nx.MultiDiGraph) -> dict[str, list[tuple[str, int]]]:
    """For each dense block (a scope with a `dense` concatenation) its layers in order,
    each as (scope, input channels): the channels of everything the layer's first node
    reads -- the block input for layer 0, the concatenation for the others."""
    blocks = {g.nodes[n]["scope"] for n in g
              if g.nodes[n].get("block") == "dense" and g.nodes[n]["op"] == "concat"}
    out: dict[str, list[tuple[str, int]]] = {b: [] for b in sorted(blocks)}
    seen: set[str] = set()
    for n in topo_order(g):
        scope = g.nodes[n]["scope"]
        parent = scope.rpartition(".")[0]
        if parent in out and scope not in seen:
            seen.add(scope)
            width = sum(g.nodes[s]["shape"][0] for s in inputs_of(g, n))
            out[parent].append((scope, width))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                        help="model names or spec paths; the first is the DenseNet plotted")
    parser.add_argument("--quick", action="store_true", help="a smaller figure")
    parser.add_argument("-o", "--out", "--output", dest="out", default="densenet_reuse.png")
    args = parser.parse_args(argv)
    rows = table(args.models)
    print(f"{'model':<20} {'params':>11} {'MACs':>13}  {'CIFAR-10 error':>14}  source")
    for r in rows:
        err = f"{r['error']:.2f}%" if r["error"] is not None else "-"
        print(f"{r['model']:<20} {r['params']:>11,} {r['macs']:>13,}  {err:>14}  "
              f"{r['source']}")
    dense_name = args.models[0]
    widths = dense_layers(resdsl.load(dense_name).graph)
    if not widths:
        raise SystemExit(f"{dense_name} has no dense blocks")
    for block, layers in widths.items():
        ws = [w for _, w in layers]
        print(f"{dense_name} {block}: {len(ws)} layers, concatenation width "
              f"{ws[0]} -> {ws[-1]} (+{ws[1] - ws[0] if len(ws) > 1 else 0} per layer)")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_w, ax_t) = plt.subplots(1, 2, figsize=(8, 3.2) if args.quick else (11, 4.2),
                                     gridspec_kw={"width_ratios": [3, 2]})
    start = 0
    for block, layers in widths.items():
        xs = range(start, start + len(layers))
        ax_w.step(xs, [w for _, w in layers], where="mid", label=block)
        start += len(layers)
    ax_w.set_xlabel(f"dense layer of {dense_name} (input to output)")
    ax_w.set_ylabel("input channels (concatenation width)")
    ax_w.set_title("each layer reads all earlier features")
    ax_w.legend()
    ys = range(len(rows))
    ax_t.barh([y - 0.2 for y in ys], [r["params"] / 1e6 for r in rows], height=0.4,
              label="parameters (M)")
    ax_t.barh([y + 0.2 for y in ys], [r["macs"] / 1e8 for r in rows], height=0.4,
              label="MACs (x 100M)")
    ax_t.set_yticks(list(ys), [f"{r['model']}\n{r['error']:.2f}% error" if r["error"]
                               is not None else r["model"] for r in rows])
    ax_t.invert_yaxis()
    ax_t.set_title("size and cost (CIFAR-10 error as published)")
    ax_t.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return {"table": rows, "widths": widths}


if __name__ == "__main__":
    main()
