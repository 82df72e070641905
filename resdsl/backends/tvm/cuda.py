"""cuda: convolutions as matrix products, so that dlight's matmul rule schedules them.

dlight (TVM's default GPU schedules) has no convolution rule: a legalized `conv2d` gets
its Fallback schedule (one thread per output element, no data reuse). Its `Matmul` rule,
on the other hand, tiles a matrix product for the GPU -- blocks of 64x64 outputs, a 4x4
register tile per thread, the operands staged through shared memory (and tensor cores
where the operands are float16) -- and takes the product's element-wise epilogue (bias,
residual add, ReLU) into the same kernel. So for the cuda target every `relax.nn.conv2d`
is rewritten, in Relax, before the GPU pipeline, as

- an explicit im2col gather (a kernel of its own, injective), one row of K = Cg*kh*kw
  values per output pixel, K contiguous:
  `col[n, g, oh, ow, c, i, j] = x[n, g*Cg + c, oh*s + i*d - p, ow*s + j*d - p]`
  (zero outside the input); a 1x1, stride-1, unpadded convolution skips it and reads
  its input directly;
- a matrix product per group, `out[n, g*Fg + f, oh, ow] = sum_(c,i,j)
  col[n, g, oh, ow, c, i, j] * w[g*Fg + f, c, i, j]`: one TIR block whose iterators are,
  in dlight's terms, the batch axis S = g, the rows I = (n, oh, ow) (the pixels of the
  whole batch: the large dimension, split over blockIdx.x, so batch 32 makes a tall
  product), the columns J = f and the reduction K = (c, i, j). It reads the
  convolution's own weight parameter and writes the convolution's own [N, F, OH, OW]
  layout, so the epilogue operators that follow (bias, residual add, ReLU) fuse into it
  as they do into a convolution, and artifacts' weight files do not change.

The kernels are named `conv2d_im2col_*` and `conv2d_gemm_*` (fused ones
`fused_conv2d_gemm_*_add_relu` and the like).

The rewrite is target-independent Relax: `lower_cuda` returns the module the cuda build
compiles, and the tests run that same module on llvm against the torch backend.
"""

from __future__ import annotations

from typing import Any

from resdsl.backends.tvm.lower import lower

# relax.nn.conv2d attributes this rewrite handles; others keep the default lowering
_LAYOUT = ("NCHW", "OIHW", "NCHW")

# FuseOps pattern kinds (relay/op_attr_types.h)
_INJECTIVE, _OUT_ELEMWISE_FUSABLE = 2, 4


def im2col_func(n: int, c: int, h: int, w: int, kh: int, kw: int, stride: tuple, pad: tuple,
                dil: tuple, groups: int, oh: int, ow: int, dtype: str = "float32"):
    """PrimFunc `(x [N, C, H, W], col [N, G, OH, OW, Cg, kh, kw])`: one row of the patch
    matrix per output pixel, its K = Cg*kh*kw values contiguous."""
    from tvm import te, tirx

    cg = c // groups

    def i64(*dims: int) -> tuple:       # int64 extents, as Relax's legalized operators use
        return tuple(tirx.IntImm("int64", d) for d in dims)

    x = te.placeholder(i64(n, c, h, w), dtype, name="x")

    def gather(b, g, y, z, ci, i, j):
        hi = y * stride[0] + i * dil[0] - pad[0]
        wi = z * stride[1] + j * dil[1] - pad[1]
        inside = tirx.all(hi >= 0, hi < h, wi >= 0, wi < w)
        return tirx.if_then_else(inside, x[b, g * cg + ci, hi, wi], tirx.const(0, dtype))

    col = te.compute(i64(n, groups, oh, ow, cg, kh, kw), gather, name="im2col")
    return te.create_prim_func([x, col]).with_attr("op_pattern", _INJECTIVE)


def gemm_func(n: int, groups: int, fg: int, cg: int, kh: int, kw: int, oh: int, ow: int,
              dtype: str = "float32", patches: bool = True):
    """PrimFunc `(a, w [F, Cg, kh, kw], out [N, F, OH, OW])`, one block whose iterators
    are (n, g, f, oh, ow | c, i, j): the pattern dlight's Matmul rule takes, with the
    pixels (n, oh, ow) as its rows I (the first operand), the output channels f as its
    columns J, the groups g as its batch S and (c, i, j) as its reduction K. `a` is the
    patch matrix [N, G, OH, OW, Cg, kh, kw] (`patches`), or, for a 1x1 stride-1
    convolution, the input [N, C, OH, OW] itself. Every access is affine in the
    iterators, so the operands need no reshapes (which the GPU pipeline would copy).

    Written as TVMScript (TE makes the output's shape the block's iterator space, so it
    cannot write one axis, g*Fg + f, from two iterators), with int64 extents like the
    legalized operators it fuses with (FuseTIR rejects a buffer shared by a function
    with int32 extents and one with int64 ones)."""
    from tvm.script.parser import parse

    def shape(*dims: int) -> str:      # int64 extents, as Relax's legalized operators use
        return "(" + ", ".join(f"T.int64({d})" for d in dims) + ",)"

    f = f"vg * T.int64({fg}) + vf"
    out = f"conv2d_gemm[vb, {f}, vy, vz]"
    wt = f"w[{f}, vc, vi, vj]"
    if patches:
        dims, at = (n, groups, oh, ow, cg, kh, kw), "a[vb, vg, vy, vz, vc, vi, vj]"
    else:
        dims, at = (n, groups * cg, oh, ow), f"a[vb, vg * T.int64({cg}) + vc, vy, vz]"
    src = f"""
# from tvm.script import tirx as T
@T.prim_func(s_tir=True)
def main(a: T.Buffer({shape(*dims)}, "{dtype}"),
         w: T.Buffer({shape(groups * fg, cg, kh, kw)}, "{dtype}"),
         conv2d_gemm: T.Buffer({shape(n, groups * fg, oh, ow)}, "{dtype}")):
    T.func_attr({{"op_pattern": {_OUT_ELEMWISE_FUSABLE}, "tirx.noalias": True}})
    for b, g, f, y, z, c, i, j in T.grid{shape(n, groups, fg, oh, ow, cg, kh, kw)}:
        with T.sblock("conv2d_gemm"):
            vb, vg, vf, vy, vz, vc, vi, vj = T.axis.remap("SSSSSRRR", [b, g, f, y, z, c, i, j])
            T.reads({at}, {wt})
            T.writes({out})
            with T.init():
                {out} = T.{dtype}(0)
            {out} = {out} + {at} * {wt}
"""
    return parse(src, s_tir=True)


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _make_rewriter():
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class ConvToGemm(PyExprMutator):
        """Replace each NCHW/OIHW float conv2d with im2col (when needed) + a per-group
        matrix product."""

        def __init__(self, mod) -> None:
            super().__init__(mod)
            self.funcs: dict[tuple, Any] = {}   # PrimFuncs added, by shape
            self.rewritten = 0

        def _func(self, key: tuple, make, name: str):
            if key not in self.funcs:
                # private (no global_symbol): once fused, the unfused original is dead
                # code that the pipeline drops instead of compiling it
                func = make().without_attr("global_symbol")
                self.funcs[key] = self.builder_.add_func(func, name)
            return self.funcs[key]

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
                return call
            a = call.attrs
            x, wt = call.args
            if (str(a.data_layout), str(a.kernel_layout), str(a.out_layout or a.data_layout)) \
                    != _LAYOUT or str(a.out_dtype) not in ("None", "", "void", str(x.ty.dtype)):
                return call
            dtype = str(x.ty.dtype)
            n, c, h, w = _ints(x.ty.shape)
            f, cg, kh, kw = _ints(wt.ty.shape)
            groups = int(a.groups)
            stride, dil = _ints(a.strides), _ints(a.dilation)
            pad = _ints(a.padding)          # top, left, bottom, right
            _, _, oh, ow = _ints(call.ty.shape)
            bb = self.builder_
            patches = not (kh == kw == 1 and stride == (1, 1) and not any(pad))
            a_in = x
            if patches:
                key = ("im2col", n, c, h, w, kh, kw, stride, pad, dil, groups, dtype)
                name = f"conv2d_im2col{len(self.funcs)}_{c}x{h}x{w}k{kh}s{stride[0]}"
                gv = self._func(key, lambda: im2col_func(
                    n, c, h, w, kh, kw, stride[:2], (pad[0], pad[1]), dil[:2], groups, oh, ow,
                    dtype), name)
                a_in = bb.emit(relax.call_tir(
                    gv, [x], relax.TensorType((n, groups, oh, ow, cg, kh, kw), dtype)),
                    name_hint=f"im2col{self.rewritten}")
            key = ("gemm", n, groups, f, cg, kh, kw, oh, ow, dtype, patches)
            name = f"conv2d_gemm{len(self.funcs)}_{f}x{cg * kh * kw}g{groups}_{oh}x{ow}"
            gv = self._func(key, lambda: gemm_func(n, groups, f // groups, cg, kh, kw, oh, ow,
                                                   dtype, patches), name)
            self.rewritten += 1
            return relax.call_tir(gv, [a_in, wt], relax.TensorType((n, f, oh, ow), dtype))

    return ConvToGemm


def convs_to_gemm(mod):
    """The Relax module with every conv2d rewritten as im2col + matrix product; returns
    (module, number of convolutions rewritten)."""
    from tvm import relax

    rewriter = _make_rewriter()(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    out = rewriter.builder_.get()
    return relax.transform.DeadCodeElimination()(out), rewriter.rewritten


def lower_cuda(arch, weights: dict, batch: int = 1):
    """Lower for the cuda target: resdsl's plain Relax lowering, then `convs_to_gemm`.
    The result (a `Lowered`) is what the cuda build compiles; it is target-independent,
    so it also runs on llvm (which is how its numerics are checked without a GPU)."""
    lowered = lower(arch, weights, batch=batch)
    lowered.mod, _ = convs_to_gemm(lowered.mod)
    return lowered


def gemm_schedule_report(mod, target) -> dict[str, str]:
    """For each matrix-product PrimFunc of the fused module (what the cuda pipeline
    schedules), the dlight rule that takes it: "Matmul" when dlight's matmul rule
    applies, else "fallback". The module is legalized and fused as the GPU pipeline does."""
    import tvm
    from tvm import relax, tirx
    from tvm.s_tir import dlight as dl

    seq = tvm.transform.Sequential([
        relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()])
    with target:
        fused = seq(mod)
    report = {}
    for gvar, func in fused.functions_items():
        if isinstance(func, tirx.PrimFunc) and "gemm" in gvar.name_hint:
            sch = dl.gpu.Matmul().apply(func, target, False)
            report[gvar.name_hint] = "Matmul" if sch is not None else "fallback"
    return report
