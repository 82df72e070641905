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

import dataclasses
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resdsl.backends.tvm.compile import (KNOB_FILE, best_candidates, default_weights,
                                         lower_for, prepare)
from resdsl.backends.tvm.kernels import (ConvPlan, apply_conv_schedule, candidate_plans,
                                         conv_func, pack_weights)
from resdsl.backends.tvm.target import host_cpu, make_target
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


# --- the knob search: the hand kernels' own blockings, measured ---------------------------

@dataclass
class _KnobTask:
    key: str
    args: tuple
    hand: ConvPlan
    calls: int
    candidates: list


class _KernelBench:
    """Compile one convolution kernel for a plan, check it against the hand kernel's
    output, and time it (and the hand kernel right after it: the ratio is what counts on
    a noisy machine)."""

    def __init__(self, target, task: _KnobTask) -> None:
        import numpy as np
        self.np, self.target, self.task = np, target, task
        n, cin, h, w, f, k, s, p, d, groups, residual, relu = task.args
        rng = np.random.default_rng(0)
        oh = (h + 2 * p - d * (k - 1) - 1) // s + 1
        ow = (w + 2 * p - d * (k - 1) - 1) // s + 1
        self.data = rng.standard_normal((n, cin, h, w), dtype=np.float32)
        self.weight = rng.standard_normal((f, cin // groups, k, k), dtype=np.float32)
        self.bias = rng.standard_normal(f, dtype=np.float32)
        self.res = rng.standard_normal((n, f, oh, ow), dtype=np.float32) if residual else None
        self.out_shape = (n, f, oh, ow)
        self.hand = self.build(task.hand)
        self.ref = self.run_once(self.hand)

    def build(self, plan: ConvPlan):
        import tvm

        func = conv_func(*self.task.args[:10], plan, *self.task.args[10:])
        lib = tvm.compile(tvm.IRModule({"main": func}), target=self.target)
        groups = self.task.args[9]
        args = [self.data, pack_weights(self.weight, groups, plan), self.bias]
        if self.res is not None:
            args.append(self.res)
        args = [tvm.runtime.tensor(a) for a in args]
        args.append(tvm.runtime.tensor(self.np.zeros(self.out_shape, self.np.float32)))
        return lib, args

    def run_once(self, built):
        lib, args = built
        lib["main"](*args)
        return args[-1].numpy()

    def time(self, built) -> float:
        """Median ms of a call, the caches flushed of everything but the input before
        each (inside the network each layer's weights come from memory, once)."""
        import statistics

        import tvm
        lib, args = built
        once = lib.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=1)
        est = max(float(once(*args).mean), 1e-6)
        timer = lib.mod.time_evaluator("main", tvm.cpu(), number=1,
                                       repeat=max(3, min(20, int(0.01 / est))),
                                       f_preproc="cache_flush_cpu_non_first_arg")
        return statistics.median(timer(*args).results) * 1e3

    def measure(self, plan: ConvPlan, pairs: int = 4) -> dict:
        """The candidate against the hand kernel: `pairs` measurements of each, taking
        turns; the ratio is the median of the pairs' ratios (this machine's load moves a
        kernel's time by several times within a minute; within a pair it mostly cancels)."""
        import statistics
        built = self.build(plan)
        got = self.run_once(built)
        scale = float(self.np.abs(self.ref).max()) or 1.0
        if float(self.np.abs(got - self.ref).max()) > 1e-4 * scale:
            return {"ok": False, "ms": 0.0, "hand_ms": 1.0, "error": "wrong result"}
        ms, hand_ms = [], []
        for i in range(pairs):
            if i % 2:
                ms.append(self.time(built))
                hand_ms.append(self.time(self.hand))
            else:
                hand_ms.append(self.time(self.hand))
                ms.append(self.time(built))
        ratio = statistics.median(a / b for a, b in zip(ms, hand_ms))
        return {"ok": True, "ms": statistics.median(ms), "hand_ms": statistics.median(hand_ms),
                "ratio": ratio}


def knob_tasks(arch, weights: dict, batch: int, target) -> list[_KnobTask]:
    """The model's convolution kernels as search tasks, with their candidate blockings."""
    lowered = lower_for(arch, weights, target, batch)
    lanes = host_cpu().vector_lanes
    tasks = []
    for key, c in lowered.convs.items():
        n, cin, h, w, f, k, s, p, d, groups, residual, relu = c["args"]
        cands = candidate_plans(c["plan"], f, cin, groups, c["width"], lanes, k)
        tasks.append(_KnobTask(key, c["args"], c["plan"], c["calls"], cands))
    return tasks


def knob_tune(arch, trials: int, db: str, *, batch: int = 1, weights: dict | None = None,
              progress: bool = True) -> TuneReport:
    """Measure up to `trials` other blockings of the model's convolution kernels (FB x XT
    tiles, columns per parallel task, reduction chunks, unrolling), each checked against
    the hand kernel's output and timed against it; the records go to DB/resdsl_knobs.json.
    Resumes: candidates already recorded are not measured again. The candidates are spread
    over the kernels in turns, the kernels that take the most MACs of the network first."""
    if trials < 1:
        raise ResdslError(f"--trials must be at least 1, got {trials}")
    with db_lock(db):
        return _knob_tune(arch, trials, db, batch=batch, weights=weights, progress=progress)


def _knob_tune(arch, trials, db, *, batch, weights, progress) -> TuneReport:
    from tqdm import tqdm
    target = make_target("llvm")
    weights = weights if weights is not None else default_weights(arch)
    tasks = knob_tasks(arch, weights, batch, target)

    def macs(t):
        n, cin, h, w, f, k, s, p, d, groups, *_ = t.args
        return t.calls * f * cin // groups * k * k * h * w // (s * s)
    tasks.sort(key=macs, reverse=True)
    path = Path(db) / KNOB_FILE
    done = set()
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                done.add((rec["task"], json.dumps(rec["plan"], sort_keys=True)))
            except (ValueError, KeyError, TypeError):
                continue
    queue = []   # (task, plan) in turns over the tasks
    for i in range(max((len(t.candidates) for t in tasks), default=0)):
        for t in tasks:
            if i < len(t.candidates):
                plan = t.candidates[i]
                if (t.key, json.dumps(dataclasses.asdict(plan), sort_keys=True)) not in done:
                    queue.append((t, plan))
    queue = queue[:trials]
    benches: dict[str, _KernelBench] = {}
    bar = tqdm(total=len(queue), desc="tuning knobs", unit="trial", disable=not progress)

    def measure(out, task, plan, **extra):
        try:
            if task.key not in benches:
                benches[task.key] = _KernelBench(target, task)
            rec = benches[task.key].measure(plan, pairs=8 if extra else 4)
        except Exception as err:  # noqa: BLE001 - a schedule TVM rejects
            rec = {"ok": False, "ms": 0.0, "hand_ms": 1.0, "error": str(err)[:200]}
        rec.update(task=task.key, plan=dataclasses.asdict(plan), **extra)
        out.write(json.dumps(rec) + "\n")
        out.flush()
    try:
        with open(path, "a") as out:
            for task, plan in queue:
                measure(out, task, plan)
                bar.update(1)
            # each kernel's best candidate, if it beat the hand plan, measured again (twice
            # as long): only confirmed records are applied
            by_key = {t.key: t for t in tasks}
            confirmed = set()
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    if rec.get("confirm"):
                        confirmed.add((rec["task"], json.dumps(rec["plan"], sort_keys=True)))
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
            for key, plan in best_candidates(path, confirmed=False).items():
                plan_id = json.dumps(dataclasses.asdict(plan), sort_keys=True)
                if key in by_key and (key, plan_id) not in confirmed:
                    measure(out, by_key[key], plan, confirm=True)
    finally:
        bar.close()
    return TuneReport(len(tasks), len(queue), str(db))
