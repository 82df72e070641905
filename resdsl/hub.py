"""`create_model`: zoo models as nn.Modules with timm/torchvision's calling convention.

    model = resdsl.create_model("resnext50_32x4d", num_classes=10)
    model = resdsl.create_model("resnet50", weights="IMAGENET1K_V2")      # torchvision's
    model = resdsl.create_model("resnet50", weights="resnet50.safetensors")
    model = resdsl.create_model("resnet50", weights=timm_model.state_dict())

Weights are a state_dict, a file (resdsl.weights.load_weights), or the name of a
torchvision weights enum member of the model of the same name (fetched through
torchvision's own cache and download path). Weights made for another class count load
into everything but the classifier, with a warning that says so: the fine-tuning case.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from resdsl.errors import ResdslError


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None,
                 weights: Any = None, seed: int | None = None, lib=None, **params: Any):
    import resdsl
    given = dict(params)
    if num_classes is not None:
        given["num_classes"] = num_classes
    if in_chans is not None:
        given["in_chans"] = in_chans
    arch = resdsl.load(name, params=given or None, lib=lib)
    model = arch.to_torch(seed=seed)
    if weights is not None:
        state_dict, meta = resolve_weights(weights, name)
        load_into(model, arch, state_dict, str(meta.get("source", "the weights")))
        model.pretrained_cfg = meta
    return model


def resolve_weights(weights: Any, model: str) -> tuple[dict, dict]:
    """(state_dict, metadata) for a `weights=` argument."""
    from resdsl.weights import load_weights, state_dict_of
    if isinstance(weights, dict):
        return state_dict_of(weights, "the given weights"), {"source": "the given state_dict"}
    if isinstance(weights, str | os.PathLike) and Path(weights).is_file():
        return load_weights(weights), {"source": str(weights)}
    if isinstance(weights, str):
        return torchvision_weights(model, weights)
    raise ResdslError(f"weights={weights!r:.60}: not a state_dict, a file or a weights name",
                      hint="pass model.state_dict(), a .pth/.safetensors path, or a torchvision "
                           "weights name such as \"IMAGENET1K_V1\"")


def torchvision_weights(model: str, name: str) -> tuple[dict, dict]:
    """torchvision's weights `name` ("IMAGENET1K_V2", "DEFAULT", or
    "ResNet50_Weights.IMAGENET1K_V2") for its model `model`, through torchvision's cache."""
    try:
        from torchvision.models import get_model_weights
    except ImportError:
        raise ResdslError("torchvision weights need torchvision",
                          hint="pip install torchvision") from None
    try:
        enum = get_model_weights(model)
    except (ValueError, KeyError):
        raise ResdslError(f"weights={name!r}: `{model}` is not a torchvision model, so it has "
                          "no torchvision weights",
                          hint="give a weights file or a state_dict instead") from None
    member = name.rpartition(".")[2]
    try:
        w = enum[member] if member != "DEFAULT" else enum.DEFAULT
    except KeyError:
        names = ", ".join(m.name for m in enum)
        raise ResdslError(f"weights={name!r}: torchvision's {model} has no such weights",
                          hint=f"its weights: {names}, DEFAULT") from None
    try:
        state_dict = w.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # noqa: BLE001 - network and hash errors come in many kinds
        raise ResdslError(f"cannot fetch torchvision's {w} ({err.__class__.__name__}: "
                          f"{str(err)[:120]})",
                          hint=f"it downloads from {w.url} into torchvision's cache "
                               "($TORCH_HOME); without a network, download it elsewhere and "
                               "pass the file as weights=") from None
    return state_dict, weights_meta(w)


def weights_meta(w) -> dict:
    """Preprocessing and provenance of a torchvision weights enum member."""
    meta: dict[str, Any] = {"source": f"torchvision {w}", "url": w.url}
    try:
        t = w.transforms()
        meta.update(mean=list(t.mean), std=list(t.std), crop_size=list(t.crop_size),
                    resize_size=list(t.resize_size), interpolation=str(t.interpolation.value))
    except (AttributeError, TypeError):
        pass
    cats = w.meta.get("categories")
    if cats:
        meta["num_classes"] = len(cats)
    return meta


def load_into(model, arch, state_dict: dict, what: str) -> None:
    """Load `state_dict` strictly; if only the classifier's shape differs (another class
    count), load everything else and warn."""
    from resdsl.backends.torch import classifier_head
    from resdsl.weights import check_weights
    report = check_weights(arch, state_dict)
    if report.ok:
        model.load_state_dict(report.weights, strict=False)
        return
    head = classifier_head(arch.graph)
    clf = head.classifier + "." if head else None
    only_classifier = (clf is not None and report.mismatched
                       and not (report.missing or report.unexpected or report.needs_cast
                                or report.bad_dtype or report.nonfinite)
                       and all(k.startswith(clf) for k, _, _ in report.mismatched))
    if not only_classifier:
        raise report.error(what)
    got = {k: g for k, _, g in report.mismatched}.get(clf + "weight")
    model.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith(clf)},
                          strict=False)
    warnings.warn(f"{what}: loaded everything but the classifier `{head.classifier}` "
                  f"(the weights have {got[0] if got else '?'} classes, the model "
                  f"{head.num_classes}); it keeps its initialisation", stacklevel=4)
