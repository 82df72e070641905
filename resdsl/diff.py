"""`resdsl diff`: what differs between two networks, layer by layer and in words.

>>> import resdsl
>>> from resdsl.diff import diff
>>> d = diff(resdsl.load("specs/resnet50.arch"), resdsl.load("specs/resnext50_32x4d.arch"))
>>> d.words()[0]
'every 3x3 conv in layer1-4 (16 layers) became grouped (groups=32)'

Layers are matched by name (the dotted names that are also the state_dict keys). A layer
is changed when its op, attributes, output shape, parameter count or inputs differ. The
summary compares parameters, MACs and depth (convolutions and linear layers on the
longest path); the first divergence is the first layer, in execution order, that differs.
`words()` groups repeated changes the way a person describes them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from fractions import Fraction

import networkx as nx

from resdsl.ir.graph import inputs_of, topo_order


@dataclass
class Layer:
    name: str
    op: str
    attrs: dict
    shape: tuple
    params: int
    inputs: tuple

    def kind(self) -> str:
        if self.op == "conv" and isinstance(self.attrs.get("k"), int):
            return f"{self.attrs['k']}x{self.attrs['k']} conv"
        return self.op


@dataclass
class Change:
    name: str
    fields: dict            # field -> (old, new)


@dataclass
class Diff:
    a_name: str
    b_name: str
    a_stats: dict
    b_stats: dict
    added: list[str]
    removed: list[str]
    changed: list[Change]
    first: str | None
    a_layers: dict = field(repr=False, default_factory=dict)
    b_layers: dict = field(repr=False, default_factory=dict)

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed)

    # ---- in words
    def words(self) -> list[str]:
        """Repeated changes grouped: "every 3x3 conv in layer1-4 became grouped"."""
        lines: list[str] = []
        lines += _describe_units(self.added, self.a_layers, "added")
        lines += _describe_units(self.removed, self.b_layers, "removed")
        groups: dict[tuple, list[str]] = {}
        moved = set(self.added) | set(self.removed)
        for ch in self.changed:
            if set(ch.fields) == {"inputs"} and \
                    set(ch.fields["inputs"][1]) - set(ch.fields["inputs"][0]) <= moved:
                continue        # follows from layers added or removed before it
            for fact in _facts(ch, self.a_layers[ch.name]):
                groups.setdefault(fact, []).append(ch.name)
        for fact in sorted(groups, key=lambda f: (_ORDER[f[0]], -len(groups[f]), f[1:].__repr__())):
            names = groups[fact]
            lines.append(_sentence(fact, names, self.a_layers))
        return lines

    def to_json(self) -> dict:
        return {
            "a": {"name": self.a_name, **self.a_stats},
            "b": {"name": self.b_name, **self.b_stats},
            "same": self.same,
            "summary": self.words(),
            "first_divergence": self.first,
            "added": [_layer_json(self.b_layers[n]) for n in self.added],
            "removed": [_layer_json(self.a_layers[n]) for n in self.removed],
            "changed": [{"name": c.name,
                         "fields": {k: [_jsonable(o), _jsonable(n)] for k, (o, n) in
                                    c.fields.items()}} for c in self.changed],
        }

    def render(self) -> str:
        a, b = self.a_stats, self.b_stats
        out = [f"A: {self.a_name}", f"B: {self.b_name}", ""]
        rows = [("", "A", "B", "B - A")]
        for key in ("layers", "params", "macs", "depth"):
            delta = b[key] - a[key]
            pct = f" ({delta / a[key]:+.1%})" if a[key] and delta else ""
            rows.append((key if key != "macs" else "MACs", f"{a[key]:,}", f"{b[key]:,}",
                         f"{delta:+,}{pct}" if delta else "="))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        out += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                          for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
        out.append("")
        if self.same:
            out.append("the two networks are the same, layer by layer")
            return "\n".join(out) + "\n"
        out.append("in words:")
        out += [f"  - {line}" for line in self.words()]
        out.append("")
        out.append(f"first divergence: {self._first_text()}")
        out.append("")
        out.append(f"layers: {len(self.added)} added, {len(self.removed)} removed, "
                   f"{len(self.changed)} changed")
        for n in self.added:
            L = self.b_layers[n]
            out.append(f"  + {n}  {L.op} {_shape(L.shape)}, {L.params:,} params")
        for n in self.removed:
            L = self.a_layers[n]
            out.append(f"  - {n}  {L.op} {_shape(L.shape)}, {L.params:,} params")
        for c in self.changed:
            out.append(f"  ~ {c.name}  " + "; ".join(_field_text(k, o, n)
                                                    for k, (o, n) in c.fields.items()))
        return "\n".join(out) + "\n"

    def _first_text(self) -> str:
        n = self.first
        if n is None:
            return "none"
        if n in self.added:
            return f"{n} is only in B"
        if n in self.removed:
            return f"{n} is only in A"
        ch = next(c for c in self.changed if c.name == n)
        return f"{n}: " + "; ".join(_field_text(k, o, nn) for k, (o, nn) in ch.fields.items())


# ---- building ---------------------------------------------------------------------------


def layers_of(arch) -> dict[str, Layer]:
    rows = {r.name: r for r in arch.rows()}
    g = arch.graph
    out = {}
    for name in topo_order(g):
        d = g.nodes[name]
        attrs = dataclasses.asdict(d["attrs"]) if dataclasses.is_dataclass(d["attrs"]) \
            else dict(d["attrs"] or {})
        out[name] = Layer(name, d["op"], attrs, tuple(d["shape"]), rows[name].params,
                          tuple(inputs_of(g, name)))
    return out


def _depth(arch) -> int:
    """Convolutions and linear layers on the longest path (the "50" of ResNet-50)."""
    g = arch.graph
    best: dict[str, int] = {}
    for name in topo_order(g):
        w = 1 if g.nodes[name]["op"] in ("conv", "linear") else 0
        best[name] = w + max((best[s] for s in inputs_of(g, name)), default=0)
    return max(best.values(), default=0)


def stats(arch) -> dict:
    return {"layers": len(arch.graph), "params": arch.num_params(), "macs": arch.macs(),
            "depth": _depth(arch)}


def diff(a, b) -> Diff:
    """The structural difference between two `Arch`es (B relative to A)."""
    la, lb = layers_of(a), layers_of(b)
    added = [n for n in lb if n not in la]
    removed = [n for n in la if n not in lb]
    changed = []
    for n, x in la.items():
        y = lb.get(n)
        if y is None:
            continue
        fields = {}
        if x.op != y.op:
            fields["op"] = (x.op, y.op)
        else:
            for k in sorted(set(x.attrs) | set(y.attrs)):
                if x.attrs.get(k) != y.attrs.get(k):
                    fields[k] = (x.attrs.get(k), y.attrs.get(k))
        if x.shape != y.shape:
            fields["shape"] = (x.shape, y.shape)
        if x.params != y.params:
            fields["params"] = (x.params, y.params)
        if x.inputs != y.inputs:
            fields["inputs"] = (x.inputs, y.inputs)
        if fields:
            changed.append(Change(n, fields))
    differs = set(removed) | {c.name for c in changed}
    first = next((n for n in la if n in differs), None)
    if first is None and added:
        first = added[0]
    elif added:
        # an added layer that runs before A's first difference comes first
        pos = {n: i for i, n in enumerate(lb)}
        before = [n for n in added if first in pos and pos[n] < pos[first]]
        first = before[0] if before else first
    return Diff(a.name, b.name, stats(a), stats(b), added, removed, changed, first, la, lb)


# ---- words ------------------------------------------------------------------------------

_ORDER = {"op": 0, "attr": 1, "width": 2, "shape": 3, "params": 4, "inputs": 5}


def _facts(ch: Change, old: Layer) -> list[tuple]:
    f = ch.fields
    out: list[tuple] = []
    if "op" in f:
        out.append(("op", f["op"][0], f["op"][1]))
    for k, (o, n) in f.items():
        if k in ("op", "shape", "params", "inputs"):
            continue
        if k == "out" and isinstance(o, int) and isinstance(n, int) and o:
            out.append(("width", Fraction(n, o)))
        else:
            out.append(("attr", old.kind(), k, o, n))
    if "shape" in f and not any(x[0] == "width" for x in out):
        (o, n) = f["shape"]
        if len(o) == len(n) and o[1:] == n[1:] and o[0]:
            r = Fraction(n[0], o[0])
            out.append(("shape", "channels", r) if r in _NICE else
                       ("shape", "delta", n[0] - o[0]))
        else:
            out.append(("shape", "other", o, n))
    if "params" in f and not ({"width", "attr", "op", "shape"} & {x[0] for x in out}):
        out.append(("params",))
    if "inputs" in f and not out:
        out.append(("inputs",))
    return out


_NICE = {Fraction(2): "doubled", Fraction(1, 2): "halved", Fraction(4): "quadrupled",
         Fraction(3): "tripled"}


def _ratio(r: Fraction) -> str:
    return _NICE.get(r, f"x{float(r):g}")


def _sentence(fact: tuple, names: list[str], layers: dict[str, Layer]) -> str:
    where = _where(names, layers, fact)
    kind = fact[0]
    if kind == "op":
        return f"{where} changed op: {fact[1]} -> {fact[2]}"
    if kind == "attr":
        _, _, attr, o, n = fact
        if attr == "groups" and o == 1:
            return f"{where} became grouped (groups={n})"
        return f"{where}: {attr} {_value(o)} -> {_value(n)}"
    if kind == "width":
        return f"widths {_ratio(fact[1])}: the output channels of {where}"
    if kind == "shape":
        if fact[1] == "channels":
            return f"channels {_ratio(fact[2])} (following the widths) in {where}"
        if fact[1] == "delta":
            return f"channels {fact[2]:+,} (following the changes above) in {where}"
        return f"output shape {_shape(fact[2])} -> {_shape(fact[3])} in {where}"
    if kind == "params":
        return f"parameter count changes (a wider input) in {where}"
    return f"inputs rewired in {where}"


def _where(names: list[str], layers: dict[str, Layer], fact: tuple) -> str:
    """`every 3x3 conv in layer1-4 (16 layers)`, `conv1, conv2 of every block in layer1-4
    (32 layers)`, or a short list of names."""
    n = len(names)
    count = f"{n} layer{'s' * (n != 1)}"
    kinds = {layers[x].kind() for x in names}
    tops = sorted({x.split(".")[0] for x in names}, key=_natural)
    if n == 1:
        return names[0]
    in_tops = [L for L in layers.values() if L.name.split(".")[0] in tops]
    if len(kinds) == 1 and fact[0] in ("attr", "op"):
        (k,) = kinds
        if {L.name for L in in_tops if L.kind() == k} == set(names):
            return f"every {k} in {_range(tops)} ({count})"
    parts = [x.split(".") for x in names]
    depth = len(parts[0])
    if depth >= 3 and all(len(p) == depth for p in parts):
        # <container>.<block>.<leaf>: layer1.0.conv1, features.denseblock4.denselayer3.norm1
        leaves = sorted({p[-1] for p in parts}, key=_natural)
        containers = sorted({".".join(p[:-2]) for p in parts}, key=_natural)
        blocks = {tuple(p[:-1]) for p in parts}
        all_blocks = {tuple(q[:-1]) for q in (L.name.split(".") for L in layers.values())
                      if len(q) == depth and ".".join(q[:-2]) in containers}
        stem = {re.sub(r"\d+$", "", p[-2]) for p in parts}
        unit = stem.pop() if len(stem) == 1 and "" not in stem else "block"
        every = f"every {unit}" if blocks == all_blocks else f"{len(blocks)} {unit}s"
        return f"{', '.join(leaves)} of {every} in {_range(containers)} ({count})"
    shown = ", ".join(names[:4])
    return f"{shown}{f' and {n - 4} more' if n > 4 else ''} ({count})"


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _range(names: list[str]) -> str:
    """layer1, layer2, layer3, layer4 -> layer1-4; denselayer25..32 -> denselayer25-32."""
    m = [re.fullmatch(r"(.*?)(\d+)", x) for x in names]
    if len(names) > 1 and all(m) and len({x.group(1) for x in m}) == 1:
        nums = [int(x.group(2)) for x in m]
        if nums == list(range(nums[0], nums[0] + len(nums))):
            return f"{m[0].group(1)}{nums[0]}-{nums[-1]}"
    if len(names) > 4:
        return ", ".join(names[:3]) + f" and {len(names) - 3} more"
    return ", ".join(names)


def _describe_units(names: list[str], there: dict, verb: str) -> list[str]:
    """Layers only in one network (`there` is the other), grouped by the repeated unit
    they belong to: `denseblock3: 8 denselayers added (denselayer25-32): 24 -> 32`."""
    if not names:
        return []
    scopes_there = set()
    for n in there:
        parts = n.split(".")
        scopes_there.update(".".join(parts[:i]) for i in range(1, len(parts)))
    units: dict[str, list[str]] = {}
    loose: list[str] = []
    for n in names:
        parts = n.split(".")
        depth = max((i for i in range(1, len(parts)) if ".".join(parts[:i]) in scopes_there),
                    default=0)
        if depth == 0 or depth == len(parts):
            loose.append(n)
            continue
        parent, unit = ".".join(parts[:depth]), parts[depth]
        units.setdefault(parent, [])
        if unit not in units[parent]:
            units[parent].append(unit)
    lines = []
    for parent, us in units.items():
        stem = re.sub(r"\d+$", "", us[0])
        had = {n.split(".")[len(parent.split("."))] for n in there
               if n.startswith(parent + ".") and re.fullmatch(re.escape(stem) + r"\d+",
                                                              n.split(".")[len(parent.split("."))])}
        label = (stem or "block") + "s" * (len(us) != 1)
        change = (f", {len(had)} -> {len(had) + len(us)}" if verb == "added"
                  else f", {len(had) + len(us)} -> {len(had)}")
        lines.append(f"{parent}: {len(us)} {label} {verb} ({_range(sorted(us, key=_natural))})"
                     + (change if had else ""))
    if loose:
        lines.append(f"{len(loose)} layer{'s' * (len(loose) != 1)} {verb}: "
                     + ", ".join(loose[:6]) + (" ..." if len(loose) > 6 else ""))
    return lines


# ---- text -------------------------------------------------------------------------------


def _shape(s) -> str:
    return "[" + ", ".join(str(x) for x in s) + "]"


def _value(v) -> str:
    if isinstance(v, tuple) and v and isinstance(v[0], str):
        return ", ".join(v)
    if isinstance(v, tuple):
        return _shape(v)
    return str(v)


def _field_text(k: str, o, n) -> str:
    if k == "params":
        return f"params {o:,} -> {n:,}"
    if k == "inputs":
        return f"inputs ({_value(o)}) -> ({_value(n)})"
    return f"{k} {_value(o)} -> {_value(n)}"


def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, Fraction):
        return float(v)
    return v


def _layer_json(L: Layer) -> dict:
    return {"name": L.name, "op": L.op, "attrs": {k: _jsonable(v) for k, v in L.attrs.items()},
            "shape": list(L.shape), "params": L.params, "inputs": list(L.inputs)}


def weights_report(arch, path: str, cast: bool = False) -> str:
    """Will the checkpoint at `path` load into `arch`? The answer, naming every missing,
    unexpected, mis-shaped or unusable tensor (resdsl.weights.check_weights)."""
    from resdsl.weights import check_weights, load_weights
    report = check_weights(arch, load_weights(path, cast=cast), cast=cast)
    head = (f"yes: {path} loads into {arch.name} (strict)" if report.ok
            else f"no: {path} does not load into {arch.name} (strict)")
    return head + ("" if report.ok else "\n" + report.render(path)) + "\n", report.ok


_ = nx  # networkx graphs are what `arch.graph` holds
