"""resdsl: a declarative language and compiler for residual-family CNNs.

>>> import resdsl
>>> arch = resdsl.load("specs/resnet50.arch")
>>> arch.num_params()
25557032
>>> model = arch.to_torch()          # an nn.Module with torchvision's state_dict keys
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resdsl.arch import Arch
from resdsl.errors import ResdslError

__all__ = ["Arch", "ResdslError", "load", "load_artifact", "loads", "__version__"]
__version__ = "0.1.0"


def loads(text: str, path: str = "<string>", *, model: str | None = None,
          params: dict[str, Any] | None = None, base_dir: str | Path | None = None) -> Arch:
    """Parse, elaborate and validate spec text; `use` paths resolve from `base_dir`
    (default: the directory of `path`, or the current directory)."""
    from resdsl.elaborate import elaborate
    from resdsl.loader import Loader, choose_model
    from resdsl.passes import validate

    if base_dir is None:
        base_dir = Path(path).parent if path != "<string>" else Path.cwd()
    base = Path(base_dir)
    loader = Loader(spec_root(base))
    real = (base / Path(path).name).resolve() if path != "<string>" else None
    env, module = loader.load_text(text, path, real)
    ref = choose_model(env, module, model)
    graph = validate(elaborate(ref, params))
    return Arch(graph, text, None if path == "<string>" else path)


def spec_root(directory: Path) -> Path:
    """The spec tree a spec's `use` paths must stay in: the nearest enclosing directory
    with a `lib/` folder (so specs/resnext_forms/x.arch may use specs/lib/), else the
    spec's own directory."""
    directory = directory.resolve()
    for d in (directory, *directory.parents):
        if (d / "lib").is_dir():
            return d
    return directory


def load(path: str | Path, *, model: str | None = None,
         params: dict[str, Any] | None = None) -> Arch:
    """Load an .arch file; raises ResdslError (with file:line:col) if it is not valid."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResdslError(f"{path}: no such file",
                          hint="give the path of an .arch spec, e.g. specs/resnet50.arch") \
            from None
    except (IsADirectoryError, UnicodeDecodeError) as err:
        raise ResdslError(f"{path}: cannot read it as a spec ({err.__class__.__name__})") \
            from None
    return loads(text, str(path), model=model, params=params, base_dir=p.parent)


def load_artifact(path: str | Path):
    """Load a TVM artifact directory written by `resdsl compile --target llvm|cuda`;
    raises ResdslError saying what does not match this machine (target, tvm version,
    files). Call the result on a numpy batch."""
    from resdsl.backends.tvm.artifact import load_artifact as _load
    return _load(path)
