"""Relax module -> executable: resdsl's CPU kernels, TVM's GPU schedules, tuning records.

- llvm: convolutions become resdsl's hand-scheduled kernels (`kernels.py`); with a
  tuning database, kernels that were tuned use the best record found instead.
- cuda: the default GPU pipeline (legalization, fusion, dlight schedules with thread
  bindings); with a tuning database, its records replace the default schedules.
"""

from __future__ import annotations

from pathlib import Path

from resdsl.errors import ResdslError


def lower_for(arch, weights: dict, target, batch: int, tunable: bool = False):
    from resdsl.backends.tvm.lower import lower
    from resdsl.backends.tvm.target import host_cpu
    lanes = host_cpu().vector_lanes if target.kind.name == "llvm" else None
    return lower(arch, weights, batch=batch, lanes=lanes, tunable=tunable)


def compile_module(arch, weights: dict, target, batch: int = 1, db: str | None = None,
                   stage=None):
    """Lower and compile; returns (executable, Lowered). `stage(text)`, if given, is
    called as each stage of the work starts (lowering, building)."""
    import tvm

    from resdsl.backends.tvm.tune import apply_database, prepare
    stage = stage or (lambda text: None)
    stage("lowering to Relax")
    lowered = lower_for(arch, weights, target, batch, tunable=db is not None)
    mod = lowered.mod
    if db is not None:
        if not Path(db).is_dir():
            raise ResdslError(f"{db}: no such tuning database",
                              hint="create one with `resdsl tune SPEC --db DIR`")
        mod = apply_database(mod, target, db)
    elif target.kind.name == "llvm":
        mod = prepare(mod, target)
    if target.kind.name == "llvm":
        mod = _parallelize_rest(mod)
    stage(f"building for {target.kind.name}"
          + (f" ({target.arch})" if target.kind.name == "cuda" else ""))
    with target:
        ex = tvm.compile(mod, target=target)
    return ex, lowered


def _parallelize_rest(mod):
    """Give every PrimFunc that is still unscheduled the generic parallel schedule."""
    from tvm import tirx

    from resdsl.backends.tvm.kernels import parallelize
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc) and not (
                func.attrs is not None and "tirx.is_scheduled" in func.attrs):
            mod[gvar] = parallelize(func)
    return mod
