"""Gradients at initialisation: plain vs residual vs pre-activation CIFAR networks.

The claim of He et al. (2015, 2016): shortcuts keep the gradient's size from layer to
layer, a plain stack of the same layers does not. Three specs that differ only in their
block -- the plain one is the residual block without its shortcut -- are built at depth
6n + 2 (20, 56, 110), and one backward pass of a random batch (batch norm in training
mode, as at the first step) gives each convolution's weight-gradient norm.

    python examples/gradient_flow.py            # depths 20 56 110, writes gradient_flow.png
    python examples/gradient_flow.py --depths 20 56 --batch 8 --size 16

Printed per network: the ratio of the first convolution's gradient norm to the last's
(1 would be a perfectly even flow).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import resdsl

BLOCKS = {
    "plain": """
block unit(planes, stride = 1) {
    return conv1: conv(planes, k=3, s=stride, p=1) -> bn1: bn -> relu
        -> conv2: conv(planes, k=3, p=1) -> bn2: bn -> relu
}""",
    "residual": """
block unit(planes, stride = 1) {
    main = conv1: conv(planes, k=3, s=stride, p=1) -> bn1: bn -> relu
        -> conv2: conv(planes, k=3, p=1) -> bn2: bn
    skip = shortcut(zeropad(planes, s=stride))
    return relu(main + skip)
}""",
    "pre-activation": """
block unit(planes, stride = 1) {
    main = bn1: bn -> relu -> conv1: conv(planes, k=3, s=stride, p=1)
        -> bn2: bn -> relu -> conv2: conv(planes, k=3, p=1)
    skip = shortcut(zeropad(planes, s=stride))
    return main + skip
}""",
}

MODEL = """
model net(n, size = 32) {
    input [3, size, size]
    conv1: conv(16, k=3, p=1) -> bn1: bn -> relu
    -> layer1: stage(unit(16), n=n)
    -> layer2: stage(unit(32), n=n, first={stride: 2})
    -> layer3: stage(unit(64), n=n, first={stride: 2})
    -> avgpool: global_avgpool -> flatten -> fc: linear(10)
}"""


def spec(kind: str) -> str:
    return BLOCKS[kind] + MODEL


def gradient_norms(kind: str, depth: int, batch: int = 32, size: int = 32,
                   seed: int = 0) -> np.ndarray:
    """Weight-gradient norm of every convolution, input to output, after one backward
    pass of a random batch with random labels."""
    arch = resdsl.loads(spec(kind), params={"n": (depth - 2) // 6, "size": size})
    model = arch.to_torch(seed=seed).train()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return np.array([m.weight.grad.norm().item() for m in model.modules()
                     if isinstance(m, torch.nn.Conv2d)])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56, 110])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("-o", "--output", default="gradient_flow.png")
    args = parser.parse_args(argv)
    results: dict = {}
    for depth in args.depths:
        for kind in BLOCKS:
            norms = gradient_norms(kind, depth, args.batch, args.size)
            results[(kind, depth)] = norms
            print(f"depth {depth:4d}  {kind:<15} first/last gradient norm "
                  f"{norms[0] / norms[-1]:10.3g}  (min {norms.min():.3g}, "
                  f"max {norms.max():.3g})", flush=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(args.depths), figsize=(4.5 * len(args.depths), 3.6),
                             squeeze=False)
    for ax, depth in zip(axes[0], args.depths):
        for kind in BLOCKS:
            ax.semilogy(results[(kind, depth)], label=kind)
        ax.set_title(f"depth {depth}")
        ax.set_xlabel("convolution (input to output)")
        ax.set_ylabel("weight-gradient norm")
    axes[0][0].legend()
    fig.suptitle("Gradient norms at initialisation (one batch, batch norm in training mode)")
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    return results


if __name__ == "__main__":
    main()
