"""The llvm builds' work queue (resdsl/backends/tvm/parallel.py): every iteration of a
rewritten parallel loop runs exactly once, whatever its extent, with buffers the body
allocates per iteration; loops no longer than the machine's cores stay static."""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm", reason="apache-tvm is an optional extra: pip install -e .[tvm]")

from resdsl.backends.tvm.parallel import MAX_WORKERS, tir_pipeline, work_queues  # noqa: E402
from resdsl.backends.tvm.target import host_cpu, make_target  # noqa: E402


def _increment(n: int, scratch: bool):
    """out[i] += x[i] + 1 for i in parallel(n): an iteration run twice (or never) shows.
    With `scratch`, each iteration first copies x[i] into a buffer of its own."""
    from tvm.script import from_source
    from tvm.script import tirx as T
    if scratch:
        body = """tmp = T.alloc_buffer((4,), "float32")
        for j in range(4):
            tmp[j] = x[i] + T.float32(j)
        out[i] = out[i] + tmp[0] + T.float32(1)"""
    else:
        body = "out[i] = out[i] + x[i] + T.float32(1)"
    src = f"""
@T.prim_func
def main(x: T.Buffer(({n},), "float32"), out: T.Buffer(({n},), "float32")):
    T.func_attr({{"tirx.noalias": True, "tirx.is_scheduled": True}})
    for i in T.parallel({n}):
        {body}
"""
    return from_source(src, extra_vars={"T": T})


def _ir(lib) -> str:
    return lib.mod.inspect_source("ll")


@pytest.mark.parametrize("n", [1, 2, 3, 5, 37, MAX_WORKERS + 1, 10007])
@pytest.mark.parametrize("scratch", [False, True])
def test_every_iteration_runs_once(n, scratch):
    target = make_target("llvm")
    lib = tvm.compile(tvm.IRModule({"main": _increment(n, scratch)}), target=target,
                      tir_pipeline=tir_pipeline(target))
    x = np.arange(n, dtype=np.float32)
    out = np.full(n, 10.0, np.float32)
    args = [tvm.runtime.tensor(x), tvm.runtime.tensor(out)]
    for _ in range(3):
        lib["main"](*args)
    np.testing.assert_array_equal(args[1].numpy(), out + 3 * (x + 1))
    queued = "pthread_mutex_lock" in _ir(lib)
    assert queued == (n > host_cpu().cores), "queue only where the iterations outnumber cores"


def test_rewrite_keeps_other_loops():
    """The pass itself: the parallel loop becomes the workers' loop (extent capped at
    MAX_WORKERS) around a while loop over taken runs; with as many cores as iterations
    the function comes back unchanged."""
    func = _increment(1000, True)
    text = work_queues(func, cores=2).script()
    assert f"T.parallel({MAX_WORKERS})" in text and "while" in text
    assert "pthread_mutex_lock" in text and "T.parallel(1000)" not in text
    assert "for j in range(4)" in text
    assert work_queues(func, cores=1000).same_as(func)


@pytest.mark.parametrize("threads", [1, 5])
def test_any_thread_count(threads, tmp_path):
    """One thread takes every run itself; more threads than cores share them."""
    import os
    import subprocess
    import sys
    script = tmp_path / "run.py"
    script.write_text(
        "import numpy as np, tvm\n"
        "from tests.test_tvm_parallel import _increment\n"
        "from resdsl.backends.tvm.parallel import tir_pipeline\n"
        "from resdsl.backends.tvm.target import make_target\n"
        "t = make_target('llvm')\n"
        "lib = tvm.compile(tvm.IRModule({'main': _increment(10007, True)}), target=t,\n"
        "                  tir_pipeline=tir_pipeline(t))\n"
        "x = np.arange(10007, dtype=np.float32)\n"
        "args = [tvm.runtime.tensor(x), tvm.runtime.tensor(np.zeros_like(x))]\n"
        "lib['main'](*args)\n"
        "assert (args[1].numpy() == x + 1).all()\n"
        "print('ok')\n")
    env = dict(os.environ, TVM_NUM_THREADS=str(threads))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, str(script)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
