"""resdsl: a declarative language and compiler for residual-family CNNs.

>>> import resdsl
>>> arch = resdsl.load("specs/resnet50.arch")
>>> arch.num_params()
25557032
>>> model = arch.to_torch()          # an nn.Module with torchvision's state_dict keys
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resdsl.errors import ResdslError
from resdsl.limits import Limits

if TYPE_CHECKING:
    from resdsl.arch import Arch


def __getattr__(name: str):
    # `resdsl --help` and `import resdsl.errors` stay fast: the IR (networkx) loads on use
    if name == "Arch":
        from resdsl.arch import Arch
        return Arch
    raise AttributeError(f"module 'resdsl' has no attribute {name!r}")

__all__ = ["Arch", "Limits", "ResdslError", "check_library", "create_model", "list_models",
           "register_op",
           "load", "load_artifact", "loads", "model_params", "__version__"]
__version__ = "0.1.0"


def loads(text: str, path: str = "<string>", *, model: str | None = None,
          params: dict[str, Any] | None = None, root: str | Path | None = None,
          lib: list[str | Path] | None = None, limits: Limits | None = None,
          base_dir: str | Path | None = None) -> "Arch":
    """Parse, elaborate and validate spec text.

    `use` reaches only files below `root` (default: the directory of `path`; none for
    text without a path), the `lib` directories, those of `RESDSL_PATH` and the bundled
    library. `limits` bounds the work (see `resdsl.limits.Limits`). `base_dir` is the
    older name of `root`.
    """
    from resdsl.elaborate import elaborate
    from resdsl.loader import Loader, choose_model, search_roots
    from resdsl.passes import validate

    limits = limits or Limits()
    if root is None:
        root = base_dir
    if root is None and path != "<string>":
        root = Path(path).parent
    loader = Loader(search_roots(root, lib), limits)
    real = (Path(root) / Path(path).name).resolve() if root is not None and \
        path != "<string>" else None
    with _guard():
        env, module = loader.load_text(text, path, real)
        ref = choose_model(env, module, model)
        graph = validate(elaborate(ref, params, limits))
    from resdsl.arch import Arch
    return Arch(graph, text, None if path == "<string>" else path)


@contextlib.contextmanager
def _guard():
    """The last line of defence: what the limits should have stopped still ends in a
    ResdslError, never a traceback. Recursion gets room for the nesting limits' worth."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 6000))
    try:
        yield
    except RecursionError:
        raise ResdslError("the spec nests too deeply for resdsl",
                          hint="split deep expressions and block nestings into named "
                               "parts") from None
    except MemoryError:
        raise ResdslError("the spec needs more memory than this machine has",
                          hint="check its repeat counts and sizes") from None
    finally:
        sys.setrecursionlimit(old)


def load(path: str | Path, *, model: str | None = None,
         params: dict[str, Any] | None = None, root: str | Path | None = None,
         lib: list[str | Path] | None = None, limits: Limits | None = None) -> "Arch":
    """Load an .arch file; raises ResdslError (with file:line:col) if it is not valid.
    `use` in it reaches only below `root` (default: the file's directory), `lib`,
    `RESDSL_PATH` and the bundled library."""
    from resdsl import zoo
    from resdsl.loader import read_spec

    limits = limits or Limits()
    if not os.path.lexists(path) and zoo.is_name(str(path)):
        found = zoo.find(str(path), lib)
        if found is None:
            import difflib
            close = difflib.get_close_matches(str(path), zoo.list_models(lib=lib), n=3)
            raise ResdslError(f"{path}: no such file, and no model of that name",
                              hint=(f"did you mean {', '.join(close)}? " if close else "")
                              + "`resdsl models` lists the models by name")
        model = model or str(path)
        path = found
    text = read_spec(path, limits)
    return loads(text, str(path), model=model, params=params,
                 root=root if root is not None else Path(path).parent, lib=lib,
                 limits=limits)


def model_params(path: str | Path, *, model: str | None = None,
                 lib: list[str | Path] | None = None) -> list[tuple[str, str | None]]:
    """A model's parameters (what -D / params= set) with their defaults as written in the
    spec (None: required), e.g. [("num_classes", "1000"), ("in_chans", "3"), ...]."""
    from resdsl import zoo
    from resdsl.loader import Loader, choose_model, read_spec, search_roots

    limits = Limits()
    if not os.path.lexists(path) and zoo.is_name(str(path)) and zoo.find(str(path), lib):
        model = model or str(path)
        path = zoo.find(str(path), lib)
    text = read_spec(path, limits)
    loader = Loader(search_roots(Path(path).parent, lib), limits)
    with _guard():
        env, module = loader.load_text(text, str(path), Path(path).resolve())
    ref = choose_model(env, module, model)
    out = []
    for p in ref.defn.params:
        if p.default is None:
            out.append((p.name, None))
        else:
            sp = p.default.span
            lines = sp.source.text.splitlines()[sp.line - 1:sp.end_line]
            if len(lines) == 1:
                out.append((p.name, lines[0][sp.column - 1:sp.end_column - 1]))
            else:
                out.append((p.name, " ".join(x.strip() for x in lines)))
    return out


def check_library(path: str | Path, *, lib: list[str | Path] | None = None,
                  limits: Limits | None = None) -> list[tuple[str, str, str]]:
    """Check every model a file defines that can be built with its defaults, for a
    library file (no single model to check). Returns (name, kind, outcome) per definition:
    outcome "ok: ...", "needs PARAMS" (not checkable alone), or the rendered error;
    blocks are listed as "block (used by the models)". Raises ResdslError if the file
    itself does not parse."""
    from resdsl.elaborate import elaborate, is_model
    from resdsl.loader import Loader, read_spec, search_roots
    from resdsl.passes import validate
    limits = limits or Limits()
    text = read_spec(path, limits)
    loader = Loader(search_roots(Path(path).parent, lib), limits)
    with _guard():
        env, module = loader.load_text(text, str(path), Path(path).resolve())
    out = []
    for name in env.local:
        defn = env.defs[name]
        if not is_model(defn):
            out.append((name, "block", "block (checked where the models use it)"))
            continue
        required = [p.name for p in defn.params if p.default is None]
        if required:
            out.append((name, "model", "needs " + ", ".join(required)))
            continue
        try:
            with _guard():
                g = validate(elaborate(env.lookup(name), None, limits))
            from resdsl.arch import Arch
            arch = Arch(g, text, str(path))
            out.append((name, "model", f"ok: {len(g)} layers, {arch.num_params():,} "
                                       "parameters"))
        except ResdslError as err:
            out.append((name, "model", err.render()))
    return out


def list_models(pattern: str = "*", *, lib: list[str | Path] | None = None) -> list[str]:
    """Names of the zoo's models that match a shell-style pattern.

    >>> resdsl.list_models("resnext50*")
    ['resnext50', 'resnext50_32x4d', 'resnext50_32x4d_a', 'resnext50_32x4d_b', 'resnext50_32x4d_c']
    """
    from resdsl import zoo
    return zoo.list_models(pattern, lib)


def from_torch(module: Any, example_input: Any, name: str | None = None) -> str:
    """The spec text of an nn.Module (traced with torch.fx): a block per module class,
    stage/dense for runs of blocks, its state_dict keys as layer names. ResdslError
    names the module the language cannot say.

    >>> text = resdsl.from_torch(torchvision.models.resnet50(), torch.randn(1, 3, 224, 224))
    """
    from resdsl.importer import from_torch as _from_torch
    return _from_torch(module, example_input, name)


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None,
                 weights: Any = None, *, seed: int | None = None,
                 lib: list[str | Path] | None = None, **params: Any):
    """An nn.Module for a zoo model (or a spec path), with timm/torchvision's conventions.

    num_classes / in_chans: the classifier's outputs and the input channels (default: the
    model's own, 1000 and 3 for the ImageNet models); params: other model parameters
    (`size=64`); weights: a state_dict, a weights file (.pth/.pt/.safetensors, also a
    checkpoint dict under "state_dict"/"model"/"state_dict_ema"), or a torchvision weights
    name such as "IMAGENET1K_V1" (a torchvision model's, fetched through torchvision's
    cache). Weights with another class count load all but the classifier.

    >>> m = resdsl.create_model("resnet18", num_classes=10)
    >>> m.fc.out_features, m.num_features
    (10, 512)
    """
    from resdsl.hub import create_model as _create
    return _create(name, num_classes=num_classes, in_chans=in_chans, weights=weights,
                   seed=seed, lib=lib, **params)


def load_artifact(path: str | Path):
    """Load a TVM artifact directory written by `resdsl compile --target llvm|cuda`;
    raises ResdslError saying what does not match this machine (target, tvm version,
    files). Call the result on a numpy batch."""
    from resdsl.backends.tvm.artifact import load_artifact as _load
    return _load(path)


def register_op(name: str, attrs: dict[str, Any] | None = None, **kwargs: Any):
    """Add a new op to the registry from Python (see resdsl.extend.register_op and
    docs/language.md, "Extending: new ops")."""
    from resdsl.extend import register_op as _register
    return _register(name, attrs, **kwargs)
