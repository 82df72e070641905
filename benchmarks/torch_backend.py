"""PyTorch backend against torchvision, measured in one run on this machine.

    python benchmarks/torch_backend.py [--repeats 20] [--size 224]

1. Forward latency (eval, no_grad, batch 1 and 8) of the module resdsl generates against
   the torchvision model with the same weights, interleaved so both see the same machine
   state; the goal is a ratio of 1.00 within noise.
2. DenseNet-121 training memory (batch 8): bytes autograd saves for backward and the
   process's peak RSS for one forward+backward, with and without memory_efficient.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import resdsl  # noqa: E402

MODELS = ["resnet18", "resnet50", "resnext50_32x4d", "densenet121"]


def latency(model, x, repeats: int) -> list[float]:
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return times


def forward_table(repeats: int, size: int) -> None:
    print(f"Forward latency, eval, {size}x{size}, {torch.get_num_threads()} threads, "
          f"median of {repeats} (ms)")
    print(f"{'model':<18} {'batch':>5} {'torchvision':>12} {'resdsl':>9} {'ratio':>7}")
    for name in MODELS:
        tv = getattr(torchvision.models, name)().eval()
        ours = resdsl.load(ROOT / f"specs/{name}.arch").to_torch().eval()
        ours.load_state_dict(tv.state_dict())
        for batch in (1, 8):
            x = torch.randn(batch, 3, size, size)
            latency(tv, x, 2), latency(ours, x, 2)            # warm-up
            a, b = [], []
            for _ in range(repeats):                           # interleave
                a += latency(tv, x, 1)
                b += latency(ours, x, 1)
            ta, tb = statistics.median(a) * 1e3, statistics.median(b) * 1e3
            print(f"{name:<18} {batch:>5} {ta:>12.1f} {tb:>9.1f} {tb / ta:>7.2f}")


def _train_step(memory_efficient: bool) -> None:
    """Child process: one DenseNet-121 training step; prints saved bytes and peak RSS."""
    arch = resdsl.load(ROOT / "specs/densenet121.arch")
    model = arch.to_torch(seed=0, memory_efficient=memory_efficient).train()
    x = torch.randn(8, 3, 224, 224)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).logsumexp(1).mean()
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"saved_mb": saved / 2**20, "peak_rss_mb": peak / 1024,
                      "step_rss_mb": (peak - base) / 1024}))


def memory_table() -> None:
    print("\nDenseNet-121 training step, batch 8, 224x224")
    print(f"{'mode':<18} {'saved for backward (MiB)':>25} {'peak RSS growth (MiB)':>22}")
    rows = {}
    for eff in (False, True):
        out = subprocess.run([sys.executable, __file__, "--child", str(int(eff))],
                             capture_output=True, text=True, check=True).stdout
        rows[eff] = json.loads(out.strip().splitlines()[-1])
        label = "memory_efficient" if eff else "default"
        print(f"{label:<18} {rows[eff]['saved_mb']:>25.0f} {rows[eff]['step_rss_mb']:>22.0f}")
    print(f"{'ratio':<18} {rows[True]['saved_mb'] / rows[False]['saved_mb']:>25.2f} "
          f"{rows[True]['step_rss_mb'] / rows[False]['step_rss_mb']:>22.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _train_step(bool(args.child))
    else:
        forward_table(args.repeats, args.size)
        memory_table()
