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


def load_weights(path: str | Path) -> dict:
    """Read a .safetensors file, or a torch state_dict (`torch.save(model.state_dict())`,
    also a checkpoint dict holding one under "state_dict"/"model"). A DDP "module."
    prefix on every key is removed."""
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
        for key in ("state_dict", "model"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ResdslError(f"{path}: does not hold a state_dict (a dict of tensors)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


@dataclass
class WeightsReport:
    model: str
    missing: list[tuple[str, tuple]] = field(default_factory=list)
    unexpected: list[tuple[str, tuple]] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def render(self, what: str) -> str:
        if self.ok:
            return f"{what} matches {self.model}"
        lines = [f"{what} does not match {self.model}:"]
        lines += [f"  missing: {k} {fmt(s)}" for k, s in self.missing]
        lines += [f"  unexpected: {k} {fmt(s)}" for k, s in self.unexpected]
        lines += [f"  wrong shape: {k} is {fmt(got)}, the spec needs {fmt(want)}"
                  for k, want, got in self.mismatched]
        return "\n".join(lines)


def check_weights(arch, state_dict: dict) -> WeightsReport:
    """Compare a state_dict with the spec's parameters and buffers, by name and shape."""
    expected = {**arch.parameters(), **arch.buffers()}
    report = WeightsReport(arch.name)
    for key, shape in expected.items():
        if key not in state_dict:
            report.missing.append((key, shape))
        elif tuple(state_dict[key].shape) != tuple(shape):
            report.mismatched.append((key, tuple(shape), tuple(state_dict[key].shape)))
    for key, tensor in state_dict.items():
        if key not in expected and not key.endswith(_OPTIONAL_SUFFIXES):
            report.unexpected.append((key, tuple(tensor.shape)))
    return report


def save_safetensors(state_dict: dict, path: str | Path) -> None:
    """Write a state_dict as safetensors, atomically."""
    from safetensors.torch import save

    from resdsl.atomic import write_bytes
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    write_bytes(path, save(tensors))
