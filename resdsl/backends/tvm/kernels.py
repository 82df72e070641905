"""Hand-scheduled CPU kernels: convolution with its epilogue (bias, residual add, ReLU).

Without tuning, TVM's llvm pipeline lowers a convolution to plain loops, about 100x
slower than PyTorch. This module writes each convolution of the network as a TE
compute over weights packed in numpy (`pack_weights`) and schedules it for the host's
SIMD width:

    out[n, f, y, x] = epilogue(sum_{c, ky, kx} pad[n, base(f) + c, y*s + ky, x*s + kx]
                                                 * wp[f // FB, c, ky, kx, f % FB])

The accumulator for FB output channels (one to three vector registers) by XT output
columns lives in registers; FB x XT is chosen per layer (`plan_conv`) so the accumulators
fit in the vector registers, the output width padded up to a multiple of XT where that is
cheaper. The epilogue writes each channel's XT columns as one vector. Grouped
convolutions whose groups are narrower than FB are computed as block-diagonal dense
blocks (`FB / group width` times the MACs of those, usually small, layers) so the same
kernel serves ResNet, ResNeXt and DenseNet.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


FMA_LATENCY = 4  # cycles, on the x86 cores of the last decade
POINTWISE_CHUNK = 28  # columns per task of a 1x1 convolution (measured: 16-32 are close)
XVEC_MAX_CIN = 512    # 1x1 products up to this many input channels vectorise the columns
XVEC_CHANNELS = {False: 4, True: 8}   # output channels of such a tile: AVX2, AVX-512
SMALL_PLANE = 196          # pixels (14x14) up to which a strided 1x1 gathers its input whole
PACK_MIN_COLUMNS = 1024   # planes from this many pixels are packed (56x56: 196 lines apart)
MIN_TASKS = 16        # parallel tasks a packed 1x1 convolution makes at least (where it can)
ROW_PACK_MAX_BLOCKS = 1   # a stride-1 window with this few channel blocks packs its rows
WIDE_CHUNK = 224      # columns a 1x1 task takes at most where the tasks stay many: ...
WIDE_TASKS = 32       # ... at least this many (images x column chunks)
POINTWISE_ACCUMULATORS = 28   # AVX-512 accumulators of a 1x1 product's wide tile ...
WIDE_TILE_IMAGES = 4          # ... on planes of 14x14 or so: half-plane tasks from this
                              # many images, whole planes below


def max_accumulators(lanes: int) -> int:
    """Accumulator registers a tile may use: AVX2 has 16 vector registers (measured here:
    12 accumulators spill, 8 do not), AVX-512 has 32 (of 256 or 512 bits). A 1x1 product's
    wide tile (`wide_tile`) takes up to POINTWISE_ACCUMULATORS."""
    return 8 if lanes <= 8 else 16


@dataclass(frozen=True)
class ConvPlan:
    """How one convolution is blocked: FB output channels by XT columns per tile."""

    fb: int             # output channels per block (multiple of the vector width)
    xt: int             # output columns per tile
    cb: int             # input channels each block reads
    f_padded: int       # output channels rounded up to a multiple of fb
    group_width: int    # output channels per group
    blockdiag: bool     # several groups per block (block-diagonal weights)
    ow_padded: int = 0  # output columns computed: the width rounded up to a multiple of xt
    xc: int = 0         # columns per parallel chunk (0: whole rows), a multiple of xt
    rcb: int = 0        # input channels per reduction chunk (0: no chunking)
    uk: int = 0         # kernel-window loops unrolled: 0 none, 1 the columns, 2 both
    xvec: int = 0       # 1x1 products vectorised along the columns, this many lanes: a
    #                     tile is FB output channels (broadcast weights) by XT vectors
    pack: bool = True   # a chunked task copies its input chunk into a contiguous buffer

    def base(self, fo, cin_per_group: int):
        """First input channel read by block `fo` (a TE expression or an int)."""
        if self.blockdiag:
            return fo * (self.fb // self.group_width) * cin_per_group
        if self.group_width >= self.f_padded:
            return 0
        return (fo * self.fb // self.group_width) * cin_per_group


def _step_cycles(broadcasts: int, vectors: int) -> float:
    """Cycles per reduction step of a register tile of `broadcasts` x `vectors`
    accumulators: two FMAs and two loads a cycle, and each accumulator waits for its
    previous FMA (latency 4), so fewer than 8 accumulators leave the FMA units idle."""
    return max(broadcasts * vectors / 2, (broadcasts + vectors) / 2, FMA_LATENCY)


def _conv_cost(plan: ConvPlan, f: int, fg: int, out_w: int, lanes: int) -> float:
    """`plan_conv`'s cost of a channel-vectorised plan: cycles per useful vector FMA."""
    waste = plan.f_padded / f * (plan.fb // fg if plan.blockdiag else 1)
    return _step_cycles(plan.xt, max(1, plan.fb // lanes)) / (plan.xt * plan.fb / lanes) \
        * waste * plan.ow_padded / out_w


def plan_conv(f: int, cin: int, groups: int, out_w: int, lanes: int) -> ConvPlan | None:
    """Choose the blocking, or None when this kernel does not fit the convolution.

    Per step of the reduction a tile does XT * FB/lanes FMAs and XT + FB/lanes loads
    (broadcast inputs, weight vectors), two of each per cycle at best, and no faster than
    one FMA latency per step (so at least 8 accumulators keep the units busy); the chosen plan
    minimises that time per useful multiply-accumulate, counting the work wasted on
    padded channels, padded columns and block-diagonal zeros. Where that time ties, the
    plan that wastes less wins (fewer zero weights to stream).

    With 16 lanes (AVX-512) blocks of 8 channels (one 256-bit register) are candidates
    too: costed as if a half-full register took a full one's issue slot, they tie with
    the 16-channel block-diagonal plans of groups of 4 or 8 channels and win on waste.
    On cores that run 512-bit FMAs as two 256-bit halves (AMD Zen 4) they are also
    faster per instruction: measured here, ResNeXt-50's groups of 4 ran 3.4x faster
    (1.13 -> 0.33 ms) and its groups of 8 1.7x."""
    fg, cg = f // groups, cin // groups
    widths = [lanes * mult for mult in (1, 2, 3)]
    if lanes >= 16:
        widths.insert(0, lanes // 2)
    best = None
    for fb in widths:
        vecs = max(1, fb // lanes)          # registers per column of the block
        if groups == 1:
            fpad, blockdiag, cb = -(-f // fb) * fb, False, cin
        elif fg % fb == 0:
            fpad, blockdiag, cb = f, False, cg
        elif fb % fg == 0 and f % fb == 0:
            fpad, blockdiag, cb = f, True, (fb // fg) * cg
        else:
            continue
        waste = fpad / f * (fb // fg if blockdiag else 1)
        group_width = fpad if groups == 1 else fg
        for xt in range(1, min(out_w, max_accumulators(lanes) // vecs) + 1):
            plan = ConvPlan(fb, xt, cb, fpad, group_width, blockdiag, -(-out_w // xt) * xt)
            key = (round(_conv_cost(plan, f, fg, out_w, lanes), 6), round(waste, 6), -fb, -xt)
            if best is None or key < best[0]:
                best = (key, plan)
    return best[1] if best else None


def plan_window(f: int, cin: int, groups: int, out_w: int, lanes: int, k: int, s: int,
                in_w: int) -> ConvPlan | None:
    """The plan of a convolution with a window (k > 1): `plan_grouped`'s column tile for
    narrow groups, else `plan_conv`'s tile; a strided, ungrouped one on a large plane
    (ResNet-50's first 3x3 of stage 2, 56x56 in) is chunked by two tiles a task and
    packs its rows, which it otherwise read at the stride from a padded copy (0.57-0.64
    of the time, measured in the network). A stride-1 one with a single block of output
    channels (DenseNet's 3x3 convolutions to 32 channels) packs the input rows of each
    output row once, in a task of its own, instead of every tile reading them from 128
    channel planes, a page each (in the network: 0.77-1.01 of the time)."""
    if groups > 1 and s == 1:
        grouped = plan_grouped(f, cin, groups, out_w, lanes)
        if grouped is not None:
            return grouped
    plan = plan_conv(f, cin, groups, out_w, lanes)
    if plan is not None and k == 3 and s > 1 and groups == 1 and in_w >= 56 \
            and plan.ow_padded % (2 * plan.xt) == 0:
        plan = replace(plan, xc=2 * plan.xt)
    elif plan is not None and k > 1 and s == 1 and groups == 1 \
            and plan.f_padded <= ROW_PACK_MAX_BLOCKS * plan.fb:
        plan = replace(plan, xc=plan.ow_padded)
    return plan


def plan_grouped(f: int, cin: int, groups: int, out_w: int, lanes: int) -> ConvPlan | None:
    """A column-vectorised tile for a stride-1 grouped convolution: FB = a group's output
    channels (weights broadcast) by XT vectors of output columns, the width padded up to
    whole vectors; or None where `plan_conv`'s channel-vectorised tile costs less (by
    the same count of cycles per useful FMA). It wins for narrow groups (ResNeXt's 3x3
    convolutions of 4 or 8 channels a group, depthwise ones): no block-diagonal zeros,
    and every load is a whole vector of an input row. Measured in the network (ResNeXt-50,
    batch 8): its groups of 4 (56x56) took 0.35 of the block-diagonal kernel's time, its
    groups of 8 (28x28) 0.46."""
    gw, cg = f // groups, cin // groups
    if gw > max_accumulators(lanes):
        return None
    channel = plan_conv(f, cin, groups, out_w, lanes)
    vectors = -(-out_w // lanes)
    xt = max(1, min(vectors, max_accumulators(lanes) // gw))
    owp = -(-out_w // (xt * lanes)) * xt * lanes
    cost = _step_cycles(gw, xt) / (gw * xt) * owp / out_w
    if channel is not None and _conv_cost(channel, f, gw, out_w, lanes) <= cost:
        return None
    return ConvPlan(gw, xt, cg, f, gw, False, owp, 0, 0, 0, lanes)


def plan_pointwise(f: int, cin: int, groups: int, columns: int, lanes: int,
                   subsample: bool = False, images: int = 1) -> ConvPlan | None:
    """The plan for a 1x1 unpadded convolution computed over its H*W pixels as one row of
    `columns`: a matrix product. The columns of each of the `images` are split into
    parallel chunks (a whole number of tiles, see `_chunk`). Up to XVEC_MAX_CIN input
    channels the tile is column-vectorised. A task packs its chunk of the input first
    where the input's planes are large (their rows would fall into few of L1's sets),
    where the chunking pads the width, or to gather a strided convolution's pixels
    (`subsample`, which also keeps the channel-vectorised tile: its gather is not a
    vector load)."""
    wide = wide_tile(f, cin, groups, columns, lanes, images)
    if wide is not None and not subsample:
        return wide
    if not subsample and groups == 1 and cin <= XVEC_MAX_CIN \
            and f % XVEC_CHANNELS[lanes >= 16] == 0:
        fr, xv = XVEC_CHANNELS[lanes >= 16], 2
        if columns <= 4 * lanes and lanes >= 16:
            fr, xv = 4, 4     # a 7x7 plane: one tile of 4 vectors (measured in the network:
            #                   0.71 of the 8x2 tiles' time for ResNet-50's 512 -> 2048)
        tile = xv * lanes
        owp = -(-columns // tile) * tile
        return ConvPlan(fr, xv, cin, f, f, False, owp, _chunk(tile, owp, images), 0, 0, lanes,
                        pack=owp > columns or columns >= PACK_MIN_COLUMNS)
    plan = plan_conv(f, cin, groups, columns, lanes)
    if plan is None:
        return None
    if subsample and columns <= SMALL_PLANE:
        # gathered once, whole, before the product: on planes this small a gather per
        # task (every block of output channels split between tasks) costs more (0.83-0.90
        # of the time in the network)
        return replace(plan, pack=False)
    return replace(plan, xc=_chunk(plan.xt, plan.ow_padded, images),
                   pack=subsample or plan.ow_padded > columns or columns >= PACK_MIN_COLUMNS)


def wide_tile(f: int, cin: int, groups: int, columns: int, lanes: int,
              images: int = 1) -> ConvPlan | None:
    """The wide channel-vectorised tile of a 1x1 product on a plane of 14x14 or so, or None
    where it does not fit: 2 registers of output channels by 12-14 columns (a whole number
    of tiles per plane), 24-28 accumulators of AVX-512's 32 registers, packed, a task per
    half plane from WIDE_TILE_IMAGES images and per plane below (where the blocks of
    output channels are split between tasks, which then share one packed copy). Per input
    channel a tile loads 2 weight vectors and broadcasts 14 inputs for 28 FMAs, where the
    8x2 column tile loads 2 and broadcasts 8 for 16. Measured in the network (both orders
    of paired runs): at batch 8 (ResNet-50, ResNeXt-50) the 14x14 products from 1024
    channels took 0.75-0.89 of the time, those to 1024 channels 0.86-0.94; at batch 1
    (ResNet-50) 0.68-0.76 and 0.88-0.90, DenseNet-121's about the same. A convolution with
    a window spills so many accumulators (2-4x slower, measured), and AVX2's 16 registers
    do not hold them. At 28x28 it was slower (1.06-1.24 at batch 8)."""
    if lanes < 16 or groups != 1 or f % (2 * lanes) or columns > SMALL_PLANE:
        return None
    widest = POINTWISE_ACCUMULATORS // 2
    xt = next((t for t in range(widest, widest - 3, -1) if columns % t == 0 and columns > 4 * t),
              None)
    if xt is None:
        return None
    tiles = columns // xt
    half = images >= WIDE_TILE_IMAGES and tiles % 2 == 0
    chunk = xt * (tiles // 2 if half else tiles)
    return ConvPlan(2 * lanes, xt, cin, f, f, False, columns, chunk, pack=True)


def _chunk(tile: int, columns: int, images: int = 1) -> int:
    """Columns per parallel task: a whole number of tiles dividing `columns`, the widest
    up to WIDE_CHUNK that still leaves WIDE_TASKS tasks over the images, or else the one
    nearest POINTWISE_CHUNK (whichever is wider). Every task streams all the weights
    once, so wider chunks read them fewer times; measured in the network at batch 8
    (`resdsl tune --knobs`): ResNet-50's 56x56 1x1 layers took 0.80-0.86 of the time in
    chunks of 224 columns, its 28x28 ones 0.83-0.90 in chunks of 160 and the strided
    shortcut 0.79-0.86 in chunks of 112 or more; at batch 1 (14 or 5 tasks) those chunks
    were slower (1.11-1.16), which WIDE_TASKS keeps out."""
    tiles = columns // tile
    divisors = [d for d in range(1, tiles + 1) if tiles % d == 0]
    near = min(divisors, key=lambda d: (abs(tile * d - POINTWISE_CHUNK), -d))
    wide = [d for d in divisors if tile * d <= WIDE_CHUNK and images * (tiles // d) >= WIDE_TASKS]
    return tile * max(wide + [near])


def pack_weights(w: np.ndarray, groups: int, plan: ConvPlan) -> np.ndarray:
    """OIHW weights -> [F'/FB, CB, K, K, FB] as the kernel reads them (zeros where a
    block-diagonal block crosses groups, or for padded output channels)."""
    f, cg, kh, kw = w.shape
    fb, cb = plan.fb, plan.cb
    out = np.zeros((plan.f_padded // fb, cb, kh, kw, fb), np.float32)
    for fo in range(plan.f_padded // fb):
        for fi in range(fb):
            oc = fo * fb + fi
            if oc >= f:
                continue
            if plan.blockdiag:
                local_group = (fi // plan.group_width)
                out[fo, local_group * cg:(local_group + 1) * cg, :, :, fi] = w[oc]
            else:
                out[fo, :, :, :, fi] = w[oc]
    return out


def conv_func(n: int, cin: int | None, h: int, w: int, f: int, k: int, s: int, p: int, d: int,
              groups: int, plan: ConvPlan, residual: bool, relu: bool,
              schedule: bool = True, subsample: tuple[int, int, int] | None = None,
              prologue: tuple[int, bool] | None = None):
    """A PrimFunc main(data, wp, bias, [residual], out); scheduled by hand unless
    `schedule` is false (then it is left for MetaSchedule to tune). `cin` may be None
    for an ungrouped convolution: the input channels are then symbolic (taken from the
    arguments' shapes when called), so one function serves every layer that differs
    only in them (DenseNet's 1x1 convolutions, one width each).

    `subsample` (H, W, S), for a strided 1x1 convolution computed as a matrix product
    (h == 1, k == 1, s == 1, w == the output pixels): `data` is the [n, cin, H, W]
    input, and column x reads its pixel (x // OW * S, x % OW * S); a chunked schedule
    gathers those pixels once per task, as it packs an input chunk anyway.

    `prologue` (C, relu), for an ungrouped convolution with symbolic input channels: `data`
    is [n, C, h, w] of which the convolution reads the first `cin` channels (those its
    weights have) through a per-channel affine map (arguments `scale`, `shift` [cin],
    after `bias`) and, if `relu`, ReLU -- DenseNet's batch norm and ReLU before each
    layer, applied to a dense block's buffer as a chunked schedule packs it, instead of
    by a pass that wrote them out for every layer."""
    from tvm import te, tirx

    oh = (h + 2 * p - d * (k - 1) - 1) // s + 1
    ow = (w + 2 * p - d * (k - 1) - 1) // s + 1
    fb, cb = plan.fb, plan.cb
    if cin is None:
        if groups != 1:
            raise ValueError("symbolic input channels need an ungrouped convolution")
        cin = cb = tirx.Var("cin", "int32")
    elif prologue is not None:
        raise ValueError("a prologue needs symbolic input channels")
    owp = plan.ow_padded or ow
    cg = cin // groups
    if subsample is not None:
        h_in, w_in, s_in = subsample
        ow_in = (w_in - 1) // s_in + 1
        data = te.placeholder((n, cin, h_in, w_in), "float32", name="data")
        gathered = te.compute((n, cin, h, w), lambda b, c, y, x: data[
            b, c, x // ow_in * s_in, x % ow_in * s_in], name="subsample")
    elif prologue is not None:
        data = te.placeholder((n, prologue[0], h, w), "float32", name="data")
        scale = te.placeholder((cin,), "float32", name="scale")
        shift = te.placeholder((cin,), "float32", name="shift")

        def affine(b, c, y, x):
            v = data[b, c, y, x] * scale[c] + shift[c]
            return tirx.max(v, tirx.const(0.0, "float32")) if prologue[1] else v
        gathered = te.compute((n, cin, h, w), affine, name="prologue")
    else:
        data = gathered = te.placeholder((n, cin, h, w), "float32", name="data")
    wp = te.placeholder((plan.f_padded // fb, cb, k, k, fb), "float32", name="wp")
    bias = te.placeholder((f,), "float32", name="bias")
    inputs = [data, wp, bias] + ([scale, shift] if prologue is not None else [])
    # columns read by the padded output width, zero beyond the input
    need_w = max(w + 2 * p, (owp - 1) * s + d * (k - 1) + 1)
    if p or need_w > w:
        pad = te.compute(
            (n, cin, h + 2 * p, need_w),
            lambda b, c, y, x: tirx.if_then_else(
                tirx.all(y >= p, y < h + p, x >= p, x < w + p), gathered[b, c, y - p, x - p],
                tirx.const(0.0, "float32")), name="pad")
    else:
        pad = gathered
    rc = te.reduce_axis((0, cb), "rc")
    ry = te.reduce_axis((0, k), "ry")
    rx = te.reduce_axis((0, k), "rx")
    if plan.xvec:   # [.., channel, column]: the columns are the vector lanes
        acc = te.compute(
            (n, plan.f_padded // fb, oh, fb, owp),
            lambda b, fo, y, fi, x: te.sum(
                pad[b, plan.base(fo, cg) + rc, y * s + ry * d, x * s + rx * d]
                * wp[fo, rc, ry, rx, fi], axis=[rc, ry, rx]), name="acc")
    else:
        acc = te.compute(
            (n, plan.f_padded // fb, oh, owp, fb),
            lambda b, fo, y, x, fi: te.sum(
                pad[b, plan.base(fo, cg) + rc, y * s + ry * d, x * s + rx * d]
                * wp[fo, rc, ry, rx, fi], axis=[rc, ry, rx]), name="acc")
    res = None
    if residual:
        res = te.placeholder((n, f, oh, ow), "float32", name="residual")
        inputs.append(res)

    def epilogue(b, c, y, x):
        v = (acc[b, c // fb, y, c % fb, x] if plan.xvec else acc[b, c // fb, y, x, c % fb]) \
            + bias[c]
        if res is not None:
            v = v + res[b, c, y, x]
        return tirx.max(v, tirx.const(0.0, "float32")) if relu else v
    out = te.compute((n, f, oh, ow), epilogue, name="out")
    func = te.create_prim_func(inputs + [out])
    if not schedule:
        return func
    return schedule_conv(func, plan, f)


def schedule_conv(func, plan: ConvPlan, f: int):
    """Register-blocked schedule of the compute `conv_func` builds: the scheduled
    PrimFunc."""
    from tvm import s_tir
    sch = s_tir.Schedule(func)
    apply_conv_schedule(sch, plan, f)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def apply_conv_schedule(sch, plan: ConvPlan, f: int) -> None:
    """The schedule steps, on a Schedule (so that its trace can seed a tuning database)."""
    fb, xt = plan.fb, plan.xt
    b_acc, b_out = sch.get_sblock("acc"), sch.get_sblock("out")
    bn, bf, by, bx = sch.get_loops(b_out)
    fo, fi = sch.split(bf, [None, fb])  # a tail past f (padded channels) is guarded
    if plan.xc:
        _chunked_schedule(sch, plan, b_acc, b_out, (bn, fo, fi, by, bx))
        return
    if plan.xvec:
        _window_xvec_schedule(sch, plan, b_acc, b_out, (bn, fo, fi, by, bx))
        return
    xo, xi = sch.split(bx, [None, xt])
    sch.reorder(bn, fo, by, xo, xi, fi)
    sch.parallel(sch.fuse(bn, fo, by))
    sch.compute_at(b_acc, xo, preserve_unit_loops=True)
    sch.set_scope(b_acc, 0, "local")
    loops = sch.get_loops(b_acc)
    a_x, a_fi, a_rc, a_ry, a_rx = loops[-5:]
    sch.reorder(a_rc, a_ry, a_rx, a_x, a_fi)
    sch.unroll(a_x)
    _unroll_window(sch, plan, a_ry, a_rx)
    sch.vectorize(a_fi)
    sch.decompose_reduction(b_acc, a_rc)
    # the epilogue writes NCHW rows: vectorise along the XT columns of each channel
    o_x, o_f = sch.get_loops(b_out)[-2:]
    sch.reorder(o_f, o_x)
    sch.vectorize(o_x)
    padded = [b for b in sch.get_child_blocks(sch.get_sblock("root"))
              if sch.get(b).name_hint in ("pad", "subsample", "prologue")]
    for b_pad in padded:
        pl = sch.get_loops(b_pad)
        sch.parallel(sch.fuse(pl[0], pl[1]))


def _window_xvec_schedule(sch, plan: ConvPlan, b_acc, b_out, loops) -> None:
    """The column-vectorised tile of a convolution with a window (`plan_grouped`): a
    parallel task per image and block of FB output channels (one group) pads its group's
    input planes into a buffer of its own (which then stays in L1/L2), then computes
    every row; per input channel and window position a tile does XT vector loads of an
    input row and FB weight broadcasts; the epilogue stores whole vectors along the
    output rows."""
    bn, fo, fi, by, bx = loops
    xo, xi = sch.split(bx, [None, plan.xt * plan.xvec])
    sch.reorder(bn, fo, by, xo, xi, fi)
    task = sch.fuse(bn, fo)
    sch.parallel(task)
    sch.compute_at(b_acc, xo, preserve_unit_loops=True)
    sch.set_scope(b_acc, 0, "local")
    a_fi, a_x, a_rc, a_ry, a_rx = sch.get_loops(b_acc)[-5:]
    a_xv, a_xl = sch.split(a_x, [plan.xt, plan.xvec])
    sch.reorder(a_rc, a_ry, a_rx, a_fi, a_xv, a_xl)
    sch.unroll(a_fi)
    sch.unroll(a_xv)
    _unroll_window(sch, plan, a_ry, a_rx)
    sch.vectorize(a_xl)
    sch.decompose_reduction(b_acc, a_rc)
    o_x, o_f = sch.get_loops(b_out)[-2:]
    sch.reorder(o_f, o_x)
    _, o_xl = sch.split(o_x, [None, plan.xvec])
    sch.vectorize(o_xl)
    for b_pad in [b for b in sch.get_child_blocks(sch.get_sblock("root"))
                  if sch.get(b).name_hint == "pad"]:
        sch.compute_at(b_pad, task, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(b_pad)[-1])


def _unroll_window(sch, plan: ConvPlan, a_ry, a_rx) -> None:
    if plan.uk >= 1 and int(sch.get(a_rx).extent) > 1:
        sch.unroll(a_rx)
    if plan.uk >= 2 and int(sch.get(a_ry).extent) > 1:
        sch.unroll(a_ry)


def candidate_plans(hand: ConvPlan, f: int, cin: int, groups: int, width: int, lanes: int,
                    k: int, limit: int = 16) -> list[ConvPlan]:
    """Other blockings of one convolution for a measured search, most promising first:
    the hand plan's parallel chunking (columns per task, reduction chunks) and unrolling
    varied, and the next best register tiles (FB x XT) of the cost model."""
    fg = f // groups
    out: list[ConvPlan] = []

    def add(plan):
        if plan != hand and plan not in out:
            out.append(plan)

    def chunks(plan):
        unit = plan.xt * (plan.xvec or 1)          # columns of one register tile
        tiles = plan.ow_padded // unit
        return [unit * d for d in range(1, tiles) if tiles % d == 0
                and 8 <= unit * d <= (512 if k == 1 else 128)]

    variants = []
    if hand.xvec and k > 1:    # a column-vectorised window (`plan_grouped`): its unrolling
        variants += [replace(hand, uk=1), replace(hand, uk=2)]      # and its width
        for xt in range(1, max_accumulators(lanes) // hand.fb + 1):
            unit = xt * hand.xvec
            if xt != hand.xt and unit < 2 * width:
                variants.append(replace(hand, xt=xt, ow_padded=-(-width // unit) * unit))
    else:
        for xc in chunks(hand) + ([0] if hand.xc and not hand.xvec else []):
            variants.append(replace(hand, xc=xc, rcb=0))
    if hand.xc:
        variants.append(replace(hand, pack=not hand.pack))
        for rcb in (32, 64, 128, 256):
            if rcb < hand.cb and hand.cb % rcb == 0:
                variants.append(replace(hand, rcb=rcb))
    if k > 1 and not hand.xvec:
        variants += [replace(hand, uk=1), replace(hand, uk=2)]
    # other register tiles, ranked by the cost model (as plan_conv ranks them)
    widths = [lanes * mult for mult in (1, 2, 3)] + ([lanes // 2] if lanes >= 16 else [])
    tiles = []
    for fb in widths:
        vecs = max(1, fb // lanes)
        if groups == 1:
            fpad, blockdiag, cb = -(-f // fb) * fb, False, cin
        elif fg % fb == 0:
            fpad, blockdiag, cb = f, False, cin // groups
        elif fb % fg == 0 and f % fb == 0:
            fpad, blockdiag, cb = f, True, (fb // fg) * (cin // groups)
        else:
            continue
        for xt in range(2, min(width, max_accumulators(lanes) // vecs) + 1):
            plan = ConvPlan(fb, xt, cb, fpad, fpad if groups == 1 else fg, blockdiag,
                            -(-width // xt) * xt)
            cost = _conv_cost(plan, f, fg, width, lanes)
            if hand.xc:   # chunk the columns as the hand plan does, about as wide
                near = chunks(plan)
                if not near:
                    continue
                plan = replace(plan, xc=min(near, key=lambda c: abs(c - hand.xc)))
            tiles.append((cost, plan))
    tiles.sort(key=lambda t: t[0])
    ranked = [p for _, p in tiles[:6]]
    if hand.xc and k == 1 and groups == 1:   # column-vectorised tiles of a 1x1 product
        shapes = [(8, 2), (4, 4), (4, 2), (8, 1)] if lanes >= 16 else [(4, 2), (2, 4), (8, 1)]
        for fr, xv in shapes:
            if f % fr:
                continue
            unit = xv * lanes
            owp = -(-width // unit) * unit
            plan = ConvPlan(fr, xv, cin, f, f, False, owp, 0, 0, 0, lanes)
            near = chunks(replace(plan, xc=unit)) or [owp]
            ranked.insert(1, replace(plan, xc=min(near, key=lambda c: abs(c - hand.xc))))
    wide = wide_tile(f, cin, groups, width, lanes) if k == 1 and hand.xc else None
    if wide is not None:      # the 1x1 product's wide tile (usually the hand's own)
        ranked.insert(0, wide)
    # alternate the two kinds, so a small budget tries some of each
    for i in range(max(len(variants), len(ranked))):
        for group in (variants, ranked):
            if i < len(group):
                add(group[i])
    return out[:limit]


def _chunked_schedule(sch, plan: ConvPlan, b_acc, b_out, loops) -> None:
    """Columns in chunks of XC, a parallel task each; within a task every block of
    output channels in turn, the reduction optionally in chunks of RCB input channels
    outside the column tiles. The task first copies its chunk of the input (all input
    channels by XC columns) into a contiguous buffer, which then stays in L1/L2 while
    every block of output channels reads it (BLIS's packing of B). Read in place, the
    chunk's rows lie one channel plane apart: at 56x56 that stride is 196 cache lines,
    which maps every row into a sixteenth of L1's sets, and ResNet-50's first-stage 1x1
    convolutions ran at a third of the speed of the later ones."""
    bn, fo, fi, by, bx = loops
    tile = plan.xt * (plan.xvec or 1)
    xc_o, xc_i = sch.split(bx, [None, plan.xc])
    xo, xi = sch.split(xc_i, [None, tile])
    # enough parallel tasks for every core even at batch 1 on a 7x7 plane: where the
    # chunks are few, the blocks of output channels are split between tasks too
    blocks = int(sch.get(fo).extent)
    tasks = int(sch.get(bn).extent) * int(sch.get(by).extent) * int(sch.get(xc_o).extent)
    split = next(d for d in range(1, blocks + 1) if blocks % d == 0
                 and (tasks * d >= MIN_TASKS or d == blocks))
    fo_o, fo = sch.split(fo, [split, None])
    sch.reorder(bn, by, xc_o, fo_o, fo, xo, fi, xi)
    task = sch.fuse(bn, by, xc_o, fo_o)
    sch.parallel(task)
    # a column-vectorised tile with a chunked reduction keeps the task's accumulators
    # (all its output channels) in a buffer across the chunks
    task_acc = plan.xvec and plan.rcb and plan.rcb < plan.cb
    sch.compute_at(b_acc, task if task_acc else fo, preserve_unit_loops=True)
    sch.set_scope(b_acc, 0, "global" if task_acc else "local")
    stages = {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}
    if plan.pack or "subsample" in stages:
        b_pack = sch.cache_read(b_acc, 0, "global")
        # the packing reads the input itself: the strided gather, the zero columns past
        # the input (a padded width) and a prologue's batch norm and ReLU are computed
        # into the packed chunk, not as passes of their own over the whole tensor
        for name in ("pad", "subsample", "prologue"):
            if name in stages:
                sch.compute_inline(stages[name])
        # a 1x1 product whose blocks of output channels are split between tasks packs its
        # whole input once, in a parallel pass of its own, instead of in every task that
        # reads the chunk: DenseNet's 14x14 bottlenecks at batch 1 (their batch norm and
        # ReLU are applied as they are packed) took 0.66-0.93 of the time in the network
        pointwise = int(sch.get(b_acc).iter_vars[-1].dom.extent) == 1
        once = pointwise and split > 1
        if not once:
            sch.compute_at(b_pack, task, preserve_unit_loops=True)
        if pointwise:
            # a 1x1 product's chunk is packed tile by tile (BLIS's micro-panels): each
            # register tile reads its columns of every input channel from one run of memory
            sch.transform_layout(b_pack, ("write", 0),
                                 lambda b, c, y, x: (b, y, x // tile, c, x % tile))
            sch.vectorize(sch.split(sch.get_loops(b_pack)[-1], [None, tile])[1])
            if once:
                pl = sch.get_loops(b_pack)
                sch.parallel(sch.fuse(pl[0], pl[1]))
        else:
            sch.vectorize(sch.get_loops(b_pack)[-1])
    else:
        for name in ("prologue", "pad"):
            if name in stages:
                pl = sch.get_loops(stages[name])
                sch.parallel(sch.fuse(pl[0], pl[1]))
    if plan.xvec:
        _xvec_tiles(sch, plan, b_acc, xi, task_acc)
        return
    a_x, a_fi, a_rc, a_ry, a_rx = sch.get_loops(b_acc)[-5:]
    a_xo, a_xi = sch.split(a_x, [None, plan.xt])
    if plan.rcb and plan.rcb < plan.cb:
        a_rco, a_rci = sch.split(a_rc, [None, plan.rcb])
        sch.reorder(a_rco, a_xo, a_rci, a_ry, a_rx, a_xi, a_fi)
        first = a_rco
    else:
        sch.reorder(a_xo, a_rc, a_ry, a_rx, a_xi, a_fi)
        first = a_xo
    sch.unroll(a_xi)
    _unroll_window(sch, plan, a_ry, a_rx)
    sch.vectorize(a_fi)
    sch.decompose_reduction(b_acc, first)
    sch.vectorize(xi)


def _xvec_tiles(sch, plan: ConvPlan, b_acc, xi, task_acc) -> None:
    """The tiles of a column-vectorised 1x1 kernel: FB output channels by XT vectors of
    columns accumulate in registers; per input channel the tile loads XT vectors of the
    packed input and broadcasts FB weights. The epilogue then stores whole vectors along
    NCHW rows (the channel-vectorised tile must transpose its registers into rows: for a
    64-channel reduction that cost a third of the kernel)."""
    lanes = plan.xvec
    if task_acc:   # chunk of the reduction outermost: the packed input's rows of one
        #            chunk stay in L1 while every block of output channels reads them
        a_fo, a_y, a_fi, a_x, a_rc, a_ry, a_rx = sch.get_loops(b_acc)[-7:]
        a_xo, a_xv, a_xl = sch.split(a_x, [None, plan.xt, lanes])
        a_rco, a_rci = sch.split(a_rc, [None, plan.rcb])
        sch.reorder(a_rco, a_fo, a_y, a_xo, a_rci, a_ry, a_rx, a_fi, a_xv, a_xl)
        first = a_rco
    else:
        a_fi, a_x, a_rc, a_ry, a_rx = sch.get_loops(b_acc)[-5:]
        a_xo, a_xv, a_xl = sch.split(a_x, [None, plan.xt, lanes])
        sch.reorder(a_xo, a_rc, a_ry, a_rx, a_fi, a_xv, a_xl)
        first = a_xo
    sch.unroll(a_fi)
    sch.unroll(a_xv)
    sch.vectorize(a_xl)
    sch.decompose_reduction(b_acc, first)
    _, xl = sch.split(xi, [None, lanes])
    sch.vectorize(xl)


@dataclass(frozen=True)
class LinearPlan:
    """The classifier y = x W + b: JB output features (one to two registers) by NB rows of
    the batch in registers; W packed as [J'/JB, K, JB] so each block streams contiguously."""

    jb: int
    nb: int
    j_padded: int


def plan_linear(n: int, j: int, lanes: int) -> LinearPlan:
    jb = 2 * lanes if j >= 4 * lanes else lanes
    nb = max(1, min(n, max_accumulators(lanes) // (jb // lanes)))
    return LinearPlan(jb, nb, -(-j // jb) * jb)


def pack_linear(w: np.ndarray, plan: LinearPlan) -> np.ndarray:
    """[J, K] (torch's layout) -> [J'/JB, K, JB], zero for the padded features."""
    j, k = w.shape
    out = np.zeros((plan.j_padded, k), np.float32)
    out[:j] = w
    return np.ascontiguousarray(out.reshape(-1, plan.jb, k).transpose(0, 2, 1))


def linear_func(n: int, k: int, j: int, plan: LinearPlan, bias: bool):
    """A PrimFunc main(x, wp, [bias], out): each parallel task owns JB output features and
    streams their weights once for all NB rows it holds in registers. TVM's generic
    schedule walked W's columns with a stride of J, at about 3 GFLOP/s."""
    from tvm import s_tir, te

    jb, nb = plan.jb, plan.nb
    x = te.placeholder((n, k), "float32", name="x")
    wp = te.placeholder((plan.j_padded // jb, k, jb), "float32", name="wp")
    r = te.reduce_axis((0, k), "r")
    acc = te.compute((n, plan.j_padded), lambda i, c: te.sum(
        x[i, r] * wp[c // jb, r, c % jb], axis=r), name="acc")
    inputs = [x, wp]
    if bias:
        b = te.placeholder((j,), "float32", name="bias")
        inputs.append(b)
        out = te.compute((n, j), lambda i, c: acc[i, c] + b[c], name="out")
    else:
        out = te.compute((n, j), lambda i, c: acc[i, c], name="out")
    sch = s_tir.Schedule(te.create_prim_func(inputs + [out]))
    b_acc, b_out = sch.get_sblock("acc"), sch.get_sblock("out")
    oi, oc = sch.get_loops(b_out)
    co, ci = sch.split(oc, [None, jb])
    io, ii = sch.split(oi, [None, nb])
    sch.reorder(co, io, ii, ci)
    sch.parallel(co)
    sch.compute_at(b_acc, io, preserve_unit_loops=True)
    sch.set_scope(b_acc, 0, "local")
    a_i, a_c, a_r = sch.get_loops(b_acc)[-3:]
    sch.reorder(a_r, a_i, a_c)
    sch.unroll(a_i)
    sch.vectorize(a_c)
    sch.decompose_reduction(b_acc, a_r)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def parallelize(func, min_parallel: int = 8):
    """A schedule for the operators resdsl has no kernel for (pools, element-wise chains,
    the global average, anything else left): every top-level block's leading spatial loops
    are fused and run in parallel, the innermost spatial loop of element-wise blocks is
    vectorised. TVM's default CPU lowering runs them on one core."""
    from tvm import s_tir, tirx
    sch = s_tir.Schedule(func)
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # noqa: BLE001 - functions without a root block stay as they are
        return func
    for block in blocks:
        loops = sch.get_loops(block)
        if not loops:
            continue
        node = sch.get(block)
        kinds = [iv.iter_type for iv in node.iter_vars]
        if len(kinds) != len(loops):
            continue
        spatial = 0
        extent = 1
        while spatial < len(loops) and kinds[spatial] == tirx.IterVar.DataPar:
            extent *= int(sch.get(loops[spatial]).extent)
            spatial += 1
            if extent >= min_parallel:
                break
        if spatial >= 1 and extent > 1:
            fused = sch.fuse(*loops[:spatial]) if spatial > 1 else loops[0]
            sch.parallel(fused)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def concat_func(n: int, parts: list[int], h: int, w: int, affine: bool, relu: bool,
                out_channels: int | None = None):
    """Channel concatenation of `parts` (channel counts), optionally followed by a
    per-channel affine map (an inference batch norm) and ReLU, as one parallel loop over
    output channel planes that copies each plane from its source with vector stores.

    TVM's generic concatenation selects the source of every element through a chain of
    conditions; DenseNet concatenates up to 32 tensors before every layer, and that chain
    cost a third of its run time. With `out_channels` the output has that many channels,
    of which the parts fill the first ones (the start of a growing concatenation, see
    `concat_grow_func`)."""
    from tvm.script import from_source
    from tvm.script import tirx as T

    total = sum(parts)
    args = [f"x{i}: T.Buffer(({n}, {c}, {h}, {w}), 'float32')" for i, c in enumerate(parts)]
    if affine:
        args += [f"scale: T.Buffer(({total},), 'float32')",
                 f"shift: T.Buffer(({total},), 'float32')"]
    args.append(f"out: T.Buffer(({n}, {out_channels or total}, {h}, {w}), 'float32')")
    lines = ["@T.prim_func", f"def main({', '.join(args)}):",
             "    T.func_attr({'tirx.noalias': True, 'tirx.is_scheduled': True})",
             f"    for task in T.parallel({n * total}):"]
    lo = 0
    for i, c in enumerate(parts):
        ch = f"task % {total} - {lo}"
        value = f"x{i}[task // {total}, {ch}, y, x]"
        if affine:
            value = f"{value} * scale[task % {total}] + shift[task % {total}]"
        if relu:
            value = f"T.max({value}, T.float32(0))"
        lines += [f"        if {lo} <= task % {total} and task % {total} < {lo + c}:",
                  f"            for y in range({h}):",
                  f"                for x in T.vectorized({w}):",
                  f"                    out[task // {total}, task % {total}, y, x] = {value}"]
        lo += c
    return from_source("\n".join(lines) + "\n", extra_vars={"T": T})


def concat_grow_func(n: int, total: int, h: int, w: int, affine: bool, relu: bool,
                     out: bool = True):
    """One step of a growing concatenation (DenseNet: every layer's input is the previous
    layer's input plus its new channels), in place. `block` [n, total, h, w] holds the
    first c - g channels already; the new part `y` [n, g, h, w] is copied into channels
    c - g .. c of it, and `out` [n, c, h, w] is channels 0 .. c of it, through the
    per-channel affine map and ReLU when asked. c and g are symbolic (taken from the
    buffers' shapes when called), so one function serves every layer of a dense block:
    the code does not grow with the number of distinct concatenation widths. Called
    with `call_tir_inplace` (the block is argument 0 and the first output).

    Without `out` the step only copies the new part in (the next convolution applies the
    batch norm and ReLU itself: `conv_func`'s prologue), and its third argument, a
    vector of c elements (that convolution's batch-norm scale), only gives c."""
    from tvm.script import from_source
    from tvm.script import tirx as T

    if not out:
        return from_source("\n".join([
            "@T.prim_func",
            "def main(var_block: T.handle, var_y: T.handle, var_width: T.handle):",
            "    T.func_attr({'tirx.noalias': True, 'tirx.is_scheduled': True})",
            "    c = T.int64()", "    g = T.int64()",
            f"    block = T.match_buffer(var_block, ({n}, {total}, {h}, {w}), 'float32')",
            f"    y = T.match_buffer(var_y, ({n}, g, {h}, {w}), 'float32')",
            "    width = T.match_buffer(var_width, (c,), 'float32')",
            f"    for task in T.parallel({n} * g):",
            f"        for yy in range({h}):",
            f"            for xx in T.vectorized({w}):",
            "                block[task // g, c - g + task % g, yy, xx] = "
            "y[task // g, task % g, yy, xx]"]) + "\n", extra_vars={"T": T})
    args = ["var_block: T.handle", "var_y: T.handle"]
    if affine:
        args += ["var_scale: T.handle", "var_shift: T.handle"]
    args.append("var_out: T.handle")
    lines = ["@T.prim_func", f"def main({', '.join(args)}):",
             "    T.func_attr({'tirx.noalias': True, 'tirx.is_scheduled': True})",
             "    c = T.int64()", "    g = T.int64()",
             f"    block = T.match_buffer(var_block, ({n}, {total}, {h}, {w}), 'float32')",
             f"    y = T.match_buffer(var_y, ({n}, g, {h}, {w}), 'float32')",
             f"    out = T.match_buffer(var_out, ({n}, c, {h}, {w}), 'float32')"]
    if affine:
        lines += ["    scale = T.match_buffer(var_scale, (c,), 'float32')",
                  "    shift = T.match_buffer(var_shift, (c,), 'float32')"]
    b, ch = "task // c", "task % c"

    def value(v):
        if affine:
            v = f"{v} * scale[{ch}] + shift[{ch}]"
        return f"T.max({v}, T.float32(0))" if relu else v
    new = f"y[{b}, {ch} - (c - g), yy, xx]"
    lines += [f"    for task in T.parallel({n} * c):",
              f"        if {ch} >= c - g:",
              f"            for yy in range({h}):",
              f"                for xx in T.vectorized({w}):",
              f"                    block[{b}, {ch}, yy, xx] = {new}",
              f"            for yy in range({h}):",
              f"                for xx in T.vectorized({w}):",
              f"                    out[{b}, {ch}, yy, xx] = {value(new)}",
              "        else:",
              f"            for yy in range({h}):",
              f"                for xx in T.vectorized({w}):",
              f"                    out[{b}, {ch}, yy, xx] = {value(f'block[{b}, {ch}, yy, xx]')}"]
    return from_source("\n".join(lines) + "\n", extra_vars={"T": T})


def maxpool_func(n: int, c: int, h: int, w: int):
    """The 3x3, stride-2, padding-1 max pool of the ImageNet stems: a parallel task per
    channel plane; per output row the maximum of its three input rows is taken with vector
    loads into a row of the task's own, and each output is the maximum of three
    neighbours in that row. A window position in the padding reads its nearest pixel
    inside the image instead, which lies in the same window, so the maximum is the same
    and no padded copy is needed. TVM's generic pool first writes a padded copy of the
    input and then reads nine scalars per output: in the network ResNet-50's pool took
    3.6-4.6 ms at batch 8 that way, 1.12 ms this way (0.47 and 0.12 at batch 1)."""
    from tvm import s_tir, te, tirx

    oh, ow = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    x = te.placeholder((n, c, h, w), "float32", name="x")

    def rows(b, ch, y, xx):
        return tirx.max(tirx.max(x[b, ch, tirx.max(2 * y - 1, 0), xx], x[b, ch, 2 * y, xx]),
                        x[b, ch, tirx.min(2 * y + 1, h - 1), xx])
    rowmax = te.compute((n, c, oh, w), rows, name="rowmax")
    out = te.compute((n, c, oh, ow), lambda b, ch, y, xo: tirx.max(tirx.max(
        rowmax[b, ch, y, tirx.max(2 * xo - 1, 0)], rowmax[b, ch, y, 2 * xo]),
        rowmax[b, ch, y, tirx.min(2 * xo + 1, w - 1)]), name="out")
    sch = s_tir.Schedule(te.create_prim_func([x, out]))
    b_out = sch.get_sblock("out")
    bn, bc, by, _ = sch.get_loops(b_out)
    sch.parallel(sch.fuse(bn, bc))
    b_row = sch.get_sblock("rowmax")
    sch.compute_at(b_row, by, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(b_row)[-1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
