"""Training on real data: a CIFAR-style ResNet and its plain twin on scikit-learn's digits.

scikit-learn ships a small real dataset inside the package: `load_digits`, 1,797
handwritten digits as 8x8 grey images (no download). The residual network is the CIFAR
ResNet of He et al. (2015, section 4.2; `specs/lib/cifar_resnet.arch`, option A
shortcuts) at depth 6n + 2 for a one-channel 8x8 input (8x8 -> 4x4 -> 2x2); the plain
network is the same spec with the shortcut removed from the block. Both are trained with
the same seeds, batches and schedule (SGD with momentum, cosine learning rate); a
stratified quarter of the images is held out.

    python examples/train_digits.py            # depth 32, 20 epochs, writes train_digits.png
    python examples/train_digits.py --depth 8 --epochs 3 --quick

Printed per network and epoch: training loss, training and held-out accuracy; at the end
the held-out accuracy of each network.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import resdsl

BLOCKS = {
    # the block of specs/lib/cifar_resnet.arch, option A shortcut (no parameters)
    "residual": """
block unit(planes, stride = 1) {
    main = conv1: conv(planes, k=3, s=stride, p=1) -> bn1: bn -> relu
        -> conv2: conv(planes, k=3, p=1) -> bn2: bn
    skip = shortcut(zeropad(planes, s=stride))
    return relu(main + skip)
}""",
    # the same layers, without the shortcut
    "plain": """
block unit(planes, stride = 1) {
    return conv1: conv(planes, k=3, s=stride, p=1) -> bn1: bn -> relu
        -> conv2: conv(planes, k=3, p=1) -> bn2: bn -> relu
}""",
}

# cifar_resnet of specs/lib/cifar_resnet.arch with the block as a free name
MODEL = """
model digits_net(n, num_classes = 10, in_chans = 1, size = 8) {
    input [in_chans, size, size]
    conv1: conv(16, k=3, p=1) -> bn1: bn -> relu
    -> layer1: stage(unit(16), n=n)
    -> layer2: stage(unit(32), n=n, first={stride: 2})
    -> layer3: stage(unit(64), n=n, first={stride: 2})
    -> avgpool: global_avgpool -> flatten -> fc: linear(num_classes)
}"""


def spec(kind: str) -> str:
    return BLOCKS[kind] + MODEL


def build(kind: str, depth: int) -> resdsl.Arch:
    if (depth - 2) % 6:
        raise SystemExit(f"depth must be 6n + 2 (8, 14, 20, 32, 56, ...), not {depth}")
    return resdsl.loads(spec(kind), params={"n": (depth - 2) // 6})


def digits(seed: int = 0, test_fraction: float = 0.25):
    """(x_train, y_train, x_test, y_test): [N, 1, 8, 8] float tensors standardised with
    the training split's mean and deviation, a stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.images.astype(np.float32) / 16.0
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction,
                                              random_state=seed, stratify=y)
    mean, std = x_tr.mean(), x_tr.std()
    as_t = lambda a: torch.from_numpy((a - mean) / std).unsqueeze(1)  # noqa: E731
    return as_t(x_tr), torch.from_numpy(y_tr), as_t(x_te), torch.from_numpy(y_te)


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) with batch norm in eval mode."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch):
        out = model(x[i:i + batch])
        loss += torch.nn.functional.cross_entropy(out, y[i:i + batch], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + batch]).sum().item()
    return loss / len(x), correct / len(x)


def train(kind: str, depth: int, data, epochs: int, batch: int = 64, lr: float = 0.1,
          seed: int = 0, augment: bool = True, verbose: bool = False) -> dict[str, list[float]]:
    """Train one network; per-epoch history of training loss and accuracy (of the
    epoch's batches, in training mode) and held-out loss and accuracy."""
    x_tr, y_tr, x_te, y_te = data
    model = build(kind, depth).to_torch(seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    steps = epochs * ((len(x_tr) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.15, anneal_strategy="cos")
    gen = torch.Generator().manual_seed(seed)
    hist: dict[str, list[float]] = {"train_loss": [], "train_acc": [], "test_loss": [],
                                    "test_acc": []}
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_tr), generator=gen)
        total, correct = 0.0, 0
        for i in range(0, len(x_tr), batch):
            idx = order[i:i + batch]
            xb, yb = x_tr[idx], y_tr[idx]
            if augment:         # shift by up to one pixel (zero padding, then a random crop)
                dx, dy = torch.randint(0, 3, (2,), generator=gen).tolist()
                xb = torch.nn.functional.pad(xb, (1, 1, 1, 1), value=float(x_tr.min()))
                xb = xb[:, :, dy:dy + 8, dx:dx + 8]
            out = model(xb)
            loss = torch.nn.functional.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += (out.argmax(1) == yb).sum().item()
        hist["train_loss"].append(total / len(x_tr))
        hist["train_acc"].append(correct / len(x_tr))
        test_loss, test_acc = evaluate(model, x_te, y_te)
        hist["test_loss"].append(test_loss)
        hist["test_acc"].append(test_acc)
        if verbose:
            print(f"{kind:<9} epoch {len(hist['test_acc']):3d}  loss {hist['train_loss'][-1]:.4f}"
                  f"  train acc {hist['train_acc'][-1]:.4f}  held-out acc {test_acc:.4f}",
                  flush=True)
    return hist


def run(args: argparse.Namespace) -> dict:
    data = digits(args.seed)
    print(f"digits: {len(data[0])} training and {len(data[2])} held-out 8x8 images, "
          f"depth {args.depth}, {args.epochs} epochs", flush=True)
    results: dict = {}
    for kind in BLOCKS:
        t0 = time.perf_counter()
        hist = train(kind, args.depth, data, args.epochs, args.batch, args.lr, args.seed,
                     augment=not args.quick, verbose=True)
        hist["seconds"] = time.perf_counter() - t0
        results[kind] = hist
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=32, help="6n + 2 (default 32)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: for 8x8 images more threads "
                             "only add overhead, and results depend on the thread count)")
    parser.add_argument("--quick", action="store_true",
                        help="no augmentation (with --depth 8 --epochs 3: the test's setting)")
    parser.add_argument("-o", "--out", "--output", dest="out", default="train_digits.png")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        results = run(args)
    finally:                    # imported (as the tests do), leave the caller's setting
        torch.set_num_threads(threads)
    for kind, hist in results.items():
        print(f"{kind:<9} depth {args.depth}: held-out accuracy {hist['test_acc'][-1]:.4f}  "
              f"({hist['seconds']:.1f} s)")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    epochs = np.arange(1, args.epochs + 1)
    for (kind, hist), color in zip(results.items(), ["C0", "C3"]):
        ax_loss.plot(epochs, hist["train_loss"], color=color, label=f"{kind} (train)")
        ax_loss.plot(epochs, hist["test_loss"], color=color, ls="--",
                     label=f"{kind} (held out)")
        ax_acc.plot(epochs, hist["train_acc"], color=color, label=f"{kind} (train)")
        ax_acc.plot(epochs, hist["test_acc"], color=color, ls="--",
                    label=f"{kind} (held out)")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"scikit-learn digits, CIFAR-style network of depth {args.depth}: "
                 "residual vs plain")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
