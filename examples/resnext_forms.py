"""The three equivalent ResNeXt blocks of Xie et al. (2017, figure 3), drawn and compared.

(a) `groups` separate paths of 1x1 -> 3x3 -> 1x1 convolutions, summed; (b) the paths stop
after the 3x3 convolution, are concatenated and merged by one 1x1 convolution; (c) one
grouped 3x3 convolution (torchvision's form). All three are blocks of
`specs/lib/resnext_forms.arch`. One block of each form (the first block of a stage: it
halves the resolution, so its shortcut is the projection) is drawn by `Arch.to_dot()` and
Graphviz side by side; then form (c)'s weights, with random batch-norm statistics, are
copied into forms (a) and (b) -- each path receives its group's slice of every tensor --
and the three outputs are compared on the same random input. Without `--quick`, the same
check runs on the whole ResNeXt-50 32x4d in the three forms (`specs/resnext_forms/`).

    python examples/resnext_forms.py                  # writes resnext_forms.png
    python examples/resnext_forms.py --groups 8 --quick

Printed: parameters of each form, and the largest absolute difference of forms (a) and (b)
from form (c), absolute and relative to the output's largest magnitude.
"""

from __future__ import annotations

import argparse
import io

import torch

import resdsl
from resdsl.dot import render

FORMS = {"a": "resnext_a", "b": "resnext_b", "c": "bottleneck"}
TITLES = {"a": "(a) paths, summed", "b": "(b) paths, concatenated, 1x1 merge",
          "c": "(c) grouped convolution"}

BLOCK = """
use "lib/resnext_forms.arch"
model resnext_block_{form}(planes = 64, groups = 4, base_width = 16, size = 8) {{
    input [planes * 2, size, size]
    layer2: stage({unit}(planes, groups=groups, base_width=base_width), n=1,
                  first={{stride: 2}})
}}"""


def block(form: str, groups: int = 4, base_width: int = 16, planes: int = 64,
          size: int = 8) -> resdsl.Arch:
    """One ResNeXt block of the given form: input [2 planes, size, size], stride 2."""
    return resdsl.loads(BLOCK.format(form=form, unit=FORMS[form]),
                        params={"groups": groups, "base_width": base_width,
                                "planes": planes, "size": size})


def map_weights(sd_c: dict, target_keys, groups: int) -> dict:
    """Form (c)'s state_dict laid out for a target form: the target's key
    `P.paths.i.L.rest` gets group i's slice of `P.L.rest` (output channels; input
    channels for the per-path 1x1 convolution conv3 of form (a)); every other key is
    copied as it is."""
    out = {}
    for key in target_keys:
        if ".paths." not in key:
            out[key] = sd_c[key]
            continue
        prefix, _, rest = key.partition(".paths.")
        i, _, tail = rest.partition(".")
        t = sd_c[f"{prefix}.{tail}"]
        if tail.endswith("num_batches_tracked"):
            out[key] = t.clone()
            continue
        dim = 1 if tail.startswith("conv3.") else 0
        out[key] = t.chunk(groups, dim)[int(i)].clone()
    return out


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial batch-norm statistics and affine parameters (at initialisation they
    are the identity, which would hide a wrongly sliced tensor)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.4 * torch.rand(n, generator=gen) - 0.2)


def compare(archs: dict, groups: int, batch: int = 2, seed: int = 0) -> dict:
    """Outputs of forms a and b with form c's weights: form -> (max abs diff, relative)."""
    mc = archs["c"].to_torch(seed=seed).eval()
    randomise_bn(mc, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *archs["c"].input_shape, generator=gen)
    with torch.no_grad():
        yc = mc(x)
    diffs = {}
    for form in ("a", "b"):
        mo = archs[form].to_torch().eval()
        mo.load_state_dict(map_weights(mc.state_dict(), mo.state_dict().keys(), groups),
                           strict=True)
        with torch.no_grad():
            d = (mo(x) - yc).abs().max().item()
        diffs[form] = (d, d / yc.abs().max().item())
    return diffs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=4, help="cardinality of the drawn block")
    parser.add_argument("--base-width", type=int, default=16,
                        help="channels per path = planes * base_width / 64")
    parser.add_argument("--quick", action="store_true",
                        help="skip the check on the whole ResNeXt-50 32x4d")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest allowed difference, relative to the output's magnitude")
    parser.add_argument("-o", "--out", "--output", dest="out", default="resnext_forms.png")
    args = parser.parse_args(argv)
    archs = {f: block(f, args.groups, args.base_width) for f in FORMS}
    for f, arch in archs.items():
        print(f"form {f}: {arch.num_params():,} params, {arch.macs():,} MACs, "
              f"{len(arch.graph)} layers")
    results: dict = {"block": compare(archs, args.groups),
                     "params": {f: a.num_params() for f, a in archs.items()}}
    if not args.quick:
        full = {f: resdsl.load(f"resnext50_32x4d_{f}", params={"size": 32}) for f in FORMS}
        results["resnext50_32x4d"] = compare(full, 32)
    for what, diffs in results.items():
        if what == "params":
            continue
        for form, (d, rel) in diffs.items():
            print(f"{what}: form {form} vs form c: max abs diff {d:.3g} "
                  f"(relative {rel:.3g})")
            assert rel <= args.tolerance, f"{what}: form {form} differs from form c"

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt
    pictures = {f: mpimg.imread(io.BytesIO(render(a.to_dot(), "png")), format="png")
                for f, a in archs.items()}
    widths = [p.shape[1] for p in pictures.values()]
    height = max(p.shape[0] for p in pictures.values())
    scale = min(1.0, 22 / (sum(widths) / 100))        # inches at 100 dpi, at most 22 wide
    fig, axes = plt.subplots(1, 3, figsize=(sum(widths) / 100 * scale,
                                            height / 100 * scale + 1.0),
                             gridspec_kw={"width_ratios": widths})
    for ax, (f, pic) in zip(axes, pictures.items()):
        ax.imshow(pic)
        ax.set_title(TITLES[f])
        ax.axis("off")
    d = results["block"]
    fig.suptitle(f"ResNeXt block, cardinality {args.groups}: three forms, one function "
                 f"(max abs diff a: {d['a'][0]:.1g}, b: {d['b'][0]:.1g})")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
