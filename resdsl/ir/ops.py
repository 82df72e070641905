"""The op registry: per op its attributes, arity, shape rule, parameter shapes and MACs.

This is the one place an op is defined. The language's argument names are the
attribute field names (`conv(64, k=3, s=2, p=1, groups=32)`), the shape rule is what
`passes.shapes` runs, and every backend maps ops to its own code by `OpDef.name`.

Shapes are per sample: `(C, H, W)` for feature maps, `(F,)` for flat features.
MACs count multiply-accumulates of convolutions and linear layers only (batch norm,
pooling and element-wise ops count 0), the convention of the torchvision oracle.

Adding an op (say an element-wise `sigmoid`) is one `OpDef` below, one entry in each
backend's table -- `TORCH` in backends/torch.py, `LOWER` in backends/tvm/lower.py, the
ONNX backend's -- or the op with a reason in that backend's `UNSUPPORTED`, and a row in
docs/language.md's op table; tests/test_ops.py fails until each of those is there.

>>> conv = OPS["conv"]
>>> a = conv.attrs(out=64, k=3, s=2, p=1)
>>> conv.infer(a, [(3, 32, 32)])
(64, 16, 16)
>>> conv.param_shapes(a, [(3, 32, 32)])
{'weight': (64, 3, 3, 3)}
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

Shape = tuple[int, ...]


class ShapeError(Exception):
    """Raised by a shape rule; the caller attaches the span of the offending layer."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def fmt(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# ---- attribute records (frozen: an IR node's attrs never change in place) -----------

@dataclass(frozen=True)
class NoAttrs:
    pass


@dataclass(frozen=True)
class ConvAttrs:
    out: int
    k: int
    s: int = 1
    p: int = 0
    d: int = 1
    groups: int = 1
    bias: bool = False


@dataclass(frozen=True)
class BNAttrs:
    eps: float = 1e-5
    momentum: float = 0.1


@dataclass(frozen=True)
class PoolAttrs:
    k: int
    s: int = 0  # 0: same as k
    p: int = 0
    ceil_mode: bool = False

    @property
    def stride(self) -> int:
        return self.s or self.k


@dataclass(frozen=True)
class AvgPoolAttrs(PoolAttrs):
    count_include_pad: bool = True


@dataclass(frozen=True)
class LeakyReluAttrs:
    slope: float = 0.01


@dataclass(frozen=True)
class GNAttrs:
    groups: int
    eps: float = 1e-5


@dataclass(frozen=True)
class ChannelConvAttrs:
    """A 1-D convolution along the channels of a pooled `[C, 1, 1]` (or `[C]`) vector, one
    filter shared by all channels (ECA). p=-1: "same" padding, (k - 1) // 2."""

    k: int = 3
    p: int = -1

    @property
    def pad(self) -> int:
        return (self.k - 1) // 2 if self.p == -1 else self.p


@dataclass(frozen=True)
class SliceAttrs:
    """Channels start..stop-1 (stop excluded)."""

    start: int
    stop: int


@dataclass(frozen=True)
class DropPathAttrs:
    p: float = 0.0


@dataclass(frozen=True)
class BranchSoftmaxAttrs:
    """Softmax across n branches: the channels, viewed as [card, n, K], are normalised
    over n and laid out as [n, card, K] (timm's rSoftMax; card=1 is SK's attention)."""

    n: int
    card: int = 1


@dataclass(frozen=True)
class LinearAttrs:
    out: int
    bias: bool = True


@dataclass(frozen=True)
class ZeroPadAttrs:
    """Option-A shortcut: take every s-th pixel, then zero-pad channels up to `c`
    (half the new channels before, the rest after, as the CIFAR ResNets do)."""

    c: int
    s: int = 1

    def pads(self, in_c: int) -> tuple[int, int]:
        extra = self.c - in_c
        return extra // 2, extra - extra // 2


@dataclass(frozen=True)
class InputAttrs:
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DropoutAttrs:
    p: float = 0.5


# ---- shape rules ------------------------------------------------------------------

def _need_map(op: str, shape: Shape) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ShapeError(f"{op} needs a [C, H, W] feature map, got the flat shape {fmt(shape)}",
                         hint=f"apply {op} before `flatten`")
    return shape  # type: ignore[return-value]


def _window(op: str, size: int, k: int, s: int, p: int, d: int = 1, ceil: bool = False) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    if span < 0 or out <= 0:
        raise ShapeError(f"{op} with k={k}, s={s}, p={p} collapses a spatial size of {size} to "
                         f"{max(out, 0)}",
                         hint="the input is too small for this layer: use a larger `input`, "
                              "less downsampling, or more padding")
    return out


def _conv_shape(a: ConvAttrs, ins: list[Shape]) -> Shape:
    c, h, w = _need_map("conv", ins[0])
    for name, value in (("out", a.out), ("k", a.k), ("s", a.s), ("d", a.d), ("groups", a.groups)):
        if value < 1:
            raise ShapeError(f"conv {name}={value} must be at least 1")
    if a.p < 0:
        raise ShapeError(f"conv p={a.p} must not be negative")
    if a.p > a.d * (a.k - 1):
        raise ShapeError(f"conv padding p={a.p} is more than the window k={a.k} can use "
                         f"(at most {a.d * (a.k - 1)})",
                         hint="beyond that, outputs see only padding; `same` padding is "
                              "p = k // 2")
    if c % a.groups:
        raise ShapeError(f"conv with groups={a.groups}: input channels {c} are not divisible "
                         f"by {a.groups}",
                         hint="the input channels and `out` must both be multiples of groups")
    if a.out % a.groups:
        raise ShapeError(f"conv with groups={a.groups}: output channels {a.out} are not "
                         f"divisible by {a.groups}",
                         hint="the input channels and `out` must both be multiples of groups")
    return (a.out, _window("conv", h, a.k, a.s, a.p, a.d), _window("conv", w, a.k, a.s, a.p, a.d))


def _same(op: str) -> Callable:
    def rule(a, ins: list[Shape]) -> Shape:
        return ins[0]
    return rule


def _bn_shape(a: BNAttrs, ins: list[Shape]) -> Shape:
    _need_map("bn", ins[0])
    if not 0 < a.eps < 1:
        raise ShapeError(f"bn eps={a.eps} must be a small positive number",
                         hint="the default is eps=1e-5")
    if not 0 <= a.momentum <= 1:
        raise ShapeError(f"bn momentum={a.momentum} must be between 0 and 1",
                         hint="the default is momentum=0.1")
    return ins[0]


def _dropout_shape(a: DropoutAttrs, ins: list[Shape]) -> Shape:
    if not 0 <= a.p < 1:
        raise ShapeError(f"dropout p={a.p} must be at least 0 and below 1",
                         hint="p is the probability of zeroing a value, e.g. dropout(0.2)")
    return ins[0]


def _pool_shape(op: str) -> Callable:
    def rule(a: PoolAttrs, ins: list[Shape]) -> Shape:
        c, h, w = _need_map(op, ins[0])
        if a.k < 1 or a.stride < 1 or a.p < 0:
            raise ShapeError(f"{op} needs k >= 1, s >= 1, p >= 0")
        if 2 * a.p > a.k:
            raise ShapeError(f"{op} padding p={a.p} is more than half the window k={a.k}",
                             hint="use p <= k / 2")
        return (c, _window(op, h, a.k, a.stride, a.p, ceil=a.ceil_mode),
                _window(op, w, a.k, a.stride, a.p, ceil=a.ceil_mode))
    return rule


def _leaky_shape(a: LeakyReluAttrs, ins: list[Shape]) -> Shape:
    if not -1e6 < a.slope < 1e6:
        raise ShapeError(f"leaky_relu slope={a.slope} is out of range",
                         hint="the negative slope is a small number, e.g. leaky_relu(0.01)")
    return ins[0]


def _gn_shape(a: GNAttrs, ins: list[Shape]) -> Shape:
    c, _, _ = _need_map("gn", ins[0])
    if a.groups < 1:
        raise ShapeError(f"gn groups={a.groups} must be at least 1")
    if c % a.groups:
        raise ShapeError(f"gn with groups={a.groups}: channels {c} are not divisible by "
                         f"{a.groups}", hint="the channels must be a multiple of groups, "
                                             "e.g. gn(32) on 64 channels")
    if not 0 < a.eps < 1:
        raise ShapeError(f"gn eps={a.eps} must be a small positive number",
                         hint="the default is eps=1e-5")
    return ins[0]


def _vector(op: str, shape: Shape) -> int:
    """The length of a pooled vector, `[C, 1, 1]` or `[C]`."""
    if len(shape) == 1 or (len(shape) == 3 and shape[1:] == (1, 1)):
        return shape[0]
    raise ShapeError(f"{op} works on a pooled vector [C, 1, 1] or [C], got {fmt(shape)}",
                     hint=f"apply `global_avgpool` before {op}")


def _channel_conv_shape(a: ChannelConvAttrs, ins: list[Shape]) -> Shape:
    c = _vector("channel_conv", ins[0])
    if a.k < 1:
        raise ShapeError(f"channel_conv k={a.k} must be at least 1")
    if a.p < -1 or a.pad > a.k - 1:
        raise ShapeError(f"channel_conv p={a.p} must be between 0 and k - 1 = {a.k - 1} "
                         "(or -1, the default: (k - 1) // 2)")
    out = c + 2 * a.pad - a.k + 1
    if out < 1:
        raise ShapeError(f"channel_conv with k={a.k} collapses {c} channels to {max(out, 0)}")
    return (out,) + ins[0][1:]


def _slice_shape(a: SliceAttrs, ins: list[Shape]) -> Shape:
    c = ins[0][0]
    if not 0 <= a.start < a.stop <= c:
        raise ShapeError(f"slice({a.start}, {a.stop}) of {c} channels: need "
                         f"0 <= start < stop <= {c}",
                         hint="slice(start, stop) keeps channels start..stop-1")
    return (a.stop - a.start,) + ins[0][1:]


def _drop_path_shape(a: DropPathAttrs, ins: list[Shape]) -> Shape:
    if not 0 <= a.p < 1:
        raise ShapeError(f"drop_path p={a.p} must be at least 0 and below 1",
                         hint="p is the probability of dropping the branch, e.g. "
                              "drop_path(0.05)")
    return ins[0]


def _branch_softmax_shape(a: BranchSoftmaxAttrs, ins: list[Shape]) -> Shape:
    c = _vector("branch_softmax", ins[0])
    if a.n < 2:
        raise ShapeError(f"branch_softmax n={a.n} needs at least 2 branches",
                         hint="for one branch use `sigmoid`, as timm's rSoftMax does")
    if a.card < 1:
        raise ShapeError(f"branch_softmax card={a.card} must be at least 1")
    if c % (a.n * a.card):
        raise ShapeError(f"branch_softmax(n={a.n}, card={a.card}): {c} channels are not "
                         f"divisible by n * card = {a.n * a.card}")
    return ins[0]


def _mul_shape(a: NoAttrs, ins: list[Shape]) -> Shape:
    x, y = ins
    if x == y:
        return x
    for big, small in ((x, y), (y, x)):
        if len(big) == 3 and small == (big[0], 1, 1):
            return big
    raise ShapeError(f"mul of tensors with shapes {fmt(x)} and {fmt(y)}",
                     hint="`*` multiplies tensors of the same shape, or scales a [C, H, W] "
                          "map by a [C, 1, 1] vector (a gate, as squeeze-and-excitation does)")


def _gap_shape(a: NoAttrs, ins: list[Shape]) -> Shape:
    c, _, _ = _need_map("global_avgpool", ins[0])
    return (c, 1, 1)


def _flatten_shape(a: NoAttrs, ins: list[Shape]) -> Shape:
    return (math.prod(ins[0]),)


def _linear_shape(a: LinearAttrs, ins: list[Shape]) -> Shape:
    if len(ins[0]) != 1:
        raise ShapeError(f"linear needs flat features, got {fmt(ins[0])}",
                         hint="insert `flatten` (after `global_avgpool`) before the linear layer")
    if a.out < 1:
        raise ShapeError(f"linear out={a.out} must be at least 1")
    return (a.out,)


def _add_shape(a: NoAttrs, ins: list[Shape]) -> Shape:
    for other in ins[1:]:
        if other != ins[0]:
            raise ShapeError(f"add of tensors with different shapes: {fmt(ins[0])} and "
                             f"{fmt(other)}",
                             hint="both sides of `+` must have the same shape; a residual "
                                  "branch that changes channels or stride needs a projection "
                                  "shortcut, e.g. `shortcut(downsample: (conv(C, k=1, s=2) -> "
                                  "bn))`")
    return ins[0]


def _concat_shape(a: NoAttrs, ins: list[Shape]) -> Shape:
    first = _need_map("concat", ins[0])
    for other in ins[1:]:
        _need_map("concat", other)
        if other[1:] != first[1:]:
            raise ShapeError(f"concat of feature maps with different spatial sizes: "
                             f"{fmt(first)} and {fmt(other)}",
                             hint="concatenated tensors must agree in height and width; "
                                  "downsample them the same way first")
    return (sum(s[0] for s in ins), first[1], first[2])


def _zeropad_shape(a: ZeroPadAttrs, ins: list[Shape]) -> Shape:
    c, h, w = _need_map("zeropad", ins[0])
    if a.s < 1:
        raise ShapeError(f"zeropad s={a.s} must be at least 1")
    if a.c < c:
        raise ShapeError(f"zeropad to {a.c} channels cannot shrink an input of {c} channels",
                         hint="zeropad only adds channels; use a projection to reduce them")
    return (a.c, -(-h // a.s), -(-w // a.s))


def _input_shape(a: InputAttrs, ins: list[Shape]) -> Shape:
    if not a.shape or any((not isinstance(d, int)) or d < 1 for d in a.shape):
        raise ShapeError(f"input shape {fmt(a.shape)} must be whole numbers of at least 1",
                         hint="write the per-sample shape, e.g. `input [3, 224, 224]`")
    if len(a.shape) not in (1, 3):
        raise ShapeError(f"input shape {fmt(a.shape)} must be [C, H, W] or [F]")
    return tuple(a.shape)


# ---- parameters -----------------------------------------------------------------

def _conv_params(a: ConvAttrs, ins: list[Shape]) -> dict[str, Shape]:
    p = {"weight": (a.out, ins[0][0] // a.groups, a.k, a.k)}
    if a.bias:
        p["bias"] = (a.out,)
    return p


def _bn_params(a: BNAttrs, ins: list[Shape]) -> dict[str, Shape]:
    return {"weight": (ins[0][0],), "bias": (ins[0][0],)}


def _bn_buffers(a: BNAttrs, ins: list[Shape]) -> dict[str, Shape]:
    return {"running_mean": (ins[0][0],), "running_var": (ins[0][0],)}


def _gn_params(a: GNAttrs, ins: list[Shape]) -> dict[str, Shape]:
    return {"weight": (ins[0][0],), "bias": (ins[0][0],)}


def _channel_conv_params(a: ChannelConvAttrs, ins: list[Shape]) -> dict[str, Shape]:
    return {"weight": (1, 1, a.k)}


def _channel_conv_macs(a: ChannelConvAttrs, ins: list[Shape], out: Shape) -> int:
    return out[0] * a.k


def _linear_params(a: LinearAttrs, ins: list[Shape]) -> dict[str, Shape]:
    p = {"weight": (a.out, ins[0][0])}
    if a.bias:
        p["bias"] = (a.out,)
    return p


def _conv_macs(a: ConvAttrs, ins: list[Shape], out: Shape) -> int:
    return out[0] * out[1] * out[2] * (ins[0][0] // a.groups) * a.k * a.k


def _linear_macs(a: LinearAttrs, ins: list[Shape], out: Shape) -> int:
    return a.out * ins[0][0]


def _none(*_):
    return {}


def _zero(*_):
    return 0


@dataclass(frozen=True)
class OpDef:
    """Everything resdsl knows about one op, independent of any backend.

    `example` is a call written the way a user would (docs and error hints quote it);
    `stride`, for ops that can downsample, reads the stride from the attributes (a
    shortcut whose projection downsamples is never the identity).
    """

    name: str
    attrs: type
    infer: Callable[..., Shape]
    doc: str
    example: str
    arity: tuple[int, int | None] = (1, 1)  # min, max inputs (None: any number)
    param_shapes: Callable[..., dict[str, Shape]] = _none
    buffer_shapes: Callable[..., dict[str, Shape]] = _none
    macs: Callable[..., int] = _zero
    stride: Callable[[Any], int] | None = None

    def fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.attrs))


OPS: dict[str, OpDef] = {op.name: op for op in [
    OpDef("input", InputAttrs, _input_shape, "the model's input (per-sample shape)",
          "input [3, 224, 224]", arity=(0, 0)),
    OpDef("conv", ConvAttrs, _conv_shape, "2-D convolution (no bias unless bias=true)",
          "conv(64, k=3, s=1, p=1)", param_shapes=_conv_params, macs=_conv_macs,
          stride=lambda a: a.s),
    OpDef("bn", BNAttrs, _bn_shape, "batch normalisation over channels", "bn",
          param_shapes=_bn_params, buffer_shapes=_bn_buffers),
    OpDef("relu", NoAttrs, _same("relu"), "rectified linear unit", "relu"),
    OpDef("maxpool", PoolAttrs, _pool_shape("maxpool"), "max pooling (s defaults to k)",
          "maxpool(k=3, s=2, p=1)", stride=lambda a: a.stride),
    OpDef("avgpool", AvgPoolAttrs, _pool_shape("avgpool"),
          "average pooling (s defaults to k; count_include_pad=false averages over the "
          "unpadded part of the window only)", "avgpool(k=2, s=2)", stride=lambda a: a.stride),
    OpDef("global_avgpool", NoAttrs, _gap_shape, "average over H and W: [C, H, W] -> [C, 1, 1]",
          "global_avgpool"),
    OpDef("flatten", NoAttrs, _flatten_shape, "[C, H, W] -> [C*H*W]", "flatten"),
    OpDef("linear", LinearAttrs, _linear_shape, "fully connected layer", "linear(1000)",
          param_shapes=_linear_params, macs=_linear_macs),
    OpDef("dropout", DropoutAttrs, _dropout_shape, "dropout (identity in eval mode)",
          "dropout(0.2)"),
    OpDef("add", NoAttrs, _add_shape, "element-wise sum of same-shaped tensors (`a + b`)",
          "main + skip", arity=(2, None)),
    OpDef("concat", NoAttrs, _concat_shape, "channel concatenation", "concat(a, b)",
          arity=(1, None)),
    OpDef("sigmoid", NoAttrs, _same("sigmoid"), "logistic sigmoid, 1 / (1 + e^-x)", "sigmoid"),
    OpDef("silu", NoAttrs, _same("silu"), "x * sigmoid(x) (swish)", "silu"),
    OpDef("gelu", NoAttrs, _same("gelu"), "Gaussian error linear unit (exact, erf form)",
          "gelu"),
    OpDef("hardsigmoid", NoAttrs, _same("hardsigmoid"), "relu6(x + 3) / 6", "hardsigmoid"),
    OpDef("tanh", NoAttrs, _same("tanh"), "hyperbolic tangent", "tanh"),
    OpDef("leaky_relu", LeakyReluAttrs, _leaky_shape, "max(x, 0) + slope * min(x, 0)",
          "leaky_relu(0.1)"),
    OpDef("identity", NoAttrs, _same("identity"),
          "no-op: passes its input on (holds a name, e.g. a position in a numbered group)",
          "identity"),
    OpDef("mul", NoAttrs, _mul_shape,
          "element-wise product (`a * b`); a [C, 1, 1] gate broadcasts over [C, H, W]",
          "x * gate", arity=(2, 2)),
    OpDef("gn", GNAttrs, _gn_shape, "group normalisation: channels in `groups` groups",
          "gn(8)", param_shapes=_gn_params),
    OpDef("channel_conv", ChannelConvAttrs, _channel_conv_shape,
          "1-D convolution along the channels of a pooled [C, 1, 1] vector, one shared "
          "filter of k taps, no bias (ECA)", "channel_conv(k=5)",
          param_shapes=_channel_conv_params, macs=_channel_conv_macs),
    OpDef("slice", SliceAttrs, _slice_shape, "channels start..stop-1 of a tensor",
          "slice(x, 0, 8)"),
    OpDef("drop_path", DropPathAttrs, _drop_path_shape,
          "stochastic depth: in training, zero the whole sample with probability p (scaling "
          "the rest by 1 / (1 - p)); identity in eval", "drop_path(0.05)"),
    OpDef("branch_softmax", BranchSoftmaxAttrs, _branch_softmax_shape,
          "softmax across n branches of a pooled vector viewed as [card, n, K], laid out "
          "[n, card, K] (selective kernel / split attention)", "branch_softmax(2)"),
    OpDef("zeropad", ZeroPadAttrs, _zeropad_shape,
          "option-A shortcut: subsample by s, zero-pad channels to c", "zeropad(32, s=2)",
          stride=lambda a: a.s),
]}

# `input` is the graph's argument in every backend, not an op a backend lowers
GRAPH_INPUT = "input"


def backend_ops() -> list[str]:
    """The ops every backend's table covers (or lists as unsupported, with a reason).

    >>> "conv" in backend_ops(), "input" in backend_ops()
    (True, False)
    """
    return [name for name in OPS if name != GRAPH_INPUT]


def attrs_to_json(attrs) -> dict:
    return dataclasses.asdict(attrs)


def attrs_from_json(op: str, data: dict):
    if op == "input":
        data = {"shape": tuple(data["shape"])}
    return OPS[op].attrs(**data)
