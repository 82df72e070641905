"""Relax module -> executable: resdsl's CPU kernels, TVM's GPU schedules, tuning records.

- llvm: convolutions become resdsl's hand-scheduled kernels (`kernels.py`); with a
  tuning database, kernels that were tuned use the best record found instead.
- cuda: convolutions rewritten as im2col + matrix products (`cuda.py`), then the default
  GPU pipeline (legalization, fusion, dlight schedules: its Matmul rule for the
  convolutions); with a tuning database, its records replace the default schedules.

The import graph of this package runs one way: kernels, target, lower, parallel <- compile (this
module: lowering for a target, the passes that make tuning tasks, applying a database)
<- artifact (build, write, load) and tune (search, records), which never import each
other.
"""

from __future__ import annotations

import json
from pathlib import Path

from resdsl.backends.tvm.cuda import convs_to_gemm
from resdsl.backends.tvm.kernels import ConvPlan, parallelize, schedule_conv
from resdsl.backends.tvm.lower import lower
from resdsl.backends.tvm.parallel import tir_pipeline
from resdsl.backends.tvm.target import host_cpu
from resdsl.errors import ResdslError


def default_weights(arch, seed: int = 0) -> dict:
    """The seeded initialisation of the torch backend, so both backends compute the same
    function for the same seed."""
    return arch.to_torch(seed=seed).state_dict()


def lower_for(arch, weights: dict, target, batch: int, tunable: bool = False,
              plans: dict | None = None):
    lanes = host_cpu().vector_lanes if target.kind.name == "llvm" else None
    lowered = lower(arch, weights, batch=batch, lanes=lanes, tunable=tunable, plans=plans)
    if target.kind.name == "cuda":      # convolutions as im2col + matmul (cuda.py)
        lowered.mod, _ = convs_to_gemm(lowered.mod)
    return lowered


def compile_module(arch, weights: dict, target, batch: int = 1, db: str | None = None,
                   stage=None):
    """Lower and compile; returns (executable, Lowered). `stage(text)`, if given, is
    called as each stage of the work starts (lowering, building)."""
    import tvm

    stage = stage or (lambda text: None)
    stage("lowering to Relax")
    if db is not None and not Path(db).is_dir():
        raise ResdslError(f"{db}: no such tuning database",
                          hint="create one with `resdsl tune SPEC --db DIR`")
    llvm = target.kind.name == "llvm"
    plans = load_knob_plans(db) if db is not None and llvm else {}
    # MetaSchedule records (a knob-only database has none: the kernels keep their schedule)
    records = db is not None and (not llvm or _has_records(db))
    lowered = lower_for(arch, weights, target, batch, tunable=records, plans=plans)
    mod = lowered.mod
    if records:
        mod = apply_database(mod, target, db)
        if llvm:
            mod = _parallelize_rest(_drop_reshapes(mod))
    elif llvm:
        mod = llvm_module(mod, target)
    stage(f"building for {target.kind.name}"
          + (f" ({target.arch})" if target.kind.name == "cuda" else ""))
    with target:
        ex = tvm.compile(mod, target=target, tir_pipeline=tir_pipeline(target))
    return ex, lowered


def llvm_module(mod, target):
    """The lowered module ready for an llvm build without a tuning database: the fusion
    passes, reshapes as views, the generic parallel schedule for what is left."""
    return _parallelize_rest(_drop_reshapes(prepare(mod, target)))


def _has_records(db) -> bool:
    path = Path(db) / "database_tuning_record.json"
    return path.exists() and path.stat().st_size > 0


KNOB_FILE = "resdsl_knobs.json"   # one JSON record a line, in the tuning database directory
KNOB_MARGIN = 0.95   # a blocking replaces the hand one only if measured 5% faster


def best_candidates(path, stage: str = "final") -> dict:
    """Task key -> the blocking (ConvPlan) of the best record in a knob file. `stage`:
    "trial", any record that beat the hand plan by KNOB_MARGIN; "confirm", a record of
    the second, longer measurement that did; "final", a record of the last measurement,
    where the confirmed blockings ran together and made the network's convolutions
    faster (the blockings that are applied)."""
    best: dict[str, tuple[float, ConvPlan]] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    limit = 1.0 if stage == "final" else KNOB_MARGIN
    for line in lines:
        try:
            rec = json.loads(line)
            ratio = float(rec.get("ratio", float(rec["ms"]) / float(rec["hand_ms"])))
            plan = ConvPlan(**rec["plan"])
            task, ok = str(rec["task"]), bool(rec["ok"])
        except (ValueError, KeyError, TypeError, ZeroDivisionError):
            continue   # a torn last line of an interrupted run
        if stage != "trial" and not rec.get(stage):
            continue
        if ok and ratio < limit and (task not in best or ratio < best[task][0]):
            best[task] = (ratio, plan)
    return {task: plan for task, (_, plan) in best.items()}


def load_knob_plans(db) -> dict:
    """The blockings `resdsl tune --knobs` found faster than the hand plans, confirmed by
    a second measurement and applied together in the final one (task key -> ConvPlan)."""
    return best_candidates(Path(db) / KNOB_FILE, stage="final")


def _drop_reshapes(mod):
    """Reshapes as views, and no code for them: tvm.compile turns calls of reshape
    PrimFuncs into zero-copy views too, but only after the PrimFuncs are there, and it
    compiles them all the same (DenseNet-121: 64 of them, about 4 s of its build)."""
    from tvm import relax
    mod = relax.transform.RewriteDataflowReshape()(mod)
    return relax.transform.DeadCodeElimination(["main"])(mod)


def _parallelize_rest(mod):
    """Give every PrimFunc that is still unscheduled the generic parallel schedule."""
    from tvm import tirx

    for gvar, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc) and not (
                func.attrs is not None and "tirx.is_scheduled" in func.attrs):
            mod[gvar] = parallelize(func)
    return mod


def prepare(mod, target):
    """The passes that make the tasks: legalize, annotate, fuse. Tuning and applying a
    database run the same ones, so the tasks match the records."""
    import tvm
    from tvm import relax
    seq = tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ])
    with target:
        return seq(mod)


def hand_schedule_untuned(mod):
    """Give resdsl's kernels that the database had no record for their hand schedule."""
    from tvm import tirx

    for gvar, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
            continue
        if "resdsl.kernel" not in func.attrs or "tirx.is_scheduled" in func.attrs:
            continue
        f, plan = json.loads(str(func.attrs["resdsl.kernel"]))
        scheduled = schedule_conv(func, ConvPlan(**plan), f)
        mod[gvar] = scheduled
    return mod


def apply_database(mod, target, db: str):
    """Compile-ready module with the database's records applied."""
    import tvm
    from tvm import relax
    mod = prepare(mod, target)
    with target, tvm.transform.PassContext(opt_level=3):
        mod = relax.transform.MetaScheduleApplyDatabase(str(db))(mod)
    return hand_schedule_untuned(mod)
