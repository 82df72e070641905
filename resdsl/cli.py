"""The `resdsl` command: thin argument parsing over the Python API.

    resdsl check specs/resnet50.arch specs/densenet121.arch
    resdsl inspect specs/resnext50.arch --depth 2
    resdsl compile specs/resnet50.arch --target torch -o resnet50.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from resdsl.errors import ResdslError


def _param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    if value in ("true", "false"):
        return key, value == "true"
    return key, value


def _load(path: str, args: argparse.Namespace):
    import resdsl
    return resdsl.load(path, model=getattr(args, "model", None),
                       params=dict(getattr(args, "param", None) or []) or None)


def _spec_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="NAME",
                   help="which model of the file (needed when it defines several)")
    p.add_argument("--param", "-D", metavar="NAME=VALUE", type=_param, action="append",
                   help="set a model parameter, e.g. -D classes=10 -D size=64")


def cmd_check(args: argparse.Namespace) -> int:
    status = 0
    for path in args.specs:
        try:
            arch = _load(path, args)
        except ResdslError as err:
            print(err.render(), file=sys.stderr)
            status = 1
            continue
        if not args.quiet:
            print(f"{path}: ok: {arch.name}, {len(arch.graph)} layers, "
                  f"{arch.num_params():,} parameters, {arch.macs():,} MACs")
    return status


def cmd_inspect(args: argparse.Namespace) -> int:
    arch = _load(args.spec, args)
    if args.weights:
        from resdsl.weights import check_weights, load_weights
        report = check_weights(arch, load_weights(args.weights))
        if not report.ok:
            print(report.render(args.weights), file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(arch.to_json(args.depth), indent=1))
    else:
        print(arch.summary(args.depth))
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    arch = _load(args.spec, args)
    weights = None
    if args.weights:
        from resdsl.weights import check_weights, load_weights
        weights = load_weights(args.weights)
        report = check_weights(arch, weights)
        if not report.ok:
            print(report.render(args.weights), file=sys.stderr)
            return 1
    if args.target == "torch":
        from resdsl.atomic import write_text
        source = arch.torch_source()
        if args.output in (None, "-"):
            sys.stdout.write(source)
            return 0
        out = args.output
        if os.path.isdir(out):
            out = os.path.join(out, f"{arch.name}.py")
        if os.path.exists(out) and not args.force:
            raise ResdslError(f"{out} exists; not overwriting it",
                              hint="pass --force to replace it, or choose another -o")
        write_text(out, source)
        if weights is not None:
            from resdsl.weights import save_safetensors
            wpath = os.path.splitext(out)[0] + ".safetensors"
            save_safetensors(weights, wpath)
            print(f"wrote {out} and {wpath}")
        else:
            print(f"wrote {out} (class {_class_name(arch.name)})")
        return 0
    from resdsl.backends.tvm_cli import compile_command  # noqa: PLC0415
    return compile_command(arch, args, weights)


def _class_name(name: str) -> str:
    from resdsl.backends.torch import class_name
    return class_name(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resdsl",
        description="A declarative language and compiler for residual-family CNNs "
                    "(ResNet, pre-activation ResNet, ResNeXt, DenseNet).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="parse and shape-check specs (exit 1 if any is invalid)",
                       description="Parse and shape-check each spec; errors go to stderr "
                                   "as file:line:col with the line, a caret and a hint.")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing for valid specs")
    _spec_options(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("inspect", help="per-layer table: name, op, output shape, params, MACs",
                       description="Print every layer with its output shape (per sample), "
                                   "parameter count and multiply-accumulates, and totals.")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--depth", type=int, metavar="N",
                   help="collapse layers into groups by the first N parts of their names")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--weights", metavar="FILE",
                   help="also check a state_dict (.pt/.pth) or .safetensors file against "
                        "the spec and report missing, unexpected and mis-shaped tensors")
    _spec_options(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("compile", help="lower a spec to PyTorch source or a TVM artifact",
                       description="--target torch writes standalone PyTorch source "
                                   "(imports only torch); --target llvm|cuda builds a TVM "
                                   "artifact directory.")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--target", required=True, choices=["torch", "llvm", "cuda"])
    p.add_argument("-o", "--output", metavar="PATH",
                   help="output file (torch; default: stdout) or directory (llvm, cuda)")
    p.add_argument("--weights", metavar="FILE",
                   help="a state_dict (.pt/.pth) or .safetensors file to check and ship")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    _spec_options(p)
    p.set_defaults(func=cmd_compile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ResdslError as err:
        print(err.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
