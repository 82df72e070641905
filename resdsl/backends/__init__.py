"""Backends: each maps the validated IR to its own code through one table keyed by op
name (sqlglot's TRANSFORMS). An op a backend cannot express is listed in that backend's
`UNSUPPORTED = {op: reason}`; `require_ops` turns such an op in a graph into a clear error.
tests/test_ops.py fails when a backend's table neither covers an op nor lists it there.
"""

from __future__ import annotations

from typing import Any, Mapping

from resdsl.errors import ResdslError
from resdsl.ir.ops import GRAPH_INPUT


def require_ops(g: Any, table: Mapping[str, object],
                unsupported: Mapping[str, str], backend: str) -> None:
    """Refuse, naming the layer, a graph that uses an op `backend` has no entry for."""
    for name, d in g.nodes(data=True):
        op = d["op"]
        if op == GRAPH_INPUT or (op in table and op not in unsupported):
            continue
        from resdsl import extend
        if op in extend.REGISTERED:   # an op added by resdsl.register_op
            entry = extend.lowering(op, backend)
            if entry is not None:
                table[op] = entry   # type: ignore[index]  (removed by unregister_op)
                continue
            raise ResdslError(f"the op `{op}` (registered with resdsl.register_op) has no "
                              f"{backend} lowering", d.get("span"),
                              hint=f"pass {backend}=... to register_op, or use a backend "
                                   "it has a lowering for")
        reason = unsupported.get(op)
        raise ResdslError(f"op `{op}` is not supported by the {backend} backend"
                          + (f": {reason}" if reason else "") + f" (layer `{name}`)",
                          d.get("span"))
