"""MetaSchedule tuning over a model's kernels, with a database on disk.

`resdsl tune SPEC --target llvm --trials N --db DIR` extracts the model's tasks (for
llvm: resdsl's convolution kernels, unscheduled, plus the fused remaining operators;
for cuda: the fused operators of the default GPU lowering), searches schedules with
MetaSchedule, and records the best in DIR. Running it again with the same DIR resumes:
the records are kept and the search starts from them. `resdsl compile --db DIR` uses the
records; a kernel without one keeps resdsl's hand schedule (llvm) or dlight's (cuda).

Tuning measures candidates on the target: for cuda on a machine without a GPU, pass an
RPC tracker that has a GPU server registered (docs/tvm.md has the commands).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resdsl.backends.tvm.compile import default_weights, lower_for, prepare
from resdsl.backends.tvm.kernels import ConvPlan, apply_conv_schedule
from resdsl.backends.tvm.target import make_target
from resdsl.errors import ResdslError


def _time_function(mod, target, repeats: int = 20) -> float:
    """Median seconds of one call of mod["main"] on random arguments."""
    import numpy as np
    import tvm
    import tvm.s_tir.meta_schedule as ms
    lib = tvm.compile(mod, target=target)
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal([int(d) for d in info.shape],
                                                   dtype=np.float32))
            for info in ms.arg_info.ArgInfo.from_prim_func(mod["main"])]
    timer = lib.mod.time_evaluator("main", tvm.cpu(), number=repeats, repeat=3)
    return float(timer(*args).median)


def seed_hand_schedules(mod, target, database) -> int:
    """Record resdsl's hand schedule of every kernel task (with its measured time) in the
    database, unless the database already holds a record for it. The search then starts
    from these, and `compile --db` never picks a record slower than the hand schedule."""
    import tvm.s_tir.meta_schedule as ms
    from tvm import s_tir

    seeded = 0
    for task in ms.relax_integration.extract_tasks(mod, target):
        workload_mod = task.dispatched[0]
        func = workload_mod["main"]
        if func.attrs is None or "resdsl.kernel" not in func.attrs:
            continue
        if database.has_workload(workload_mod):
            continue
        f, plan = json.loads(str(func.attrs["resdsl.kernel"]))
        sch = s_tir.Schedule(workload_mod)
        apply_conv_schedule(sch, ConvPlan(**plan), f)
        secs = _time_function(sch.mod, target)
        workload = database.commit_workload(workload_mod)
        database.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, workload, [secs], target,
            ms.arg_info.ArgInfo.from_prim_func(func)))
        seeded += 1
    return seeded


@dataclass
class TuneReport:
    tasks: int
    trials: int
    db: str


def _progress_callback(total: int, enabled: bool):
    import tvm.s_tir.meta_schedule as ms
    from tqdm import tqdm
    from tvm.ir.utils import derived_object

    bar = tqdm(total=total, desc="tuning", unit="trial", disable=not enabled)

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results) -> None:
            bar.update(len(runner_results))

    return Progress(), bar


def tune(arch, target_kind: str, trials: int, db: str, *, batch: int = 1,
         weights: dict | None = None, rpc: str | None = None, cuda_arch: str | None = None,
         progress: bool = True, trials_per_task: int | None = None) -> TuneReport:
    """Tune the model's kernels; the records go to (and resume from) `db`. Only one
    tune at a time writes a database: a second one on the same `db` fails at once."""
    if trials < 1:
        raise ResdslError(f"--trials must be at least 1, got {trials}")
    with db_lock(db):
        return _tune(arch, target_kind, trials, db, batch=batch, weights=weights, rpc=rpc,
                     cuda_arch=cuda_arch, progress=progress, trials_per_task=trials_per_task)


LOCK_FILE = "resdsl-tune.lock"


@contextmanager
def db_lock(db: str | os.PathLike, timeout: float = 0.5):
    """Hold the tuning database's lock (a file lock on DB/resdsl-tune.lock) while the
    body runs; a ResdslError at once if another tune holds it."""
    from filelock import FileLock, Timeout
    try:
        Path(db).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ResdslError(f"{db}: cannot create the tuning database directory "
                          f"({err.strerror or err})") from None
    lock = FileLock(str(Path(db) / LOCK_FILE), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise ResdslError(f"{db}: another `resdsl tune` holds this tuning database "
                          f"({Path(db) / LOCK_FILE})",
                          hint="wait for it to finish, or tune into another --db") from None
    except OSError as err:
        raise ResdslError(f"{db}: cannot lock the tuning database "
                          f"({err.strerror or err})") from None
    try:
        yield
    finally:
        lock.release()


def _tune(arch, target_kind: str, trials: int, db: str, *, batch: int,
          weights: dict | None, rpc: str | None, cuda_arch: str | None, progress: bool,
          trials_per_task: int | None) -> TuneReport:
    import tvm
    import tvm.s_tir.meta_schedule as ms

    target = make_target(target_kind, cuda_arch)
    runner: Any = "local"
    if target_kind == "cuda":
        if rpc is None:
            if not tvm.cuda(0).exist:
                raise ResdslError("tuning for cuda measures candidates on a GPU, and there "
                                  "is none here",
                                  hint="pass --rpc HOST:PORT:KEY of a TVM RPC tracker with a "
                                       "GPU server (docs/tvm.md), or tune --target llvm")
        else:
            try:
                host, port, key = rpc.rsplit(":", 2)
                runner = ms.runner.RPCRunner(ms.runner.RPCConfig(host, int(port), key))
            except ValueError:
                raise ResdslError(f"--rpc {rpc!r}: expected HOST:PORT:KEY") from None
    weights = weights if weights is not None else default_weights(arch)
    lowered = lower_for(arch, weights, target, batch, tunable=True)
    mod = prepare(lowered.mod, target)
    database = ms.database.JSONDatabase(work_dir=str(db))
    if target_kind == "llvm":
        seed_hand_schedules(mod, target, database)
    tasks = tunable_tasks(mod, target)
    callback, bar = _progress_callback(trials, progress)
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    try:
        ms.relax_integration.tune_relax(
            mod=mod, params={}, target=target, work_dir=str(db), max_trials_global=trials,
            max_trials_per_task=trials_per_task, num_trials_per_iter=min(16, trials),
            runner=runner, database=database, op_names=tasks,
            measure_callbacks=ms.MeasureCallback.create("default") + [callback])
    finally:
        bar.close()
    return TuneReport(len(tasks), trials, str(db))


def tunable_tasks(mod, target) -> list[str]:
    """Names of the tasks worth searching: not the kernels resdsl writes already scheduled
    (concatenations), not reshapes (the VM turns those into zero-copy views)."""
    import tvm.s_tir.meta_schedule as ms
    names = []
    for task in ms.relax_integration.extract_tasks(mod, target):
        func = task.dispatched[0]["main"]
        if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
            continue
        if task.task_name.startswith("reshape"):
            continue
        names.append(task.task_name)
    return names
