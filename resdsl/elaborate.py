"""AST + parameters -> graph IR. The elaborator lives in `resdsl.elab`, one module per
part of the language; this module keeps the entry points importable from here.
"""

from resdsl.elab import BlockRef, ModuleEnv, Tensor, check_value, elaborate, is_model

__all__ = ["BlockRef", "ModuleEnv", "Tensor", "check_value", "elaborate", "is_model"]
