"""TVM targets from names, with the host CPU's real vector extensions.

LLVM's host-CPU guess is not enough: a virtual machine may report a CPU model (say
znver4) whose AVX-512 the hypervisor hides, and code built for it dies with an illegal
instruction. So the llvm target is chosen from the CPU flags the kernel reports.

The TVM runtime's thread pool has the same kind of blind spot: without TVM_NUM_THREADS it
runs on half the logical CPUs of an x86 machine (it assumes two hyper-threads per core),
so on a 2-core virtual machine without SMT every kernel ran on one core.
`configure_threads` sets TVM_NUM_THREADS to the physical cores this process may use,
before the pool starts; a value the user set is kept.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from resdsl.errors import ResdslError

# x86-64 micro-architecture levels (what LLVM's -mcpu=x86-64-vN enables) by required flags
_LEVELS = [
    ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}, 16),
    ("x86-64-v3", {"avx2", "fma", "bmi2", "movbe"}, 8),
    ("x86-64-v2", {"sse4_2", "popcnt", "ssse3"}, 4),
]


@dataclass(frozen=True)
class CpuInfo:
    mcpu: str
    vector_lanes: int  # float32 lanes per SIMD register
    cores: int


def host_cpu() -> CpuInfo:
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    cores = physical_cores()
    for mcpu, need, lanes in _LEVELS:
        if need <= flags:
            return CpuInfo(mcpu, lanes, cores or 1)
    return CpuInfo("x86-64", 4, cores or 1)


def physical_cores() -> int:
    """Cores (not hyper-threads) among the CPUs this process may run on."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if not cpus:
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topo = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topo}/physical_package_id") as f1, open(f"{topo}/core_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def configure_threads() -> int:
    """Make the TVM runtime use every physical core (unless TVM_NUM_THREADS is set);
    returns the thread count. Must run before the first parallel kernel in the process
    (the pool reads the variable once, when it starts)."""
    value = os.environ.get("TVM_NUM_THREADS")
    if value and value.strip().isdigit() and int(value) > 0:
        return int(value)
    n = physical_cores()
    os.environ["TVM_NUM_THREADS"] = str(n)
    return n


def local_cuda_arch() -> str | None:
    """The compute capability of this machine's first GPU as `sm_XY`, or None."""
    import tvm
    dev = tvm.cuda(0)
    if not dev.exist:
        return None
    return "sm_" + str(dev.compute_version).replace(".", "")


def cuda_arch(arch: str | None) -> str:
    """The GPU architecture to compile for: the one asked for (`sm_86`), else the local
    GPU's; without either it is an error, never a silent guess."""
    if arch is not None:
        if not re.fullmatch(r"sm_\d{2,3}[a-z]?", arch):
            raise ResdslError(f"--cuda-arch {arch!r} is not a CUDA architecture",
                              hint="write it as sm_XY, e.g. sm_80 (A100), sm_86, sm_90 (H100)")
        return arch
    local = local_cuda_arch()
    if local is None:
        raise ResdslError("no GPU here to compile for, and no --cuda-arch given",
                          hint="name the GPU's architecture: --cuda-arch sm_80 (A100), sm_86 "
                               "(RTX 30xx), sm_89 (L4, RTX 40xx), sm_90 (H100/H200)")
    return local


def make_target(kind: str, arch: str | None = None):
    """`llvm` (this machine's CPU) or `cuda` (for `arch`, else the local GPU's) as a tvm
    Target."""
    import tvm
    if kind == "llvm":
        cpu = host_cpu()
        return tvm.target.Target({"kind": "llvm", "mcpu": cpu.mcpu, "num-cores": cpu.cores})
    if kind == "cuda":
        return tvm.target.Target({"kind": "cuda", "arch": cuda_arch(arch)},
                                 host={"kind": "llvm", "mcpu": host_cpu().mcpu})
    raise ResdslError(f"unknown target `{kind}`", hint="use llvm (CPU) or cuda (NVIDIA GPU)")
