"""The model zoo: reference specs found by name.

A model name is the stem of an `.arch` file in a zoo directory (`resnet50` is
`resnet50.arch`, `resnext50_32x4d_a` is `resnext_forms/resnext50_32x4d_a.arch`), searched in
the library search path: the `lib=` / `--lib` directories, those of `RESDSL_PATH`, then
resdsl's bundled specs. Block libraries (`lib/` folders) hold no zoo models.

>>> from resdsl.zoo import list_models, find
>>> "resnet50" in list_models("resnet*")
True
>>> find("resnet50").name
'resnet50.arch'
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from resdsl.loader import search_roots

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def zoo_dirs(lib=None) -> list[Path]:
    """Directories searched for models by name, in order: the library search path."""
    return search_roots(None, lib)


def _index(lib=None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in zoo_dirs(lib):
        for path in sorted(root.rglob("*.arch")):
            rel = path.relative_to(root)
            if "lib" in rel.parts[:-1] or len(rel.parts) > 3:
                continue
            found.setdefault(path.stem, path)
    return found


def is_name(text: str) -> bool:
    """Whether `text` could be a model name rather than a path."""
    return bool(NAME.fullmatch(text))


def find(name: str, lib=None) -> Path | None:
    """The spec file of the model `name`, or None."""
    if not is_name(name):
        return None
    return _index(lib).get(name)


def list_models(pattern: str = "*", lib=None) -> list[str]:
    """Names of the zoo's models matching a shell-style pattern (`"resnext*"`), sorted."""
    return sorted(n for n in _index(lib) if fnmatch.fnmatchcase(n, pattern))


@dataclass(frozen=True)
class Entry:
    """One zoo model for `resdsl models`: name, file, and what it is checked against."""

    name: str
    path: Path
    description: str
    oracle: str


def describe(name: str, lib=None) -> Entry:
    path = _index(lib)[name]
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("# ").strip())
    text = " ".join(header)
    m = re.search(r"torchvision\.models\.\w+", text) or \
        re.search(r"timm\.create_model\(\"\w+\"\)", text) or \
        re.search(r"[A-Z][a-z]+ et al\. \d{4}(?:, [A-Za-z]+ \d+)?", text)
    oracle = m.group(0) if m else ""
    if not oracle:
        alias = re.search(r"same model as (\w+)", text)
        oracle = f"= {alias.group(1)}" if alias else ""
    return Entry(name, path, header[0] if header else "", oracle)
