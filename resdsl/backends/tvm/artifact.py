"""Build TVM artifacts and load them back.

An artifact is a directory:

    model.so          the compiled library (Relax VM executable)
    weights.safetensors   the kernels' weights (batch norm folded, packed for the kernels)
    metadata.json     spec hash, model, input shape, batch, target, tvm version, tuning db

It is written atomically (built in a temporary directory, then renamed into place), and
`load_artifact` checks the metadata against this machine before running anything.

>>> import resdsl
>>> from resdsl.backends.tvm.artifact import build, write_artifact, load_artifact
>>> built = build(resdsl.load("specs/resnet20.arch"), "llvm")
>>> write_artifact(built, "build/resnet20-llvm", force=True)      # doctest: +SKIP
>>> load_artifact("build/resnet20-llvm")(x)                        # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resdsl import __version__
from resdsl.errors import ResdslError

FORMAT = 1
LIBRARY, WEIGHTS, METADATA = "model.so", "weights.safetensors", "metadata.json"


@dataclass
class Built:
    executable: Any
    params: dict[str, np.ndarray]
    param_names: list[str]
    metadata: dict[str, Any]


def default_weights(arch, seed: int = 0) -> dict:
    """The seeded initialisation of the torch backend, so both backends compute the same
    function for the same seed."""
    return arch.to_torch(seed=seed).state_dict()


def build(arch, target: str = "llvm", *, weights: dict | None = None, batch: int = 1,
          db: str | None = None, seed: int = 0, cuda_arch: str | None = None,
          weights_source: str | None = None) -> Built:
    """Lower `arch` to Relax and compile it for `target` ("llvm" or "cuda")."""
    import tvm

    from resdsl.backends.tvm.compile import compile_module
    from resdsl.backends.tvm.target import host_cpu, make_target

    if target not in ("llvm", "cuda"):
        raise ResdslError(f"unknown target `{target}`", hint="use --target llvm or cuda")
    if weights is None:
        weights = default_weights(arch, seed)
        weights_source = weights_source or f"seeded initialisation (seed {seed})"
    tgt = make_target(target, cuda_arch)
    executable, lowered = compile_module(arch, weights, tgt, batch=batch, db=db)
    meta = {
        "format": FORMAT,
        "resdsl_version": __version__,
        "model": arch.name,
        "spec": arch.path,
        "spec_hash": arch.spec_hash(),
        "input_shape": list(lowered.input_shape),
        "output_shape": list(lowered.output_shape),
        "batch": batch,
        "target": target,
        "target_json": str(tgt.export() if hasattr(tgt, "export") else tgt),
        "cpu": host_cpu().mcpu if target == "llvm" else None,
        "cuda_arch": (cuda_arch or "sm_90") if target == "cuda" else None,
        "tvm_version": tvm.__version__,
        "tuning_db": str(Path(db).resolve()) if db else None,
        "weights": weights_source or "given state_dict",
        "params": lowered.param_names,
        "folded_batch_norms": len(lowered.folded),
    }
    return Built(executable, lowered.params, lowered.param_names, meta)


def write_artifact(built: Built, out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Write the artifact directory atomically; refuse to replace one unless `force`."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    if out.exists() and not force:
        raise ResdslError(f"{out} exists; not overwriting it",
                          hint="pass --force to replace it, or choose another -o")
    if out.exists() and not (out / METADATA).is_file():
        raise ResdslError(f"{out} exists and is not a resdsl artifact; not replacing it",
                          hint="choose another -o")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        built.executable.export_library(str(tmp / LIBRARY))
        save_file({k: np.ascontiguousarray(v) for k, v in built.params.items()},
                  str(tmp / WEIGHTS))
        meta = dict(built.metadata, weights_sha256=_sha256(tmp / WEIGHTS),
                    library_sha256=_sha256(tmp / LIBRARY))
        (tmp / METADATA).write_text(json.dumps(meta, indent=1) + "\n")
        from resdsl.atomic import umask_mode
        os.chmod(tmp, umask_mode(0o777))
        os.chmod(tmp / WEIGHTS, umask_mode())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "a")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_LEVEL = {"x86-64": 1, "x86-64-v2": 2, "x86-64-v3": 3, "x86-64-v4": 4}


class Artifact:
    """A loaded artifact: call it on a batch (numpy, NCHW float32) to get the outputs."""

    def __init__(self, path: Path, metadata: dict, vm, device, params: list) -> None:
        self.path = path
        self.metadata = metadata
        self._vm = vm
        self._device = device
        self._params = params
        self._main = vm["main"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.metadata["input_shape"])

    def _input(self, x: np.ndarray):
        import tvm
        x = np.ascontiguousarray(x, dtype=np.float32)
        if tuple(x.shape) != self.input_shape:
            raise ResdslError(f"input has shape {list(x.shape)}, the artifact was compiled "
                              f"for {list(self.input_shape)}",
                              hint="recompile with --batch N (and -D size=...) for another "
                                   "shape")
        return tvm.runtime.tensor(x, device=self._device)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._main(self._input(x), *self._params).numpy()

    def benchmark(self, x: np.ndarray, repeats: int = 10, warmup: int = 2) -> dict:
        """Latency of one call in milliseconds: median, min, max over `repeats`."""
        arg = self._input(x)
        for _ in range(warmup):
            self._main(arg, *self._params)
        self._device.sync()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            self._main(arg, *self._params)
            self._device.sync()
            times.append((time.perf_counter() - t) * 1e3)
        return {"median_ms": statistics.median(times), "min_ms": min(times),
                "max_ms": max(times), "repeats": repeats}


def load_artifact(path: str | os.PathLike) -> Artifact:
    """Load an artifact directory, checking that it can run here, and say what does not
    match if it cannot."""
    import tvm
    from safetensors.numpy import load_file
    from tvm import relax

    from resdsl.backends.tvm.target import host_cpu

    root = Path(path)
    if not root.is_dir():
        raise ResdslError(f"{root}: no such artifact directory",
                          hint="build one with `resdsl compile SPEC --target llvm -o DIR`")
    try:
        meta = json.loads((root / METADATA).read_text())
    except FileNotFoundError:
        raise ResdslError(f"{root}: {METADATA} is missing; this is not a resdsl artifact "
                          "(or an incomplete one)", hint="recompile it") from None
    except json.JSONDecodeError as err:
        raise ResdslError(f"{root / METADATA}: not valid JSON ({err})") from None
    if meta.get("format") != FORMAT:
        raise ResdslError(f"{root}: artifact format {meta.get('format')}, this resdsl reads "
                          f"format {FORMAT}", hint="recompile it with this resdsl")
    for name in (LIBRARY, WEIGHTS):
        if not (root / name).is_file():
            raise ResdslError(f"{root}: {name} is missing", hint="recompile the artifact")
    if meta["tvm_version"] != tvm.__version__:
        raise ResdslError(f"{root}: built with tvm {meta['tvm_version']}, this is tvm "
                          f"{tvm.__version__}", hint="recompile it with the installed tvm")
    if meta["target"] == "cuda":
        if not tvm.cuda(0).exist:
            raise ResdslError(f"{root}: built for cuda ({meta.get('cuda_arch')}), and no CUDA "
                              "GPU is visible here",
                              hint="run it on a machine with an NVIDIA GPU, or compile with "
                                   "--target llvm for this CPU")
        device = tvm.cuda(0)
    elif meta["target"] == "llvm":
        here = host_cpu().mcpu
        if _LEVEL.get(meta.get("cpu"), 0) > _LEVEL.get(here, 0):
            raise ResdslError(f"{root}: built for CPU level {meta.get('cpu')}, this CPU is "
                              f"{here} and lacks its vector instructions",
                              hint="recompile it on (or for) this machine")
        device = tvm.cpu(0)
    else:
        raise ResdslError(f"{root}: unknown target {meta['target']!r} in {METADATA}")
    if _sha256(root / WEIGHTS) != meta.get("weights_sha256"):
        raise ResdslError(f"{root}: {WEIGHTS} does not match the one it was built with",
                          hint="the weights file was changed; recompile the artifact")
    lib = tvm.runtime.load_module(str(root / LIBRARY))
    vm = relax.VirtualMachine(lib, device)
    weights = load_file(str(root / WEIGHTS))
    missing = [n for n in meta["params"] if n not in weights]
    if missing:
        raise ResdslError(f"{root}: {WEIGHTS} lacks {', '.join(missing[:3])}"
                          + (" ..." if len(missing) > 3 else ""), hint="recompile it")
    params = [tvm.runtime.tensor(weights[n], device=device) for n in meta["params"]]
    return Artifact(root, meta, vm, device, params)


def device_source(executable, kind: str = "cuda") -> str:
    """The generated device code (e.g. CUDA C) inside a built executable."""
    def walk(mod):
        if mod.kind == kind:
            return mod.inspect_source()
        for sub in mod.imports:
            found = walk(sub)
            if found is not None:
                return found
        return None
    source = walk(executable.mod)
    if source is None:
        raise ResdslError(f"this executable holds no {kind} module")
    return source
