"""TVM llvm artifacts against PyTorch eager and ONNX Runtime, in one run on this machine.

    python benchmarks/tvm_backend.py [--models resnet50 ...] [--batches 1 8] [--rounds 5]
                                     [--repeats 3] [--trials 0 [--knobs]] [--no-eager]
                                     [--quick] [--json FILE]

--models takes any of the zoo's model names (`resdsl models` lists them; resolved as
`resdsl.zoo.find` does). For each model and batch (at the spec's input size, 224x224 for
the ImageNet models; the same weights everywhere) it builds the untuned TVM artifact
(resdsl's hand-scheduled kernels; the build time is printed) and, when a tuning database
tuning/<model>-b<batch>-llvm exists (or --trials N asks to make one: with MetaSchedule, or
with `--knobs` the knob search of `resdsl tune --knobs`), the tuned one; then measures
PyTorch eager (unless --no-eager), ONNX Runtime (CPU provider, the model from resdsl's
onnx backend), TVM untuned and TVM tuned.

The machine is shared and noisy, so nothing is measured in one block: the runtimes take
turns, round-robin, for --rounds rounds of --repeats calls each (the order rotated every
round), and each figure is the median with its min and max over all calls. Two
microbenchmarks take their turn in the same rounds: the FMA peak (a TVM loop of fused
multiply-adds on register accumulators, on every core: the ceiling any kernel here can
reach) and a float32 matrix product (numpy's and torch's BLAS, the faster of the two).
The TVM convolutions of each class (1x1, 3x3, the 7x7 stem, grouped) are reported in
GFLOP/s and as a fraction of the FMA peak. The convolution
classes are timed as the artifact's own kernels, each compiled alone and run on random
data (in cache, so a little faster than inside the network), weighted by how often the
network calls them. Kernel times and the peaks are the best of their samples (on a loaded
machine the best is what each reached when it had the cores, so the two compare).

--quick is a smoke run: resnet20 (or the given --models), batch 1, 2 rounds of 2 calls.
Needs `pip install -e .[tvm,bench]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import resdsl  # noqa: E402
from resdsl.backends.tvm.artifact import build, load_artifact, write_artifact  # noqa: E402
from resdsl.backends.tvm.target import host_cpu, make_target  # noqa: E402
from resdsl.zoo import find, list_models  # noqa: E402

PAUSE = 0.1   # seconds between runtimes: the previous one's worker threads stop spinning
CLASSES = ["1x1", "3x3", "stem 7x7", "grouped"]


def round_robin(entries: dict, rounds: int, repeats: int, warmup: int = 1) -> dict:
    """entries: name -> sample() returning one measurement. Every entry is sampled
    `repeats` times per round, entries taking turns (the order rotated every round);
    returns name -> list of samples."""
    names = list(entries)
    samples: dict[str, list] = {n: [] for n in names}
    for n in names:
        for _ in range(warmup):
            entries[n]()
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            time.sleep(PAUSE)
            for _ in range(repeats):
                samples[n].append(entries[n]())
    return samples


def timed(fn):
    """A sample() that times one call of fn, in ms."""
    def sample() -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return sample


def stats(values: list) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


class Sgemm:
    """float32 matrix products (n x n) with numpy's and torch's BLAS; a sample is the
    better GFLOP/s of the two."""

    def __init__(self, n: int = 1536) -> None:
        rng = np.random.default_rng(0)
        self.n = n
        self.a, self.b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        self.ta, self.tb = torch.from_numpy(self.a), torch.from_numpy(self.b)

    def __call__(self) -> float:
        best = 0.0
        for fn in (lambda: self.a @ self.b, lambda: torch.mm(self.ta, self.tb)):
            t = time.perf_counter()
            fn()
            best = max(best, 2 * self.n ** 3 / (time.perf_counter() - t) / 1e9)
        return best


class FmaPeak:
    """The machine's FMA peak as TVM reaches it: on every core, as many vector
    accumulators as the registers hold (16 with AVX-512, 8 with AVX2), each updated by a
    fused multiply-add per step from registers and L1, no memory traffic. A sample is its
    GFLOP/s."""

    ITERS = 100_000

    def __init__(self) -> None:
        import tvm
        from tvm.script import from_source
        from tvm.script import tirx as T

        cpu = host_cpu()
        p, lanes = cpu.cores, cpu.vector_lanes
        acc = 16 if lanes >= 16 else 8
        src = f"""
@T.prim_func
def main(x: T.Buffer(({p}, {lanes}), "float32"), m: T.Buffer(({lanes},), "float32"),
         out: T.Buffer(({p}, {acc}, {lanes}), "float32")):
    T.func_attr({{"tirx.noalias": True, "tirx.is_scheduled": True}})
    for t in T.parallel({p}):
        acc = T.alloc_buffer(({acc}, {lanes}), "float32", scope="local")
        for j in T.unroll({acc}):
            for lane in T.vectorized({lanes}):
                acc[j, lane] = x[t, lane] + T.float32(j)
        for i in range({self.ITERS}):
            for j in T.unroll({acc}):
                for lane in T.vectorized({lanes}):
                    acc[j, lane] = acc[j, lane] * m[lane] + x[t, lane]
        for j in T.unroll({acc}):
            for lane in T.vectorized({lanes}):
                out[t, j, lane] = acc[j, lane]
"""
        func = from_source(src, extra_vars={"T": T})
        lib = tvm.compile(tvm.IRModule({"main": func}), target=make_target("llvm"))
        self.args = [tvm.runtime.tensor(np.full(s, 0.5, np.float32))
                     for s in ((p, lanes), (lanes,), (p, acc, lanes))]
        self.timer = lib.mod.time_evaluator("main", tvm.cpu(), number=5, repeat=1)
        self.flops = 2 * p * acc * lanes * self.ITERS

    def __call__(self) -> float:
        return self.flops / float(self.timer(*self.args).mean) / 1e9


def ort_session(arch, weights):
    """ONNX Runtime on resdsl's own ONNX backend (batch norm folded, as TVM folds it)."""
    import onnxruntime as ort
    proto = arch.to_onnx(weights, fold_bn=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def conv_kernels(arch, weights, batch: int, db: str | None = None):
    """The artifact's convolution kernels, each compiled alone: a list of
    (class, calls in the network, MACs a call, sample() -> ms a call)."""
    import tvm
    import tvm.s_tir.meta_schedule as ms
    from tvm import relax, tirx

    from resdsl.backends.tvm.compile import (_drop_reshapes, _parallelize_rest,
                                             apply_database, prepare)
    from resdsl.backends.tvm.lower import lower
    from resdsl.backends.tvm.parallel import tir_pipeline
    target = make_target("llvm")
    # one kernel per shape (the network shares some across input-channel counts)
    lowered = lower(arch, weights, batch=batch, lanes=host_cpu().vector_lanes,
                    tunable=db is not None, shared=False)
    mod = apply_database(lowered.mod, target, db) if db else prepare(lowered.mod, target)
    mod = _parallelize_rest(_drop_reshapes(mod))
    calls: dict[str, int] = {}
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) \
                    and value.op.name == "relax.call_tir":
                name = value.args[0].name_hint
                calls[name] = calls.get(name, 0) + 1
    rng = np.random.default_rng(0)
    out = []
    for gvar, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None \
                or "resdsl.conv" not in func.attrs or gvar.name_hint not in calls:
            continue
        info = json.loads(str(func.attrs["resdsl.conv"]))
        lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                          target=target, tir_pipeline=tir_pipeline(target))
        args = [tvm.runtime.tensor(rng.standard_normal([int(d) for d in a.shape],
                                                       dtype=np.float32))
                for a in ms.arg_info.ArgInfo.from_prim_func(func)]
        once = lib.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=1)
        est = max(float(once(*args).mean), 1e-6)
        timer = lib.mod.time_evaluator("main", tvm.cpu(), number=max(1, int(0.01 / est)),
                                   repeat=1)
        out.append((info["class"], calls[gvar.name_hint], info["macs"],
                    lambda t=timer, a=args: float(t(*a).mean) * 1e3))
    return out


def measure(name, arch, batch, args, width):
    """Build, measure (interleaved) and print one model at one batch: its row."""
    from resdsl.backends.tvm.tune import knob_tune, tune

    model = arch.to_torch(seed=0).eval()
    weights = model.state_dict()
    x = np.random.default_rng(0).standard_normal((batch, *arch.input_shape), dtype=np.float32)
    xt = torch.from_numpy(x)
    out = ROOT / "build" / "bench" / f"{name}-b{batch}"
    t = time.perf_counter()   # as `resdsl compile` takes: lowering, building, writing
    write_artifact(build(arch, "llvm", weights=weights, batch=batch), out, force=True)
    build_s = time.perf_counter() - t
    untuned = load_artifact(out)
    db = ROOT / "tuning" / f"{name}-b{batch}-llvm"
    if not db.exists() and args.trials:
        if args.knobs:
            knob_tune(arch, args.trials, str(db), batch=batch, weights=weights,
                      progress=False)
        else:
            tune(arch, "llvm", args.trials, str(db), batch=batch, weights=weights,
                 progress=False)
    tuned = None
    if db.exists():
        tuned_dir = ROOT / "build" / "bench" / f"{name}-b{batch}-tuned"
        write_artifact(build(arch, "llvm", weights=weights, batch=batch, db=str(db)),
                       tuned_dir, force=True)
        tuned = load_artifact(tuned_dir)
    sess = ort_session(arch, weights)
    feed = sess.get_inputs()[0].name

    def eager():
        with torch.no_grad():
            model(xt)
    entries = {} if args.no_eager else {"eager": timed(eager)}
    entries |= {"ort": timed(lambda: sess.run(None, {feed: x})),
               "untuned": timed(lambda: untuned(x))}
    if tuned is not None:
        entries["tuned"] = timed(lambda: tuned(x))
    kernels = conv_kernels(arch, weights, batch)
    kernel_samples: list[list[float]] = [[] for _ in kernels]

    def kernel_round():   # each kernel once, in turn with the runtimes
        for samples, (_, _, _, sample) in zip(kernel_samples, kernels):
            samples.append(sample())
        return 0.0
    entries["peak"] = FmaPeak()
    entries["sgemm"] = Sgemm()
    entries["kernels"] = kernel_round
    samples = round_robin(entries, args.rounds, args.repeats)
    runtimes = {k: stats(v) for k, v in samples.items() if k not in ("peak", "sgemm", "kernels")}
    # the best of each (fastest kernel call, highest peak sample): on a loaded machine
    # the best is what each reached when it had the cores, and the two compare
    peak_gflops = max(samples["peak"])
    sgemm_gflops = max(samples["sgemm"])
    macs = arch.macs() * batch
    classes = []
    for cls in CLASSES + sorted({k[0] for k in kernels} - set(CLASSES)):
        mine = [(n, m, min(s)) for (c, n, m, _), s in zip(kernels, kernel_samples)
                if c == cls]
        if not mine:
            continue
        ms_total = sum(n * t for n, _, t in mine)
        gmacs = sum(n * m for n, m, _ in mine) / 1e9
        gflops = 2 * gmacs / (ms_total / 1e3)
        classes.append({"class": cls, "layers": sum(n for n, _, _ in mine),
                        "kernels": len(mine), "gflop": 2 * gmacs, "ms": ms_total,
                        "gflops": gflops, "of_peak": gflops / peak_gflops})
    row = {"model": name, "batch": batch, "build_s": build_s, "gflop": 2 * macs / 1e9,
           "peak_gflops": peak_gflops, "sgemm_gflops": sgemm_gflops, "runtimes": runtimes,
           "classes": classes,
           "tuning_records": _records(db) if tuned is not None else None}

    def cell(key):
        if key not in runtimes:
            return "-"
        r = runtimes[key]
        return f"{r['median']:.1f} ({r['min']:.1f}-{r['max']:.1f})"
    ratio = runtimes["untuned"]["median"] / runtimes["ort"]["median"]
    gain = (f"{runtimes['tuned']['median'] / runtimes['untuned']['median']:.2f}"
            if "tuned" in runtimes else "-")
    print(f"{name:<{width}}{batch:>5} {build_s:>7.1f} {cell('eager'):>21} {cell('ort'):>21} "
          f"{cell('untuned'):>21} {cell('tuned'):>21} {ratio:>8.2f} {gain:>8}", flush=True)
    return row


def _records(db: Path) -> int:
    """Records in a tuning database: MetaSchedule's and the knob search's."""
    paths = [db / "database_tuning_record.json", db / "resdsl_knobs.json"]
    return sum(sum(1 for _ in open(p)) for p in paths if p.exists())


def print_classes(rows, width) -> None:
    print("\nconvolutions by class (TVM untuned kernels, each compiled alone, best call; "
          "GFLOP/s as a fraction of the best FMA peak sample of the same rounds)")
    print(f"{'model':<{width}}{'batch':>5} {'class':<9}{'layers':>7}{'GFLOP':>8}{'ms':>9}"
          f"{'GFLOP/s':>9}{'of peak':>9}")
    for row in rows:
        for c in row["classes"]:
            print(f"{row['model']:<{width}}{row['batch']:>5} {c['class']:<9}{c['layers']:>7}"
                  f"{c['gflop']:>8.2f}{c['ms']:>9.2f}{c['gflops']:>9.1f}{c['of_peak']:>8.0%}")
        r = row["runtimes"]
        whole = {k: row["gflop"] / (r[k]["min"] / 1e3) for k in ("ort", "untuned")}  # best
        frac = {k: v / row["peak_gflops"] for k, v in whole.items()}
        print(f"{row['model']:<{width}}{row['batch']:>5} {'network':<9}{'':>7}"
              f"{row['gflop']:>8.2f}{'':>9}  ORT {whole['ort']:.0f} ({frac['ort']:.0%}), "
              f"TVM {whole['untuned']:.0f} ({frac['untuned']:.0%}); "
              f"FMA peak {row['peak_gflops']:.0f}, sgemm {row['sgemm_gflops']:.0f} GFLOP/s")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", metavar="NAME", default=None,
                        help="zoo model names (any of `resdsl models`; default: resnet50 "
                             "resnext50_32x4d densenet121; resnet20 with --quick)")
    parser.add_argument("--batches", nargs="+", type=int, default=None,
                        help="batch sizes (default: 1 8; 1 with --quick)")
    parser.add_argument("--rounds", type=int, default=5, help="round-robin rounds")
    parser.add_argument("--repeats", type=int, default=3,
                        help="calls of each runtime per round")
    parser.add_argument("--trials", type=int, default=0,
                        help="MetaSchedule trials to make a tuning database with when a "
                             "model has none yet (default 0: only existing databases)")
    parser.add_argument("--knobs", action="store_true",
                        help="make missing databases with the knob search (`resdsl tune "
                             "--knobs`) instead of MetaSchedule")
    parser.add_argument("--no-eager", action="store_true",
                        help="leave PyTorch eager out (on a loaded 2-core machine its two "
                             "OpenMP threads can take seconds a call)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: resnet20, batch 1, 2 rounds of 2 calls")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write the rows here (default build/bench/tvm_backend.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models = args.models or ["resnet20"]
        args.batches = args.batches or [1]
        args.rounds, args.repeats = min(args.rounds, 2), min(args.repeats, 2)
    args.models = args.models or ["resnet50", "resnext50_32x4d", "densenet121"]
    args.batches = args.batches or [1, 8]
    specs = {name: find(name) for name in args.models}   # all resolved before any work
    unknown = [name for name, path in specs.items() if path is None]
    if unknown:
        parser.error(f"no zoo model named {', '.join(unknown)} (models: "
                     f"{', '.join(list_models())})")
    width = max(17, *(len(name) + 1 for name in args.models))
    import warnings
    warnings.filterwarnings("ignore")
    cpu = host_cpu()
    print(f"machine: {platform.processor() or platform.machine()}, {cpu.cores} cores, "
          f"llvm target {cpu.mcpu} ({cpu.vector_lanes} float lanes), torch "
          f"{torch.__version__} with {torch.get_num_threads()} threads; "
          f"{args.rounds} rounds x {args.repeats} calls, interleaved")
    print(f"{'model':<{width}}{'batch':>5} {'build s':>7} {'eager ms':>21} {'ORT ms':>21} "
          f"{'TVM untuned ms':>21} {'TVM tuned ms':>21} {'TVM/ORT':>8} {'tuned/un':>8}")
    rows = []
    for name in args.models:
        arch = resdsl.load(specs[name])
        for batch in args.batches:
            rows.append(measure(name, arch, batch, args, width))
    print("(median (min-max) ms over the interleaved calls; build s: the untuned llvm "
          "build and writing its artifact; TVM/ORT: untuned median over ORT median; "
          "tuned/un: tuned median over untuned median)")
    print_classes(rows, width)
    out = Path(args.json) if args.json else ROOT / "build" / "bench" / "tvm_backend.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
