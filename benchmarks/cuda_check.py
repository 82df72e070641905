"""TVM cuda builds against PyTorch on the local NVIDIA GPU: numerics and latency.

    python benchmarks/cuda_check.py [--models resnet50 resnext50_32x4d densenet121]
                                    [--batches 1 32] [--arch sm_90] [--rounds 5]
                                    [--repeats 20] [--quick] [--build-only]

For each model and batch (224x224, the seeded weights of the torch backend) it builds the
cuda artifact (resdsl's cuda lowering: convolutions as im2col + matrix products scheduled
by dlight's Matmul rule; see docs/tvm.md) for the local GPU's architecture (--arch, else
the device's, else sm_90) and prints the build time. Then, on a machine with an NVIDIA GPU
visible to both TVM and PyTorch:

- numerics: the TVM output against PyTorch's on the GPU, max |difference| relative to
  max |reference|, which must be <= 1e-3 (the script exits 1 otherwise);
- latency: TVM, PyTorch eager (cuDNN) and torch.compile take turns round-robin for
  --rounds rounds of --repeats calls each (the order rotated every round; every call
  synchronised); each figure is the median of all calls with min and max. All three
  compute in float32: TF32 is switched off in PyTorch (cuDNN and matmul), as TVM's
  kernels do not use it.

A markdown table follows. Without a GPU (or with --build-only) everything is still built,
the build times are printed, and the line "GPU part skipped: <reason>" says why.
--quick: resnet50 at batch 1 only (or the given --models, batch 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import resdsl  # noqa: E402
from resdsl.backends.tvm.artifact import build  # noqa: E402

MODELS = ["resnet50", "resnext50_32x4d", "densenet121"]
TOLERANCE = 1e-3


def gpu_reason() -> str | None:
    """Why the GPU part cannot run here, or None when it can."""
    import tvm
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not tvm.cuda(0).exist:
        return "no CUDA GPU visible to TVM (tvm.cuda(0).exist is False)"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False)"
    return None


def cuda_arch(asked: str | None) -> str:
    if asked:
        return asked
    from resdsl.backends.tvm.target import local_cuda_arch
    return local_cuda_arch() or "sm_90"


def round_robin(entries: dict, rounds: int, repeats: int, sync) -> dict:
    """name -> call(); each called `repeats` times a round, taking turns, the order
    rotated every round; returns name -> per-call seconds."""
    names = list(entries)
    samples: dict[str, list] = {n: [] for n in names}
    for n in names:                     # warm-up (torch.compile compiles here)
        entries[n]()
        sync()
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            for _ in range(repeats):
                sync()
                t = time.perf_counter()
                entries[n]()
                sync()
                samples[n].append(time.perf_counter() - t)
    return samples


def fmt(samples: list | None) -> str:
    if not samples:
        return "n/a"
    ms = [s * 1e3 for s in samples]
    return f"{statistics.median(ms):.2f} ({min(ms):.2f}-{max(ms):.2f})"


def check_on_gpu(arch, built, batch: int, rounds: int, repeats: int) -> dict:
    """Numerics and latencies of one build against PyTorch eager and torch.compile."""
    import torch
    import tvm
    from tvm import relax

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = tvm.cuda(0)
    vm = relax.VirtualMachine(built.executable, dev)
    params = [tvm.runtime.tensor(built.params[n], dev) for n in built.param_names]
    x = np.random.default_rng(0).standard_normal((batch, *arch.input_shape), dtype=np.float32)
    xt = tvm.runtime.tensor(x, dev)
    model = arch.to_torch(seed=0).eval().cuda()
    xc = torch.from_numpy(x).cuda()
    with torch.no_grad():
        ref = model(xc).cpu().numpy()
    y = vm["main"](xt, *params).numpy()
    rel = float(np.abs(y - ref).max() / np.abs(ref).max())

    def eager():
        with torch.no_grad():
            model(xc)

    entries = {"tvm": lambda: vm["main"](xt, *params), "eager": eager}
    compile_note = None
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(xc)

        def run_compiled():
            with torch.no_grad():
                compiled(xc)
        entries["compile"] = run_compiled
    except Exception as e:     # noqa: BLE001 -- torch.compile missing pieces (triton, a C compiler)
        compile_note = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"

    def sync():
        torch.cuda.synchronize()
        dev.sync()

    samples = round_robin(entries, rounds, repeats, sync)
    return {"rel": rel, "samples": samples, "compile_note": compile_note}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--arch", default=None, help="sm_XY (default: the local GPU's, else sm_90)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="one model (resnet50), batch 1")
    ap.add_argument("--build-only", action="store_true", help="build and time, run nothing")
    args = ap.parse_args(argv)
    models = args.models or (MODELS[:1] if args.quick else MODELS)
    batches = [1] if args.quick else args.batches
    import tvm

    arch_name = cuda_arch(args.arch)
    reason = "asked for with --build-only" if args.build_only else gpu_reason()
    print(f"apache-tvm {tvm.__version__}, target cuda {arch_name}"
          + (f", GPU: {tvm.cuda(0).device_name}" if reason is None else ""))
    rows, failed = [], False
    for name in models:
        arch = resdsl.load(name)
        for batch in batches:
            t = time.perf_counter()
            built = build(arch, "cuda", cuda_arch=arch_name, batch=batch)
            seconds = time.perf_counter() - t
            print(f"built {name} batch {batch} for cuda {arch_name} in {seconds:.1f} s",
                  flush=True)
            row = {"model": name, "batch": batch, "build": seconds}
            if reason is None:
                row.update(check_on_gpu(arch, built, batch, args.rounds, args.repeats))
                ok = row["rel"] <= TOLERANCE
                failed |= not ok
                print(f"  max relative difference to PyTorch cuda: {row['rel']:.2e} "
                      f"({'ok' if ok else 'FAIL'}: <= {TOLERANCE:g})", flush=True)
            rows.append(row)
            del built
    print()
    if reason is not None:
        print(f"GPU part skipped: {reason}.")
        print()
        print("| model | batch | cuda build (s) |")
        print("| --- | --- | --- |")
        for r in rows:
            print(f"| {r['model']} | {r['batch']} | {r['build']:.1f} |")
        return 0
    print(f"Latency in ms: median (min-max) over {args.rounds} interleaved rounds of "
          f"{args.repeats} calls; float32 everywhere (TF32 off in PyTorch).")
    print()
    print("| model | batch | max rel. diff | TVM | PyTorch eager (cuDNN) | torch.compile "
          "| TVM / eager | TVM / compile | build (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        s = r["samples"]
        med = {k: statistics.median(v) for k, v in s.items()}
        ratio_e = f"{med['tvm'] / med['eager']:.2f}x"
        ratio_c = f"{med['tvm'] / med['compile']:.2f}x" if "compile" in med else "n/a"
        print(f"| {r['model']} | {r['batch']} | {r['rel']:.1e} | {fmt(s['tvm'])} | "
              f"{fmt(s['eager'])} | {fmt(s.get('compile'))} | {ratio_e} | {ratio_c} | "
              f"{r['build']:.1f} |")
    notes = {r["compile_note"] for r in rows if r.get("compile_note")}
    for note in notes:
        print(f"\ntorch.compile unavailable: {note}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
