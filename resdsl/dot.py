"""IR -> Graphviz DOT, and DOT -> SVG/PNG/HTML through Graphviz's `dot` program.

Layers are nodes (the node ID is the layer's dotted name), tensors are edges labelled
with their per-sample shape, and the dotted names' prefixes (`layer2`, `layer2.0`,
`layer2.0.downsample`) are nested clusters -- the state_dict's own structure. Shortcut
branches (the inputs of an `add` or `concat` that skip layers the other inputs go
through) are drawn dashed and blue. With `depth`, layers are collapsed into one node per
group of the first `depth` name parts, labelled with its parameters and MACs, as
`resdsl inspect --depth` groups them.

Every text that reaches DOT (names, ops, the model's and the spec file's names) goes
through `quote`; the DOT is written by resdsl, Graphviz only lays it out.

>>> import resdsl
>>> dot = to_dot(resdsl.load("specs/resnet18.arch"), depth=1)
>>> dot.splitlines()[0]
'digraph "resnet18" {'
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Callable

import networkx as nx

from resdsl.errors import ResdslError
from resdsl.ir.graph import topo_order

FORMATS = ("dot", "svg", "png", "html")
SHORTCUT_COLOR = "#1f5fbf"
RENDER_TIMEOUT_S = 300.0
LARGE_EDGES = 400
LARGE_LAYOUT = {"splines": "line", "mclimit": "0.1", "nslimit": "1", "nslimit1": "1"}


def quote(text: Any) -> str:
    """`text` as a DOT double-quoted string: the one escaping function for everything
    that reaches DOT (IDs, labels, attribute values). Backslashes and quotes are escaped
    (so Graphviz's `\\N`-style label escapes cannot be injected), a newline becomes the
    label line break, other control characters become `?`.

    >>> quote('a "b"\\\\c')
    '"a \\\\"b\\\\"\\\\\\\\c"'
    """
    out = []
    for ch in str(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif not ch.isprintable():
            out.append("?")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _attrs(**kv: Any) -> str:
    return "[" + ", ".join(f"{k}={quote(v)}" for k, v in kv.items() if v is not None) + "]"


def shape_text(shape: tuple[int, ...] | None) -> str:
    return "x".join(str(d) for d in shape) if shape else "?"


# ---- per-op drawing (a table keyed by op name; an op without an entry is drawn by name)

def _conv_label(a) -> str:
    s = f"conv {a.k}x{a.k}"
    if a.s != 1:
        s += f"/{a.s}"
    s += f", {a.out}"
    if a.groups != 1:
        s += f", g={a.groups}"
    if a.d != 1:
        s += f", d={a.d}"
    return s


def _pool_label(op: str) -> Callable[[Any], str]:
    return lambda a: f"{op} {a.k}x{a.k}/{a.stride}"


LABELS: dict[str, Callable[[Any], str]] = {
    "input": lambda a: "input",
    "conv": _conv_label,
    "bn": lambda a: "bn",
    "relu": lambda a: "relu",
    "maxpool": _pool_label("maxpool"),
    "avgpool": _pool_label("avgpool"),
    "global_avgpool": lambda a: "global avgpool",
    "flatten": lambda a: "flatten",
    "linear": lambda a: f"linear {a.out}",
    "dropout": lambda a: f"dropout {a.p}",
    "add": lambda a: "+",
    "concat": lambda a: "concat",
    "zeropad": lambda a: f"zeropad to {a.c}" + (f", /{a.s}" if a.s != 1 else ""),
}

STYLES: dict[str, dict[str, str]] = {
    "input": {"shape": "ellipse", "fillcolor": "#eeeeee"},
    "conv": {"shape": "box", "fillcolor": "#fde8b0"},
    "bn": {"shape": "box", "fillcolor": "#d7e8f7"},
    "relu": {"shape": "box", "fillcolor": "#d9f0d3"},
    "maxpool": {"shape": "box", "fillcolor": "#e5e5e5"},
    "avgpool": {"shape": "box", "fillcolor": "#e5e5e5"},
    "global_avgpool": {"shape": "box", "fillcolor": "#e5e5e5"},
    "flatten": {"shape": "box", "fillcolor": "#f5f5f5"},
    "linear": {"shape": "box", "fillcolor": "#f9c9a8"},
    "dropout": {"shape": "box", "fillcolor": "#f5f5f5"},
    "add": {"shape": "circle", "fillcolor": "#ffffff"},
    "concat": {"shape": "invhouse", "fillcolor": "#ffffff"},
    "zeropad": {"shape": "box", "fillcolor": "#dde3f7"},
}
_GROUP_STYLE = {"shape": "box3d", "fillcolor": "#fff5d6"}


def shortcut_edges(g: nx.MultiDiGraph) -> set[tuple[str, str, int]]:
    """Edges (u, v, key) of shortcut branches. For each `add`/`concat`, the inputs that
    are fewer layers from the network's input than the deepest one skip layers: the edge
    from such an input is a shortcut, and so is the chain of layers of the same block
    that feeds only it (a projection `downsample`, an option-A `zeropad`)."""
    order = topo_order(g)
    level: dict[str, int] = {}
    for n in order:
        level[n] = max((level[p] + 1 for p in g.predecessors(n)), default=0)
    out: set[tuple[str, str, int]] = set()
    for v in order:
        if g.nodes[v]["op"] not in ("add", "concat") or g.in_degree(v) < 2:
            continue
        deepest = max(level[p] for p in g.predecessors(v))
        scope = g.nodes[v].get("scope", "")
        for u, _, k in g.in_edges(v, keys=True):
            if level[u] >= deepest:
                continue
            out.add((u, v, k))
            # walk back through the shortcut's own layers (same block, feeding only this)
            node = u
            while (scope and g.nodes[node].get("scope", "").startswith(scope)
                   and g.out_degree(node) == 1 and g.in_degree(node) >= 1
                   and g.nodes[node]["op"] not in ("add", "concat")):
                for p, _, kk in g.in_edges(node, keys=True):
                    out.add((p, node, kk))
                preds = list(g.predecessors(node))
                if len(preds) != 1:
                    break
                node = preds[0]
    return out


@dataclass
class _Cluster:
    name: str
    nodes: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)


def to_dot(arch, depth: int | None = None, *, rankdir: str = "TB") -> str:
    """The network as DOT text. `depth=None` draws every layer; `depth=N` collapses the
    layers into one node per group of the first N parts of their dotted names.

    >>> import resdsl
    >>> "cluster_layer2.0" in to_dot(resdsl.load("specs/resnet18.arch"))
    True
    """
    if depth is not None and depth < 1:
        raise ResdslError(f"--depth {depth} must be at least 1")
    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise ResdslError(f"rankdir {rankdir!r} must be TB, LR, BT or RL")
    g = arch.graph
    order = topo_order(g)

    def key(n: str) -> str:
        return n if depth is None else ".".join(n.split(".")[:depth])

    groups: dict[str, list[str]] = {}
    for n in order:
        groups.setdefault(key(n), []).append(n)
    rows = {r.name: r for r in arch.rows(depth)} if depth is not None else {}
    skips = shortcut_edges(g)
    skip_nodes = {v for u, v, _ in skips
                  if g.nodes[v]["op"] not in ("add", "concat")}

    # the cluster tree: every proper prefix of a drawn node's name
    clusters: dict[str, _Cluster] = {"": _Cluster("")}
    for node_id in groups:
        parts = node_id.split(".")
        parent = ""
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            if prefix not in clusters:
                clusters[prefix] = _Cluster(prefix)
                clusters[parent].children.append(prefix)
            parent = prefix
        clusters[parent].nodes.append(node_id)

    lines = [f"digraph {quote(arch.name)} {{"]
    title = (f"{arch.name}  ({os.path.basename(arch.path) if arch.path else 'spec'})\n"
             f"input {shape_text(arch.input_shape)}, {arch.num_params():,} parameters, "
             f"{arch.macs():,} MACs")
    big = g.number_of_edges() > LARGE_EDGES and depth is None
    graph_attrs = dict(label=title, labelloc="t", fontname="Helvetica", rankdir=rankdir,
                       newrank="true", nodesep="0.25", ranksep="0.3")
    if big:     # bound Graphviz's work: straight edges, few ordering/ranking iterations
        graph_attrs.update(LARGE_LAYOUT)
    lines.append(f"  graph {_attrs(**graph_attrs)};")
    node_attrs = _attrs(style="filled", fontname="Helvetica", fontsize="10", height="0.3")
    lines.append(f"  node {node_attrs};")
    lines.append(f"  edge {_attrs(fontname='Helvetica', fontsize='8', arrowsize='0.6')};")

    def node_stmt(node_id: str, indent: str) -> str:
        members = groups[node_id]
        if len(members) == 1 and members[0] == node_id:
            d = g.nodes[node_id]
            label_fn = LABELS.get(d["op"])
            text = label_fn(d["attrs"]) if label_fn else d["op"]
            leaf = node_id.rsplit(".", 1)[-1]
            style = dict(STYLES.get(d["op"], {"shape": "box", "fillcolor": "#ffffff"}))
            # the leaf name when it says more than the op (`bn1`, not `relu_1`)
            same = leaf == text or re.fullmatch(re.escape(d["op"]) + r"(_\d+)?", leaf)
            label = text if same or d["op"] == "add" else f"{leaf}\n{text}"
            extra: dict[str, str] = {}
            if node_id in skip_nodes:
                extra = {"style": "filled,dashed", "color": SHORTCUT_COLOR}
            tooltip = f"{node_id}: {d['op']} -> {shape_text(d['shape'])}"
            return (f"{indent}{quote(node_id)} "
                    f"{_attrs(label=label, tooltip=tooltip, **style, **extra)};")
        r = rows[node_id]
        what = r.op if r.op != "group" else "group"
        label = (f"{node_id}\n{what}, {r.layers} layers\n{r.params:,} params\n"
                 f"{r.macs:,} MACs")
        return (f"{indent}{quote(node_id)} "
                f"{_attrs(label=label, tooltip=f'{node_id}: {r.layers} layers', **_GROUP_STYLE)};")

    def emit(c: _Cluster, indent: str) -> None:
        for n in c.nodes:
            lines.append(node_stmt(n, indent))
        for child in c.children:
            cl = clusters[child]
            blocks = {g.nodes[m].get("block") for m in order
                      if g.nodes[m].get("scope", "") == child}
            label = child + (f"  ({blocks.pop()})" if len(blocks) == 1 else "")
            lines.append(f"{indent}subgraph {quote('cluster_' + child)} {{")
            look = _attrs(label=label, style="rounded", color="#999999", fontcolor="#555555",
                          fontsize="10", labeljust="l")
            lines.append(f"{indent}  graph {look};")
            emit(cl, indent + "  ")
            lines.append(f"{indent}}}")

    emit(clusters[""], "  ")

    seen: set[tuple[str, str, str]] = set()
    for u, v, k, port in g.edges(keys=True, data="port"):
        gu, gv = key(u), key(v)
        if depth is not None:
            if gu == gv or (gu, gv, u) in seen:
                continue
            seen.add((gu, gv, u))
        # on large graphs the shape is an external label: an edge label is a node of its own
        # to dot's ranking, which doubles the ranks a long (dense) edge crosses
        style: dict[str, Any] = {"xlabel" if big else "label": shape_text(g.nodes[u]["shape"])}
        if (u, v, k) in skips:
            style.update(style="dashed", color=SHORTCUT_COLOR, fontcolor=SHORTCUT_COLOR,
                         penwidth="1.4")
            if g.nodes[v]["op"] == "concat":
                style["constraint"] = "false"
        if depth is None and g.in_degree(v) > 1 and g.nodes[v]["op"] == "concat":
            style["headlabel"] = str(port)
        lines.append(f"  {quote(gu)} -> {quote(gv)} {_attrs(**style)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def dot_program() -> str | None:
    """Graphviz's `dot` on PATH, or None."""
    return shutil.which("dot")


def render(dot: str, fmt: str, *, title: str = "", timeout: float = RENDER_TIMEOUT_S,
           program: str | None = None) -> bytes:
    """DOT text rendered as `fmt` (dot, svg, png or html): the bytes of the file."""
    if fmt not in FORMATS:
        raise ResdslError(f"unknown graph format `{fmt}`",
                          hint="write .dot, .svg, .png or .html (or pass --format)")
    if fmt == "dot":
        return dot.encode("utf-8")
    exe = program or dot_program()
    if not exe:
        raise ResdslError(f"drawing {fmt.upper()} needs Graphviz's `dot` program, which is "
                          "not on PATH",
                          hint="install Graphviz (Debian/Ubuntu: `apt-get install graphviz`, "
                               "macOS: `brew install graphviz`, conda: `conda install "
                               "graphviz`), or write the DOT text with -o net.dot")
    try:
        proc = subprocess.run([exe, "-Tpng" if fmt == "png" else "-Tsvg"],
                              input=dot.encode("utf-8"), capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ResdslError(f"Graphviz took more than {timeout:.0f} s to lay the graph out",
                          hint="collapse it with --depth 1 or 2") from None
    except OSError as err:
        raise ResdslError(f"cannot run Graphviz's `{exe}` ({err.strerror})") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ResdslError(f"Graphviz failed: {msg[0] if msg else 'exit ' + str(proc.returncode)}")
    if fmt != "html":
        return proc.stdout
    svg = proc.stdout.decode("utf-8")
    svg = svg[svg.find("<svg"):]
    return _HTML.format(title=html.escape(title), svg=svg).encode("utf-8")


_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ font-family: Helvetica, sans-serif; margin: 1em; }}
svg {{ max-width: 100%; height: auto; }}</style></head>
<body><h1>{title}</h1>
{svg}
</body></html>
"""


def format_of(path: str | None, fmt: str | None) -> str:
    """The output format: `fmt` if given, else from the file extension (default dot)."""
    if fmt:
        return fmt
    if not path or path == "-":
        return "dot"
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    ext = {"gv": "dot", "htm": "html"}.get(ext, ext)
    if ext not in FORMATS:
        raise ResdslError(f"cannot tell the graph format from `{path}`",
                          hint="use a .dot, .svg, .png or .html file name, or --format")
    return ext
