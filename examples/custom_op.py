"""A new op without editing resdsl: register Mish and LayerScale, use them in a spec.

`resdsl.register_op` adds an op to the registry from Python: its attributes, shape rule,
parameters, MACs, a PyTorch lowering and (optionally) a TVM one. Specs then call it like
a built-in op, with the same checking and error messages. Here:

* `mish`: x * tanh(softplus(x)) (Misra 2019), with torch and TVM lowerings;
* `layer_scale(init)`: a learned per-channel scale `gamma` (CaiT / ConvNeXt's LayerScale),
  a parameter of shape [C] -- torch lowering only, so `--target llvm` refuses it clearly.

    python examples/custom_op.py                 # checks, compares, builds for llvm
    python examples/custom_op.py --no-tvm        # skip the TVM build

Printed: the spec's table (the new ops' parameters counted), the torch output against the
formula computed by hand, the TVM build against torch, and the error for an op without a
TVM lowering.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn.functional as F

import resdsl
from resdsl.extend import register_op, unregister_op
from resdsl.ir.ops import ShapeError


class Mish(torch.nn.Module):
    def __init__(self, attrs, shapes) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(F.softplus(x))


class LayerScale(torch.nn.Module):
    def __init__(self, attrs, shapes) -> None:
        super().__init__()
        self.gamma = torch.nn.Parameter(torch.full((shapes[0][0],), attrs.init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


def mish_tvm(relax, attrs, inputs, weights):
    op = relax.op
    (x,) = inputs
    # softplus(x) = log(1 + exp(x)), written stably: max(x, 0) + log(1 + exp(-|x|))
    softplus = op.add(op.maximum(x, relax.const(0.0, "float32")),
                      op.log(op.add(relax.const(1.0, "float32"), op.exp(op.negative(op.abs(x))))))
    return op.multiply(x, op.tanh(softplus))


def layer_scale_shape(attrs, ins):
    if len(ins[0]) != 3:
        raise ShapeError("layer_scale needs a [C, H, W] feature map",
                         hint="apply it inside a block, before flatten")
    return ins[0]


def register() -> None:
    register_op("mish", shape=lambda a, ins: ins[0], torch=Mish, tvm=mish_tvm,
                doc="x * tanh(softplus(x))", example="mish")
    register_op("layer_scale", {"init": 1e-5}, shape=layer_scale_shape,
                params=lambda a, ins: {"gamma": (ins[0][0],)}, torch=LayerScale,
                doc="a learned per-channel scale", example="layer_scale(1e-5)")


SPEC = """
block unit(planes, stride = 1, scale = true) {
    main = conv1: conv(planes, k=3, s=stride, p=1) -> bn1: bn -> mish
        -> conv2: conv(planes, k=3, p=1) -> bn2: bn
        -> (if scale then ls: layer_scale(0.1) else identity)
    skip = shortcut(downsample: (conv(planes, k=1, s=stride) -> bn))
    return mish(main + skip)
}
model net(num_classes = 10, scale = true) {
    input [3, 32, 32]
    conv1: conv(16, k=3, p=1) -> bn1: bn -> mish
    -> layer1: stage(unit(16, scale=scale), n=2)
    -> layer2: stage(unit(32, scale=scale), n=2, first={stride: 2})
    -> global_avgpool -> flatten -> fc: linear(num_classes)
}
"""


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-tvm", action="store_true", help="skip the TVM build")
    args = ap.parse_args(argv)
    register()
    try:
        return run(not args.no_tvm)
    finally:
        unregister_op("mish")
        unregister_op("layer_scale")


def run(with_tvm: bool) -> dict:
    arch = resdsl.loads(SPEC, "custom_op.arch")
    print(arch.summary(depth=2))
    scales = {k: v for k, v in arch.parameters().items() if k.endswith(".gamma")}
    print(f"layer_scale parameters: {sorted(scales)}")

    torch.manual_seed(0)
    model = arch.to_torch(seed=0).eval()
    x = torch.randn(2, 3, 32, 32)
    feats: dict = {}
    model.bn1.register_forward_hook(lambda m, i, o: feats.__setitem__("bn1", o))
    model.mish.register_forward_hook(lambda m, i, o: feats.__setitem__("mish", o))
    with torch.no_grad():
        y = model(x)
    # the stem's mish against the formula written out: x * tanh(log(1 + e^x))
    by_hand = feats["bn1"] * torch.tanh(torch.log1p(torch.exp(feats["bn1"])))
    stem_err = float((feats["mish"] - by_hand).abs().max())
    print(f"mish by hand vs torch: max abs diff {stem_err:.2e}")
    result = {"params": arch.num_params(), "scales": len(scales), "stem_err": stem_err,
              "tvm_err": None, "tvm_refused": None}

    if with_tvm:
        from resdsl.backends.tvm.artifact import build, load_artifact, write_artifact
        plain = resdsl.loads(SPEC, "custom_op.arch", params={"scale": False})
        weights = plain.to_torch(seed=0).eval()
        built = build(plain, "llvm", weights=weights.state_dict())
        with tempfile.TemporaryDirectory() as tmp:
            art = load_artifact(write_artifact(built, f"{tmp}/net"))
            got = torch.from_numpy(art(x[:1].numpy()))
        with torch.no_grad():
            want = weights(x[:1])
        err = float((got - want).abs().max() / want.abs().max())
        print(f"TVM llvm vs torch (mish lowered by mish_tvm): max relative error {err:.2e}")
        result["tvm_err"] = err
        try:
            build(arch, "llvm")
        except resdsl.ResdslError as e:
            print(f"as expected, layer_scale has no TVM lowering:\n{e}")
            result["tvm_refused"] = str(e)
    print(f"output {tuple(y.shape)}")
    return result


if __name__ == "__main__":
    main()
