"""The limits that keep an untrusted spec from exhausting time or memory.

A spec is untrusted input: its text decides how many layers, edges, parameters and
activations the network has, and how much work elaboration does. Every limit here is
checked *before* (or while) the work it bounds is done, and exceeding one is a
`ResdslError` at the offending spot with a hint naming the setting that raises it
(`--max-layers N` on the command line, `limits=Limits(max_layers=N)` from Python).

The defaults let every reference spec through with room: ResNet-1202 has 4,209 layers,
DenseNet-201 2,510 edges, ResNeXt-101 (32x8d) 89M parameters and, at 512x512, 530M
activation elements per sample.

>>> from resdsl.limits import Limits
>>> Limits().max_layers
20000
>>> Limits(max_layers=50_000).max_layers
50000
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Limits:
    """Bounds on what one load may do; each can be raised (or lowered) by the caller."""

    max_source_bytes: int = 64 * 1024    # all files of one load (a reference spec is < 2 KB)
    max_files: int = 256                 # files one load may reach through `use`
    max_nesting: int = 100               # depth of an expression (parentheses, operator chains)
    max_layers: int = 20_000             # IR nodes
    max_edges: int = 200_000             # IR edges (dense connectivity grows them quadratically)
    max_params: int = 2_000_000_000      # trainable parameters (8 GB of float32)
    max_activations: int = 2_000_000_000  # output elements of all layers, per sample
    max_steps: int = 100_000             # elaboration steps (ResNet-1202 takes 18,635)

    def describe(self, name: str) -> str:
        """How a user raises one limit: `--max-layers N` / `Limits(max_layers=N)`."""
        return (f"raise it with --{name.replace('_', '-')} N "
                f"(resdsl.load(..., limits=Limits({name}=N)) from Python)")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


DEFAULT = Limits()

# Values a spec computes: integers beyond this magnitude are refused (2**63 - 1, what
# every backend can hold as an int64), and floats must be finite.
MAX_INT = 2**63 - 1
# Digits a number literal may have (a longer literal is certainly out of range; Python
# refuses to convert more than 4300 digits at all).
MAX_LITERAL_DIGITS = 40


def int_out_of_range(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and not -MAX_INT <= v <= MAX_INT


def float_bad(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


def power_bounded(x: int | float, y: int | float) -> bool:
    """Whether x ** y is safe to evaluate: its magnitude stays within MAX_INT (for ints)
    or finite (for floats), judged from the operands before computing it."""
    if isinstance(x, bool) or isinstance(y, bool):
        return True
    if x == 0 or abs(x) == 1:
        return True
    if isinstance(y, int) and isinstance(x, int):
        if y < 0:
            return True  # a float in (0, 1]
        return y * math.log2(abs(x)) < 63
    try:
        ax, fy = abs(float(x)), float(y)
    except OverflowError:
        return False
    if ax == 0:
        return fy >= 0
    return fy * math.log2(ax) < 1000 if math.isfinite(fy) else False
