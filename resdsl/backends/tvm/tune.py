"""MetaSchedule tuning over a model's kernels, with a database on disk.

`resdsl tune SPEC --target llvm --trials N --db DIR` extracts the model's tasks (for
llvm: resdsl's convolution kernels, unscheduled, plus the fused remaining operators;
for cuda: the fused operators of the default GPU lowering), searches schedules with
MetaSchedule, and records the best in DIR. Running it again with the same DIR resumes:
the records are kept and the search starts from them. `resdsl compile --db DIR` uses the
records; a kernel without one keeps resdsl's hand schedule (llvm) or dlight's (cuda).

Tuning measures candidates on the target: for cuda on a machine without a GPU, pass an
RPC tracker that has a GPU server registered (docs/tvm.md has the commands).

`resdsl tune --knobs` (llvm) searches resdsl's own kernels' blockings instead, timing
each candidate inside the whole network (`knob_tune`); its records go to the same DIR.
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
                                         llvm_module, lower_for, prepare)
from resdsl.backends.tvm.kernels import (ConvPlan, apply_conv_schedule, candidate_plans)
from resdsl.backends.tvm.parallel import tir_pipeline
from resdsl.backends.tvm.target import host_cpu, make_target
from resdsl.errors import ResdslError


def _time_function(mod, target, repeats: int = 20) -> float:
    """Median seconds of one call of mod["main"] on random arguments."""
    import numpy as np
    import tvm
    import tvm.s_tir.meta_schedule as ms
    lib = tvm.compile(mod, target=target, tir_pipeline=tir_pipeline(target))
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


# --- the knob search: the hand kernels' own blockings, measured in the network ------------

@dataclass
class _KnobTask:
    key: str
    args: tuple
    hand: ConvPlan
    calls: int
    candidates: list


class _Network:
    """The whole network built with some blockings, run under the VM's instrument so that
    every convolution call is timed where it runs: its input fresh from the layer before,
    its weights from memory, the other layers around it. Timed alone with a warm cache,
    kernels gained up to 25% that did not show in the network."""

    def __init__(self, arch, weights: dict, target, batch: int, plans: dict, x) -> None:
        import time

        import tvm
        from tvm import relax
        lowered = lower_for(arch, weights, target, batch, plans=plans)
        mod = llvm_module(lowered.mod, target)
        with target:
            executable = tvm.compile(mod, target=target, tir_pipeline=tir_pipeline(target))
        dev = tvm.cpu()
        vm = relax.VirtualMachine(executable, dev)
        self.plans = {key: c["plan"] for key, c in lowered.convs.items()}
        self.calls = list(lowered.conv_calls)
        self._main = vm["main"]
        self._args = [tvm.runtime.tensor(x, dev)] + [
            tvm.runtime.tensor(lowered.params[name], dev) for name in lowered.param_names]
        kernels = {name for _, name in self.calls}
        ticks: list = []
        self._ticks = ticks

        def instrument(func, symbol, before, ret, *args):
            if symbol in kernels:
                ticks.append((symbol, time.perf_counter()))
            return 0
        vm.set_instrument(instrument)

    def run(self):
        """One call of the network: (seconds of each task, summed over its calls; output)."""
        self._ticks.clear()
        out = self._main(*self._args).numpy()
        ticks = self._ticks
        if len(ticks) != 2 * len(self.calls) or any(
                ticks[2 * i][0] != name for i, (_, name) in enumerate(self.calls)):
            raise RuntimeError("the convolution calls did not run in the order lowered")
        per: dict[str, float] = {}
        for i, (task, _) in enumerate(self.calls):
            per[task] = per.get(task, 0.0) + ticks[2 * i + 1][1] - ticks[2 * i][1]
        return per, out


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
    tiles, column-vectorised tiles, columns per parallel task, reduction chunks,
    unrolling) inside the network; the records go to DB/resdsl_knobs.json. Resumes:
    candidates already recorded are not measured again.

    Each round builds the whole network with the next candidate of every kernel at once
    (one build measures as many candidates as the network has kernels), checks its output
    against the hand build's, and runs the two builds in alternation: every kernel's
    ratio is the median over the pairs of its time in the candidate build over its time
    in the hand build, both measured in place. At the end the best candidate of each
    kernel that beat its hand plan by 5% is measured again, all together in one build,
    over twice as many pairs; those confirmed there then run together against the hand
    build, and `compile --db` applies them only if they made the network's convolutions
    2% faster (each kernel can gain while the network does not: a blocking can slow the
    next kernel down)."""
    if trials < 1:
        raise ResdslError(f"--trials must be at least 1, got {trials}")
    with db_lock(db):
        return _knob_tune(arch, trials, db, batch=batch, weights=weights, progress=progress)


def _recorded(path: Path, stage: str = "trial") -> set:
    """(task, plan) pairs with a record in the knob file (of `stage` unless "trial")."""
    seen = set()
    if not path.exists():
        return seen
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            if stage == "trial" or rec.get(stage):
                seen.add((rec["task"], json.dumps(rec["plan"], sort_keys=True)))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue   # a torn last line of an interrupted run
    return seen


NETWORK_MARGIN = 0.98   # confirmed blockings apply only if the network's convolutions gain 2%


def _plan_id(plan: ConvPlan) -> str:
    return json.dumps(dataclasses.asdict(plan), sort_keys=True)


def _knob_tune(arch, trials, db, *, batch, weights, progress) -> TuneReport:
    import statistics

    import numpy as np
    from tqdm import tqdm
    target = make_target("llvm")
    weights = weights if weights is not None else default_weights(arch)
    tasks = knob_tasks(arch, weights, batch, target)

    def macs(t):
        n, cin, h, w, f, k, s, p, d, groups, *_ = t.args
        return t.calls * f * cin // groups * k * k * h * w // (s * s)
    tasks.sort(key=macs, reverse=True)
    path = Path(db) / KNOB_FILE
    done = _recorded(path)
    pending = {t.key: [p for p in t.candidates if (t.key, _plan_id(p)) not in done]
               for t in tasks}
    total = min(trials, sum(len(v) for v in pending.values()))
    bar = tqdm(total=total, desc="tuning knobs", unit="trial", disable=not progress)
    x = np.random.default_rng(0).standard_normal(
        lower_for(arch, weights, target, batch).input_shape, dtype=np.float32)
    hand = _Network(arch, weights, target, batch, {}, x)
    _, ref = hand.run()
    scale = float(np.abs(ref).max()) or 1.0
    times = [hand.run()[0] for _ in range(3)]
    seconds = statistics.median(sum(t.values()) for t in times)
    pairs = max(4, min(10, int(2.0 / max(seconds, 1e-3))))   # about 4 s of runs a round

    def measure(out, plans: dict, pairs: int, stage: str = "trial") -> None:
        error = None
        try:
            cand = _Network(arch, weights, target, batch, plans, x)
            if any(cand.plans.get(key) != plan for key, plan in plans.items()):
                raise RuntimeError("a blocking was not applied")
            _, got = cand.run()
            if float(np.abs(got - ref).max()) > 1e-4 * scale:
                raise RuntimeError("wrong result")
        except Exception as err:  # noqa: BLE001 - a schedule TVM rejects, a wrong result
            error = str(err)[:200]
        ratios: dict = {key: [] for key in plans}
        ms: dict = {key: [] for key in plans}
        hand_ms: dict = {key: [] for key in plans}
        network: list = []     # all convolutions of the candidate build over the hand one's
        for i in range(0 if error else pairs):
            runs = {}
            for name, net in ((("hand", hand), ("cand", cand)) if i % 2 == 0
                              else (("cand", cand), ("hand", hand))):
                runs[name] = net.run()[0]
            network.append(sum(runs["cand"].values()) / sum(runs["hand"].values()))
            for key in plans:
                ratios[key].append(runs["cand"][key] / runs["hand"][key])
                ms[key].append(runs["cand"][key] * 1e3)
                hand_ms[key].append(runs["hand"][key] * 1e3)
        if stage == "final" and error is None and statistics.median(network) > NETWORK_MARGIN:
            # each kernel faster, the network not: the gains did not add up (one kernel's
            # blocking can slow the next one down); apply none of them
            error = (f"together the network's convolutions took "
                     f"{statistics.median(network):.3f} of the hand build's time")
        for key, plan in plans.items():
            rec = {"ok": error is None, "task": key, "plan": dataclasses.asdict(plan),
                   "network": True}
            if ratios[key]:
                rec.update(ms=statistics.median(ms[key]), hand_ms=statistics.median(hand_ms[key]),
                           ratio=statistics.median(ratios[key]))
            else:
                rec.update(ms=0.0, hand_ms=1.0)
            if network:
                rec["network_ratio"] = statistics.median(network)
            if error is not None:
                rec.update(ok=False, error=error)
            if stage != "trial":
                rec[stage] = True
            out.write(json.dumps(rec) + "\n")
        out.flush()

    measured = 0
    try:
        with open(path, "a") as out:
            while measured < total:
                plans = {}
                for t in tasks:
                    if measured < total and pending[t.key]:
                        plans[t.key] = pending[t.key].pop(0)
                        measured += 1
                measure(out, plans, pairs)
                bar.update(len(plans))
            # each kernel's best candidate that beat its hand plan, all in one build,
            # measured again over twice the pairs; then those confirmed there, together,
            # against the hand build: only if the network's convolutions gain are they
            # applied (records of the "final" stage)
            keys = {t.key for t in tasks}
            confirmed = _recorded(path, "confirm")
            best = {key: plan for key, plan in best_candidates(path, "trial").items()
                    if key in keys and (key, _plan_id(plan)) not in confirmed}
            if best:
                measure(out, best, 2 * pairs, "confirm")
            final = {key: plan for key, plan in best_candidates(path, "confirm").items()
                     if key in keys}
            checked = _recorded(path, "final")
            if any((key, _plan_id(plan)) not in checked for key, plan in final.items()):
                measure(out, final, 2 * pairs, "final")
    finally:
        bar.close()
    return TuneReport(len(tasks), measured, str(db))
