"""Parallel loops as a shared work queue (llvm builds): `tir_pipeline(target)`.

TVM's CPU code generator splits a parallel loop statically: with T threads, thread k runs
the k-th contiguous T-th of the iterations, and the kernel ends when the slowest thread
does. On a shared or virtual machine a thread is often descheduled for a while, and then
the other cores wait for it (ONNX Runtime's pool splits its work dynamically and lost
less to the same host). So every llvm build here runs one extra pass, at the start of
the host finalisation (after the loops are lowered, before allocations become
workspace calls): a parallel loop over more iterations than the machine has cores

    for i in parallel(N): body(i)

becomes a guided work queue, as OpenMP's `schedule(guided)` does it:

    next = 0
    for worker in parallel(min(N, MAX_WORKERS)):        # statically split, as before
        start, stop = take()                             # under a mutex
        while start < N:
            for i in range(start, stop): body(i)
            start, stop = take()

where `take` hands out max(1, (N - next) // (RUNS_PER_CORE x cores)) iterations from
`next` on: large contiguous runs first (a thread streams through neighbouring iterations,
as with the static split; handing out single iterations lost that locality and ran
1.08-1.11x slower), small ones at the end, so a thread that fell behind leaves little for
the others to wait on. Measured in the network against the static split (ResNet-50,
paired calls in one process): 0.93 of the time at batch 1, 0.98 at batch 8 (with runs of
half the remaining iterations per core, 1.00); a 3x3 convolution timed alone on a quiet
machine lost up to 6% (neighbouring rows share their weights in a core's cache, and a
channel block's rows now go to both cores). TVM 0.27's CPU backend has no atomic
operations (`tirx.atomic_add`: "CPU backend does not support atomic add yet"), so the
queue's counter is guarded by a pthread mutex, from the C library the module is loaded
into (a spinlock measured the same, and its symbols would tie the artifact to glibc 2.34
or later). The numbers are unchanged: every iteration runs once, only on whichever
thread takes it.
"""

from __future__ import annotations

from resdsl.backends.tvm.target import host_cpu

PIPELINE = "resdsl_work_queue"
MAX_WORKERS = 256     # parallel iterations of the rewritten loop: threads past this idle
RUNS_PER_CORE = 2     # a run taken is at most the remaining iterations / (this x cores)
_WORDS = 32           # int32 words of the queue: a pthread_mutex_t (40 bytes on Linux,
_LOCK, _NEXT = 0, 16  # 64 on macOS) from word 0, the next iteration to hand out at 16


def tir_pipeline(target) -> str:
    """The TIR pipeline name for `tvm.compile(..., tir_pipeline=...)`: TVM's default,
    with the work-queue pass for an llvm target."""
    if target.kind.name != "llvm":
        return "default"
    _register()
    return PIPELINE


def _register() -> None:
    from tvm.tirx import compilation_pipeline as pipelines
    if PIPELINE in pipelines.PIPELINE_MAP:
        return
    import tvm
    import tvm.s_tir.pipeline  # noqa: F401  (registers the default "s_tir" pipeline)

    def factory():
        lower, host, device = pipelines.get_tir_pipeline("s_tir")
        cores = host_cpu().cores
        queue = tvm.tirx.transform.prim_func_pass(
            lambda func, mod, ctx: work_queues(func, cores), opt_level=0,
            name="resdsl.WorkQueues")
        return lower, (lambda: tvm.transform.Sequential([queue, host()])), device

    pipelines.register_tir_pipeline(PIPELINE, factory)


def work_queues(func, cores: int):
    """`func` with each parallel loop of a constant extent above `cores` rewritten as a
    guided work queue (module docstring). Loops that are not parallel, or whose
    iterations are no more than the cores, are left as they are."""
    from tvm import tirx

    def visit(stmt):
        if isinstance(stmt, tirx.SeqStmt):
            seq = [visit(s) for s in stmt.seq]
            return stmt if all(a.same_as(b) for a, b in zip(seq, stmt.seq)) \
                else tirx.SeqStmt(seq)
        if isinstance(stmt, tirx.AttrStmt):
            body = visit(stmt.body)
            return stmt if body.same_as(stmt.body) \
                else tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, body)
        if isinstance(stmt, tirx.IfThenElse):
            then = visit(stmt.then_case)
            other = None if stmt.else_case is None else visit(stmt.else_case)
            if then.same_as(stmt.then_case) and (other is None or other.same_as(stmt.else_case)):
                return stmt
            return tirx.IfThenElse(stmt.condition, then, other)
        if isinstance(stmt, tirx.For):
            if stmt.kind == tirx.ForKind.PARALLEL and isinstance(stmt.extent, tirx.IntImm) \
                    and cores < stmt.extent.value < 2 ** 31 and _starts_at_zero(stmt):
                return _queue(stmt, RUNS_PER_CORE * cores)
            body = visit(stmt.body)
            return stmt if body.same_as(stmt.body) else tirx.For(
                stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body,
                stmt.thread_binding, stmt.annotations, stmt.step)
        return stmt     # other statements: a parallel loop below them stays static

    body = visit(func.body)
    return func if body.same_as(func.body) else func.with_body(body)


def _starts_at_zero(loop) -> bool:
    from tvm import tirx
    return isinstance(loop.min, tirx.IntImm) and loop.min.value == 0 \
        and (loop.step is None or isinstance(loop.step, tirx.IntImm) and loop.step.value == 1)


def _queue(loop, divisor: int):
    """The statements that replace parallel `loop` (extent N) by a guided work queue."""
    from tvm import tirx

    i32 = "int32"
    n = tirx.const(loop.extent.value, i32)
    shared = tirx.decl_buffer((_WORDS,), i32, name="work_queue", data_alignment=64)
    taken = tirx.decl_buffer((2,), i32, name="taken", scope="local")
    lock = tirx.address_of(tirx.BufferLoad(shared, [_LOCK]))
    start, stop = tirx.BufferLoad(taken, [0]), tirx.BufferLoad(taken, [1])

    def take():
        size = tirx.max(tirx.const(1, i32), tirx.floordiv(n - start, tirx.const(divisor, i32)))
        return [tirx.Evaluate(tirx.call_extern(i32, "pthread_mutex_lock", lock)),
                tirx.BufferStore(taken, tirx.BufferLoad(shared, [_NEXT]), [0]),
                tirx.BufferStore(taken, tirx.min(start + size, n), [1]),
                tirx.BufferStore(shared, stop, [_NEXT]),
                tirx.Evaluate(tirx.call_extern(i32, "pthread_mutex_unlock", lock))]

    var = loop.loop_var
    dtype = str(var.ty)
    # the original body under its own loop (start..stop), which also scopes the buffers
    # it allocates to one run of the while loop's body
    run = tirx.For(var, tirx.Cast(dtype, start), tirx.Cast(dtype, stop - start),
                   tirx.ForKind.SERIAL, loop.body)
    worker_var = tirx.Var("worker", dtype)
    worker = tirx.SeqStmt([tirx.AllocBuffer(taken)] + take()
                          + [tirx.While(start < n, tirx.SeqStmt([run] + take()))])
    null = tirx.reinterpret("handle", tirx.const(0, "uint64"))
    workers = tirx.For(worker_var, tirx.const(0, dtype),
                       tirx.const(min(loop.extent.value, MAX_WORKERS), dtype),
                       tirx.ForKind.PARALLEL, worker)
    return tirx.SeqStmt([
        tirx.AllocBuffer(shared),
        tirx.Evaluate(tirx.call_extern(i32, "pthread_mutex_init", lock, null)),
        tirx.BufferStore(shared, tirx.const(0, i32), [_NEXT]),
        workers,
        tirx.Evaluate(tirx.call_extern(i32, "pthread_mutex_destroy", lock)),
    ])
