"""Weights files: load a torch state_dict or safetensors file and check it against a spec.

>>> import resdsl, torch
>>> arch = resdsl.load("specs/resnet18.arch")
>>> sd = arch.to_torch(seed=0).state_dict()
>>> del sd["fc.bias"]
>>> print(check_weights(arch, sd).render("w.pt"))
w.pt does not match resnet18:
  missing: fc.bias [1000]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from resdsl.errors import ResdslError
from resdsl.ir.ops import fmt

# tensors torch keeps that a spec does not describe, accepted but not required
_OPTIONAL_SUFFIXES = (".num_batches_tracked",)
# floating dtypes converted to float32 only when asked (cast=True, --cast-weights)
CASTABLE = ("float16", "bfloat16", "float64")
CAST_HINT = ("pass --cast-weights (Python: load_weights(path, cast=True) or "
             "check_weights(arch, sd, cast=True).weights) to convert them to float32")
_SHOWN = 4   # offending tensors named per line, then "..."


def _names(items) -> str:
    items = list(items)
    return ", ".join(items[:_SHOWN]) + (", ..." if len(items) > _SHOWN else "") \
        + (f" ({len(items)} in all)" if len(items) > _SHOWN else "")


def dtype_name(t) -> str:
    """"float32", "float16", "bfloat16", "int8", "bool", ... for a torch tensor or a
    numpy array; "not a tensor (TYPE)" for anything else."""
    dt = getattr(t, "dtype", None)
    if dt is None or not hasattr(t, "shape"):
        return f"not a tensor ({type(t).__name__})"
    name = str(dt)
    return name[len("torch."):] if name.startswith("torch.") else name


def cast_weights(state_dict: dict) -> dict:
    """A copy of `state_dict` with float16/bfloat16/float64 tensors converted to float32
    (other tensors unchanged; check_weights judges them)."""
    out = {}
    for k, v in state_dict.items():
        if dtype_name(v) in CASTABLE:
            v = v.to(_torch().float32) if hasattr(v, "detach") else v.astype("float32")
        out[k] = v
    return out


def _torch():
    import torch
    return torch


def load_weights(path: str | Path, cast: bool = False) -> dict:
    """Read a .safetensors file, or a torch state_dict (`torch.save(model.state_dict())`,
    also a checkpoint dict holding one under "state_dict"/"model"/"state_dict_ema"). A DDP "module."
    prefix on every key is removed. With `cast`, float16/bfloat16/float64 tensors are
    converted to float32 (without it check_weights refuses them)."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise ResdslError(f"{path}: no such weights file",
                          hint="give a .safetensors file or a torch state_dict (.pt/.pth)")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            sd = load_file(str(p))
        except (SafetensorError, OSError) as err:
            raise ResdslError(f"{path}: not a readable safetensors file ({err})") from None
    else:
        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many kinds here
            raise ResdslError(f"{path}: not a readable torch state_dict ({err.__class__.__name__})",
                              hint="save weights with torch.save(model.state_dict(), path) "
                                   "or safetensors.torch.save_file") from None
    sd = state_dict_of(sd, str(path))
    return cast_weights(sd) if cast else sd


CHECKPOINT_KEYS = ("state_dict", "model", "state_dict_ema")


def state_dict_of(obj, what: str = "the weights") -> dict:
    """The state_dict inside `obj`: a dict of tensors, or a training checkpoint holding one
    under "state_dict", "model" or "state_dict_ema" (the first found). A DDP "module."
    prefix on every key is removed."""
    import torch
    for key in CHECKPOINT_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ResdslError(f"{what}: does not hold a state_dict (a dict of tensors)",
                          hint="pass model.state_dict(), or a checkpoint with one under "
                               + "/".join(f'"{k}"' for k in CHECKPOINT_KEYS))
    if not all(isinstance(k, str) for k in obj):
        raise ResdslError(f"{what}: a state_dict's keys must be tensor names (strings)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


@dataclass
class WeightsReport:
    model: str
    missing: list[tuple[str, tuple]] = field(default_factory=list)
    unexpected: list[tuple[str, tuple]] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    # (name, dtype) of float16/bfloat16/float64 tensors, when cast was not requested
    needs_cast: list[tuple[str, str]] = field(default_factory=list)
    # (name, dtype) of integer, bool, complex, ... tensors and non-tensors
    bad_dtype: list[tuple[str, str]] = field(default_factory=list)
    # (name, "NaN"/"Inf"/"NaN and Inf") of tensors holding non-finite values
    nonfinite: list[tuple[str, str]] = field(default_factory=list)
    # the state_dict to use: the one given, or with cast=True its float32 conversion
    weights: dict | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.needs_cast
                    or self.bad_dtype or self.nonfinite)

    @property
    def hint(self) -> str:
        if self.needs_cast and not (self.missing or self.unexpected or self.mismatched
                                    or self.bad_dtype or self.nonfinite):
            return CAST_HINT
        if self.nonfinite and not (self.missing or self.unexpected or self.mismatched
                                   or self.bad_dtype or self.needs_cast):
            return "the weights hold NaN or Inf (a diverged training run?); fix the file"
        return ("the file's tensors must be the spec's parameters and buffers, float32 and "
                "finite (see `resdsl inspect SPEC --json`)")

    def render(self, what: str) -> str:
        if self.ok:
            return f"{what} matches {self.model}"
        lines = [f"{what} does not match {self.model}:"]
        lines += [f"  missing: {k} {fmt(s)}" for k, s in self.missing]
        lines += [f"  unexpected: {k} {fmt(s)}" for k, s in self.unexpected]
        lines += [f"  wrong shape: {k} is {fmt(got)}, the spec needs {fmt(want)}"
                  for k, want, got in self.mismatched]
        if self.bad_dtype:
            lines.append("  wrong dtype (weights must be float32): " + _names(
                f"{k} {d}" for k, d in self.bad_dtype))
        if self.needs_cast:
            lines.append("  not float32: " + _names(f"{k} {d}" for k, d in self.needs_cast)
                         + "; convert them with --cast-weights (or cast=True)")
        if self.nonfinite:
            lines.append("  not finite: " + _names(f"{k} holds {v}" for k, v in self.nonfinite))
        return "\n".join(lines)

    def error(self, what: str) -> ResdslError:
        return ResdslError(self.render(what), hint=self.hint)


def _nonfinite(t) -> str | None:
    """"NaN", "Inf", "NaN and Inf" or None for a float32 tensor or array."""
    import numpy as np
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    a = np.asarray(t)
    if a.size == 0 or np.isfinite(a).all():
        return None
    nan, inf = bool(np.isnan(a).any()), bool(np.isinf(a).any())
    return " and ".join(w for w, f in (("NaN", nan), ("Inf", inf)) if f)


def _usable(t) -> bool:
    """A dense tensor with its values in memory (not sparse, quantized or on "meta")."""
    if hasattr(t, "detach"):
        return (getattr(t, "layout", None) == _torch().strided and t.device.type != "meta"
                and not t.is_quantized)
    import numpy as np
    return isinstance(t, np.ndarray)


def check_weights(arch, state_dict: dict, cast: bool = False) -> WeightsReport:
    """Compare a state_dict with the spec's parameters and buffers: by name, shape and
    dtype (float32; float16/bfloat16/float64 converted only with `cast`, integer and bool
    tensors refused), and refuse NaN/Inf values. `report.weights` is the state_dict to
    use (converted to float32 with `cast`)."""
    expected = {**arch.parameters(), **arch.buffers()}
    report = WeightsReport(arch.name)
    if not isinstance(state_dict, dict):
        report.bad_dtype.append(("(the weights)", f"not a dict ({type(state_dict).__name__})"))
        return report
    if cast:
        state_dict = cast_weights(state_dict)
    report.weights = state_dict
    for key, shape in expected.items():
        if key not in state_dict:
            report.missing.append((key, shape))
            continue
        t = state_dict[key]
        if not hasattr(t, "shape") or not hasattr(t, "dtype"):
            report.bad_dtype.append((key, dtype_name(t)))
            continue
        if tuple(t.shape) != tuple(shape):
            report.mismatched.append((key, tuple(shape), tuple(t.shape)))
        dt = dtype_name(t)
        if dt in CASTABLE:
            report.needs_cast.append((key, dt))
        elif dt != "float32" or not _usable(t):
            report.bad_dtype.append((key, dt if dt != "float32" else f"{dt} (not dense)"))
        elif tuple(t.shape) == tuple(shape):
            bad = _nonfinite(t)
            if bad:
                report.nonfinite.append((key, bad))
    for key, tensor in state_dict.items():
        if key in expected:
            continue
        if not isinstance(key, str):
            report.unexpected.append((repr(key), ()))
        elif not key.endswith(_OPTIONAL_SUFFIXES):
            report.unexpected.append((key, tuple(getattr(tensor, "shape", ()))))
    return report


def save_safetensors(state_dict: dict, path: str | Path, force: bool = False) -> None:
    """Write a state_dict as safetensors, atomically; an existing file is replaced only
    with `force` (else FileExistsError)."""
    from safetensors.torch import save

    from resdsl.atomic import write_bytes
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    write_bytes(path, save(tensors), force=force)
