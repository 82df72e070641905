"""The graph IR and the op registry."""

from resdsl.ir.graph import from_json, inputs_of, new_graph, to_json
from resdsl.ir.ops import OPS, OpDef, Shape

__all__ = ["OPS", "OpDef", "Shape", "from_json", "inputs_of", "new_graph", "to_json"]
