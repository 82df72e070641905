"""TVM llvm artifacts against PyTorch eager and ONNX Runtime, in one run on this machine.

    python benchmarks/tvm_backend.py [--trials 32] [--repeats 10] [--models resnet50 ...]

--models takes any of the zoo's model names (`resdsl models` lists them; resolved as
`resdsl.zoo.find` does). For each model and batch (1 and 8, at the spec's input size,
224x224 for the ImageNet models; the same weights everywhere):
PyTorch eager, ONNX Runtime (CPU provider, the model from resdsl's onnx backend),
TVM untuned (resdsl's hand-scheduled kernels) and TVM tuned (MetaSchedule records from
`resdsl tune` in tuning/<model>-b<batch>-llvm; tuned here with --trials if that database
does not exist yet). Each figure is the median latency in ms, with its ratio to PyTorch
eager (lower is faster). Needs `pip install -e .[tvm,bench]`.
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
from resdsl.backends.tvm.target import host_cpu  # noqa: E402
from resdsl.backends.tvm.tune import tune  # noqa: E402
from resdsl.zoo import find, list_models  # noqa: E402


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    # let the previous runtime's worker threads stop spinning: they share the 2 cores
    time.sleep(1.0)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def ort_session(arch, weights):
    """ONNX Runtime on resdsl's own ONNX backend (batch norm folded, as TVM folds it)."""
    import onnxruntime as ort
    proto = arch.to_onnx(weights, fold_bn=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def records(db: Path) -> int:
    path = db / "database_tuning_record.json"
    return sum(1 for _ in open(path)) if path.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        default=["resnet50", "resnext50_32x4d", "densenet121"],
                        help="zoo model names (any of `resdsl models`; default: %(default)s)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--trials", type=int, default=32,
                        help="trials to tune with when a model has no database yet")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
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
          f"{torch.__version__} with {torch.get_num_threads()} threads")
    print(f"{'model':<{width}}{'batch':>5} {'eager ms':>9} {'ORT ms':>14} {'TVM untuned ms':>16} "
          f"{'TVM tuned ms':>15} {'trials':>7}")
    rows = []
    for name in args.models:
        arch = resdsl.load(specs[name])
        model = arch.to_torch(seed=0).eval()
        weights = model.state_dict()
        for batch in args.batches:
            x = np.random.default_rng(0).standard_normal((batch, *arch.input_shape),
                                                         dtype=np.float32)
            xt = torch.from_numpy(x)
            with torch.no_grad():
                eager = median_ms(lambda m=model, a=xt: m(a), args.repeats)
            sess = ort_session(arch, weights)
            feed = sess.get_inputs()[0].name
            ort_ms = median_ms(lambda s=sess, a=x, f=feed: s.run(None, {f: a}), args.repeats)
            out = ROOT / "build" / "bench" / f"{name}-b{batch}"
            write_artifact(build(arch, "llvm", weights=weights, batch=batch), out, force=True)
            time.sleep(1.0)
            untuned = load_artifact(out).benchmark(x, repeats=args.repeats)["median_ms"]
            db = ROOT / "tuning" / f"{name}-b{batch}-llvm"
            if not db.exists() and args.trials:
                tune(arch, "llvm", args.trials, str(db), batch=batch, weights=weights,
                     progress=False)
            tuned = trials = None
            if db.exists():
                write_artifact(build(arch, "llvm", weights=weights, batch=batch, db=str(db)),
                               out, force=True)
                time.sleep(1.0)
                tuned = load_artifact(out).benchmark(x, repeats=args.repeats)["median_ms"]
                trials = records(db)
            row = dict(model=name, batch=batch, eager=eager, ort=ort_ms, untuned=untuned,
                       tuned=tuned, trials=trials)
            rows.append(row)

            def cell(v, base=eager):
                return f"{v:7.1f} ({v / base:4.2f}x)" if v is not None else "-"
            print(f"{name:<{width}}{batch:>5} {eager:>9.1f} {cell(ort_ms):>14} {cell(untuned):>16} "
                  f"{cell(tuned):>15} {trials if trials is not None else '-':>7}", flush=True)
    out = ROOT / "build" / "bench" / "tvm_backend.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print("(ratios are to PyTorch eager; trials = tuning records in the database, the hand "
          "schedules it was seeded with included)")


if __name__ == "__main__":
    main()
