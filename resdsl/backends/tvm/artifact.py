"""Build TVM artifacts and load them back.

An artifact is a directory:

    model.so          the compiled library (Relax VM executable)
    weights.safetensors   the kernels' weights (batch norm folded, packed for the kernels)
    metadata.json     spec hash, model, input shape, batch, target, tvm version, tuning db,
                      the parameter order, the sha256 of the two other files

It is written atomically and never over an existing path without `force` (built in a
temporary directory, then renamed into place with RENAME_NOREPLACE). `load_artifact`
treats the directory as untrusted input: the metadata is validated against a schema,
each file's sha256 is checked on the bytes that are then used (the library is loaded
from a private copy of the bytes that were hashed), the parameter order in metadata.json
must equal the one recorded inside the weights file (covered by its hash), and every
failure -- TVM's included -- is a ResdslError. Note that loading model.so runs native
code: the checks catch damaged and inconsistent artifacts, they do not make a malicious
one safe to load.

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
from resdsl.atomic import publish_dir, umask_mode
from resdsl.backends.tvm.compile import compile_module, default_weights
from resdsl.backends.tvm.target import host_cpu, local_cuda_arch, make_target
from resdsl.errors import ResdslError

FORMAT = 2     # 2: sha256 of the library checked, parameter order inside the weights file
LIBRARY, WEIGHTS, METADATA = "model.so", "weights.safetensors", "metadata.json"
PARAMS_KEY = "resdsl.params"       # in the weights file's __metadata__: the order, as JSON


@dataclass
class Built:
    executable: Any
    params: dict[str, np.ndarray]
    param_names: list[str]
    metadata: dict[str, Any]


def build(arch, target: str = "llvm", *, weights: dict | None = None, batch: int = 1,
          db: str | None = None, seed: int = 0, cuda_arch: str | None = None,
          weights_source: str | None = None, stage=None) -> Built:
    """Lower `arch` to Relax and compile it for `target` ("llvm" or "cuda")."""
    import tvm

    if target not in ("llvm", "cuda"):
        raise ResdslError(f"unknown target `{target}`", hint="use --target llvm or cuda")
    if weights is None:
        weights = default_weights(arch, seed)
        weights_source = weights_source or f"seeded initialisation (seed {seed})"
    tgt = make_target(target, cuda_arch)
    executable, lowered = compile_module(arch, weights, tgt, batch=batch, db=db, stage=stage)
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
        "cuda_arch": str(tgt.arch) if target == "cuda" else None,
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

    def is_artifact(p: Path) -> bool:
        return p.is_dir() and not p.is_symlink() and (p / METADATA).is_file()

    if os.path.lexists(out) and not force:
        raise _exists(out)
    if os.path.lexists(out) and not is_artifact(out):
        raise _not_artifact(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        built.executable.export_library(str(tmp / LIBRARY))
        save_file({k: np.ascontiguousarray(v) for k, v in built.params.items()},
                  str(tmp / WEIGHTS),
                  metadata={PARAMS_KEY: json.dumps(list(built.param_names))})
        meta = dict(built.metadata, weights_sha256=_sha256(tmp / WEIGHTS),
                    library_sha256=_sha256(tmp / LIBRARY))
        (tmp / METADATA).write_text(json.dumps(meta, indent=1) + "\n")
        os.chmod(tmp, umask_mode(0o777))
        os.chmod(tmp / WEIGHTS, umask_mode())
        try:
            publish_dir(tmp, out, force=force, replaceable=is_artifact)
        except FileExistsError:
            # another command published `out` after the check above
            raise (_exists(out) if not force else _not_artifact(out)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _exists(out: Path) -> ResdslError:
    return ResdslError(f"{out} exists; not overwriting it",
                       hint="pass --force to replace it, or choose another -o")


def _not_artifact(out: Path) -> ResdslError:
    return ResdslError(f"{out} exists and is not a resdsl artifact; not replacing it",
                       hint="choose another -o")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- metadata schema -------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_shape(v) -> bool:
    return (isinstance(v, list) and 1 <= len(v) <= 8
            and all(_is_int(d) and 1 <= d <= 1 << 31 for d in v))


def _is_sha(v) -> bool:
    return (isinstance(v, str) and len(v) == 64
            and all(c in "0123456789abcdef" for c in v))


def _opt_str(v) -> bool:
    return v is None or isinstance(v, str)


# field -> (check, what it must be)
SCHEMA: dict[str, tuple[Any, str]] = {
    "format": (_is_int, "an integer"),
    "resdsl_version": (lambda v: isinstance(v, str), "a string"),
    "model": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "spec": (_opt_str, "a string or null"),
    "spec_hash": (lambda v: isinstance(v, str), "a string"),
    "input_shape": (_is_shape, "a list of 1 to 8 positive integers"),
    "output_shape": (_is_shape, "a list of 1 to 8 positive integers"),
    "batch": (lambda v: _is_int(v) and 1 <= v <= 1 << 31, "a positive integer"),
    "target": (lambda v: v in ("llvm", "cuda"), '"llvm" or "cuda"'),
    "target_json": (lambda v: isinstance(v, str), "a string"),
    "cpu": (_opt_str, "a string or null"),
    "cuda_arch": (_opt_str, "a string or null"),
    "tvm_version": (lambda v: isinstance(v, str), "a string"),
    "tuning_db": (_opt_str, "a string or null"),
    "weights": (lambda v: isinstance(v, str), "a string"),
    "params": (lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v)
               and len(set(v)) == len(v), "a list of distinct strings"),
    "folded_batch_norms": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "weights_sha256": (_is_sha, "a sha256 (64 lowercase hex digits)"),
    "library_sha256": (_is_sha, "a sha256 (64 lowercase hex digits)"),
}


def _damaged(root: Path, what: str) -> ResdslError:
    return ResdslError(f"{root / METADATA}: {what}",
                       hint="the metadata was edited or damaged; recompile the artifact")


def validate_metadata(root: Path, meta: Any) -> dict:
    """Check metadata.json against SCHEMA; one ResdslError naming the first bad field."""
    if not isinstance(meta, dict):
        raise _damaged(root, f"not a JSON object but a {type(meta).__name__}")
    if "format" not in meta:
        raise _damaged(root, "field `format` is missing")
    if meta["format"] != FORMAT or not _is_int(meta["format"]):
        raise ResdslError(f"{root}: artifact format {meta['format']!r}, this resdsl reads "
                          f"format {FORMAT}", hint="recompile it with this resdsl")
    for name, (check, what) in SCHEMA.items():
        if name not in meta:
            raise _damaged(root, f"field `{name}` is missing")
        if not check(meta[name]):
            shown = json.dumps(meta[name])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise _damaged(root, f"field `{name}` must be {what}, not {shown}")
    for name in ("input_shape", "output_shape"):
        if meta[name][0] != meta["batch"]:
            raise _damaged(root, f"field `{name}` {meta[name]} does not start with the "
                                 f"batch {meta['batch']}")
    if meta["target"] == "llvm" and meta["cpu"] is None:
        raise _damaged(root, "field `cpu` must be a string for target llvm")
    return meta


def _read(root: Path, name: str) -> bytes:
    try:
        return (root / name).read_bytes()
    except FileNotFoundError:
        raise ResdslError(f"{root}: {name} is missing", hint="recompile the artifact") \
            from None
    except (IsADirectoryError, PermissionError, OSError) as err:
        raise ResdslError(f"{root}: cannot read {name} ({err.strerror or err})",
                          hint="recompile the artifact") from None


def _weights_order(root: Path, data: bytes) -> list[str] | None:
    """The parameter order recorded in the weights file's own header (None if absent)."""
    if len(data) < 8:
        return None
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        return None
    try:
        header = json.loads(data[8:8 + n])
        order = json.loads(header["__metadata__"][PARAMS_KEY])
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(order, list) or not all(isinstance(k, str) for k in order):
        return None
    return order


_LEVEL = {"x86-64": 1, "x86-64-v2": 2, "x86-64-v3": 3, "x86-64-v4": 4}


class Artifact:
    """A loaded artifact: call it on a batch (numpy, NCHW float32) to get the outputs."""

    def __init__(self, path: Path, metadata: dict, vm, device, params: list,
                 main=None) -> None:
        self.path = path
        self.metadata = metadata
        self._vm = vm
        self._device = device
        self._params = params
        self._main = main if main is not None else vm["main"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.metadata["input_shape"])

    def _input(self, x: np.ndarray):
        import tvm
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise ResdslError(f"input is {x.dtype}, the artifact takes float32",
                              hint="convert it first, e.g. x.astype(numpy.float32)")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise ResdslError("input holds NaN or Inf (or values beyond float32)",
                              hint="give finite inputs")
        if tuple(x.shape) != self.input_shape:
            raise ResdslError(f"input has shape {list(x.shape)}, the artifact was compiled "
                              f"for {list(self.input_shape)}",
                              hint="recompile with --batch N (and -D size=...) for another "
                                   "shape")
        return tvm.runtime.tensor(x, device=self._device)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        arg = self._input(x)
        try:
            return self._main(arg, *self._params).numpy()
        except Exception as err:  # noqa: BLE001 - TVM raises many kinds
            raise _tvm_error(self.path, "running it failed", err) from None

    def benchmark(self, x: np.ndarray, repeats: int = 10, warmup: int = 2) -> dict:
        """Latency of one call in milliseconds: median, min, max over `repeats`."""
        if not _is_int(repeats) or repeats < 1:
            raise ResdslError(f"repeats must be at least 1, got {repeats}")
        arg = self._input(x)
        times = []
        try:
            for _ in range(warmup):
                self._main(arg, *self._params)
            self._device.sync()
            for _ in range(repeats):
                t = time.perf_counter()
                self._main(arg, *self._params)
                self._device.sync()
                times.append((time.perf_counter() - t) * 1e3)
        except Exception as err:  # noqa: BLE001 - TVM raises many kinds
            raise _tvm_error(self.path, "running it failed", err) from None
        return {"median_ms": statistics.median(times), "min_ms": min(times),
                "max_ms": max(times), "repeats": repeats}


def load_artifact(path: str | os.PathLike) -> Artifact:
    """Load an artifact directory, checking that it is intact (schema, sha256 of each
    file, parameter order) and can run here; say what does not match if it cannot."""
    import tvm

    root = Path(path)
    if not root.is_dir():
        raise ResdslError(f"{root}: no such artifact directory",
                          hint="build one with `resdsl compile SPEC --target llvm -o DIR`")
    try:
        raw = (root / METADATA).read_bytes()
    except FileNotFoundError:
        raise ResdslError(f"{root}: {METADATA} is missing; this is not a resdsl artifact "
                          "(or an incomplete one)", hint="recompile it") from None
    except OSError as err:
        raise ResdslError(f"{root}: cannot read {METADATA} ({err.strerror or err})",
                          hint="recompile it") from None
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _damaged(root, "not UTF-8 text") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise ResdslError(f"{root / METADATA}: not valid JSON ({err})",
                          hint="the metadata was edited or damaged; recompile the "
                               "artifact") from None
    meta = validate_metadata(root, meta)
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
        here = local_cuda_arch()
        if here != meta.get("cuda_arch"):
            raise ResdslError(f"{root}: built for {meta.get('cuda_arch')}, this GPU is {here}",
                              hint=f"recompile it with --cuda-arch {here} (or on this machine)")
    else:
        here = host_cpu().mcpu
        if meta["cpu"] not in _LEVEL:
            raise _damaged(root, f"field `cpu` {meta['cpu']!r} is not one of "
                                 f"{', '.join(_LEVEL)}")
        if _LEVEL[meta["cpu"]] > _LEVEL.get(here, 0):
            raise ResdslError(f"{root}: built for CPU level {meta.get('cpu')}, this CPU is "
                              f"{here} and lacks its vector instructions",
                              hint="recompile it on (or for) this machine")
        device = tvm.cpu(0)
    # every file is hashed from the bytes that are then used: no window in which the
    # file on disk could be swapped between the check and the use
    wdata = _read(root, WEIGHTS)
    if hashlib.sha256(wdata).hexdigest() != meta["weights_sha256"]:
        raise ResdslError(f"{root}: {WEIGHTS} does not match the one it was built with "
                          "(sha256 differs)",
                          hint="the weights file was changed or damaged; recompile the "
                               "artifact")
    order = _weights_order(root, wdata)
    if order is None:
        raise ResdslError(f"{root}: {WEIGHTS} does not record its parameter order",
                          hint="recompile the artifact with this resdsl")
    if order != meta["params"]:
        diff = [f"{a} != {b}" for a, b in zip(meta["params"], order) if a != b]
        if len(order) != len(meta["params"]):
            diff.insert(0, f"{len(meta['params'])} params listed, the weights file has "
                           f"{len(order)}")
        raise _damaged(root, "field `params` does not match the parameter order recorded "
                             f"in {WEIGHTS}: " + "; ".join(diff[:3])
                       + ("; ..." if len(diff) > 3 else ""))
    weights = _load_weights(root, wdata, order)
    library = _read(root, LIBRARY)
    if hashlib.sha256(library).hexdigest() != meta["library_sha256"]:
        raise ResdslError(f"{root}: {LIBRARY} does not match the one it was built with "
                          "(sha256 differs)",
                          hint="the library was changed, truncated or damaged; recompile "
                               "the artifact")
    vm = _load_library(root, library, device)
    try:
        params = [tvm.runtime.tensor(weights[n], device=device) for n in order]
        main = vm["main"]
    except Exception as err:  # noqa: BLE001 - TVM raises many kinds
        raise _tvm_error(root, "cannot prepare the model", err) from None
    return Artifact(root, meta, vm, device, params, main)


def _load_weights(root: Path, data: bytes, order: list[str]) -> dict[str, np.ndarray]:
    from safetensors.numpy import load
    try:
        weights = load(data)
    except Exception as err:  # noqa: BLE001 - SafetensorError, ValueError, ...
        raise ResdslError(f"{root}: {WEIGHTS} is not a readable safetensors file ({err})",
                          hint="recompile the artifact") from None
    missing = [n for n in order if n not in weights]
    if missing or set(weights) != set(order):
        extra = sorted(set(weights) - set(order))
        raise ResdslError(f"{root}: {WEIGHTS} does not hold exactly its listed parameters "
                          f"(lacks {', '.join(missing[:3]) or 'none'}"
                          f"{' ...' if len(missing) > 3 else ''}; extra "
                          f"{', '.join(extra[:3]) or 'none'}{' ...' if len(extra) > 3 else ''})",
                          hint="recompile it")
    bad = [n for n in order if weights[n].dtype != np.float32]
    if bad:
        raise ResdslError(f"{root}: {WEIGHTS} holds tensors that are not float32: "
                          f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}",
                          hint="recompile the artifact")
    bad = [n for n in order if not np.isfinite(weights[n]).all()]
    if bad:
        raise ResdslError(f"{root}: {WEIGHTS} holds NaN or Inf in "
                          f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}",
                          hint="recompile the artifact from finite weights")
    return weights


def _tvm_error(root: Path, doing: str, err: BaseException) -> ResdslError:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = lines[-1] if lines else ""
    return ResdslError(f"{root}: {doing}: {type(err).__name__}: {first[:300]}",
                       hint="recompile the artifact with this resdsl and tvm")


def _load_library(root: Path, library: bytes, device):
    """Load the library from a private copy of the bytes whose sha256 was checked."""
    import tvm
    from tvm import relax
    private = tempfile.mkdtemp(prefix="resdsl-lib-")      # mode 0700, ours alone
    try:
        copy = os.path.join(private, LIBRARY)
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        with os.fdopen(fd, "wb") as f:
            f.write(library)
        try:
            lib = tvm.runtime.load_module(copy)
            return relax.VirtualMachine(lib, device)
        except Exception as err:  # noqa: BLE001 - TVM raises many kinds
            raise _tvm_error(root, f"cannot load {LIBRARY}", err) from None
    except OSError as err:
        raise ResdslError(f"{root}: cannot copy {LIBRARY} to a private file "
                          f"({err.strerror or err})",
                          hint="set TMPDIR to a writable directory that allows executables")\
            from None
    finally:
        shutil.rmtree(private, ignore_errors=True)   # dlopen keeps its own mapping


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
