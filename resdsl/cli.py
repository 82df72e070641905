"""The `resdsl` command: thin argument parsing over the Python API.

    resdsl check specs/resnet50.arch specs/densenet121.arch
    resdsl inspect specs/resnext50.arch --depth 2
    resdsl compile specs/resnet50.arch --target torch -o resnet50.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any, Sequence

from resdsl.errors import ResdslError


def _param(text: str) -> tuple[str, Any]:
    """-D NAME=VALUE, VALUE in the language's literals: 10, 0.5, true, "text", [3, 4, 6, 3],
    a block name (`unit=bottleneck`)."""
    from resdsl.syntax.parser import parse_value
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    key, value = (part.strip() for part in text.split("=", 1))
    if not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{key!r} is not a parameter name")
    try:
        return key, parse_value(value, f"-D {key}")
    except ResdslError as err:
        raise argparse.ArgumentTypeError(err.message) from None


def _load(path: str, args: argparse.Namespace):
    import resdsl
    from resdsl.limits import Limits
    given = {name: getattr(args, name) for name in Limits.names()
             if getattr(args, name, None) is not None}
    return resdsl.load(path, model=getattr(args, "model", None),
                       params=dict(getattr(args, "param", None) or []) or None,
                       root=getattr(args, "root", None), lib=getattr(args, "lib", None),
                       limits=Limits(**given))


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _spec_options(p: argparse.ArgumentParser) -> None:
    from resdsl.limits import DEFAULT, Limits
    p.add_argument("--model", metavar="NAME",
                   help="which model of the file (needed when it defines several)")
    p.add_argument("--param", "-D", metavar="NAME=VALUE", type=_param, action="append",
                   help="set a model parameter, e.g. -D num_classes=10 -D size=64")
    p.add_argument("--root", metavar="DIR",
                   help="the directory `use` may read below (default: the spec's own)")
    p.add_argument("--lib", metavar="DIR", action="append",
                   help="a further directory of block libraries for `use` (repeatable; "
                        "also RESDSL_PATH); the bundled library is always searched last")
    limits = p.add_argument_group(
        "limits", "bounds on what a spec may ask for; each is checked before the work it "
                  "bounds (docs/language.md, Limits)")
    for name in Limits.names():
        limits.add_argument("--" + name.replace("_", "-"), dest=name, type=_positive,
                            metavar="N", help=f"default {getattr(DEFAULT, name):,}")


def _weights_options(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--weights", metavar="FILE|NAME",
                   help=help + "; or a torchvision weights name such as IMAGENET1K_V2 for "
                               "a torchvision model (fetched through torchvision's cache)")
    p.add_argument("--cast-weights", action="store_true",
                   help="convert float16/bfloat16/float64 weights to float32 (without it "
                        "they are refused; integer/bool tensors and NaN/Inf values are "
                        "always refused)")


def _weights(arch, args: argparse.Namespace) -> dict | None:
    """The weights file of --weights, checked against the spec by name, shape, dtype
    (float32, or converted with --cast-weights) and finiteness."""
    path = args.weights
    args.weights_meta = None
    if not path:
        return None
    from resdsl.weights import check_weights, load_weights
    cast = bool(getattr(args, "cast_weights", False))
    if not os.path.lexists(path) and re.fullmatch(r"(\w+_Weights\.)?[A-Z][A-Z0-9_]*", path):
        from resdsl.hub import torchvision_weights
        weights, args.weights_meta = torchvision_weights(arch.name, path)
    else:
        weights = load_weights(path, cast=cast)
    report = check_weights(arch, weights, cast=cast)
    if not report.ok:
        raise report.error(path)
    return report.weights


def _exists(path: str) -> ResdslError:
    return ResdslError(f"{path} exists; not overwriting it",
                       hint="pass --force to replace it, or choose another -o")


def _library_check(path: str, args: argparse.Namespace, err: ResdslError) -> int | None:
    """For a file with no single model to check (a block library): check each model it
    can build with its defaults; None if `path` is not such a file."""
    import resdsl
    if args.model or args.param or not os.path.isfile(path):
        return None
    library = "defines no model" in err.message or "models (" in err.message
    if not library:
        try:
            library = any(d is None for _, d in resdsl.model_params(path, lib=args.lib))
        except ResdslError:
            return None
    if not library:
        return None
    status = 0
    for name, kind, outcome in resdsl.check_library(path, lib=args.lib):
        if kind == "model" and not outcome.startswith(("ok", "needs")):
            print(outcome, file=sys.stderr)
            status = 1
        else:
            print(f"{path}: {kind} {name}: {outcome}")
    return status


def cmd_check(args: argparse.Namespace) -> int:
    status = 0
    for path in args.specs:
        try:
            arch = _load(path, args)
        except ResdslError as err:
            as_library = _library_check(path, args, err)
            if as_library is not None:
                status = max(status, as_library)
                continue
            print(err.render(), file=sys.stderr)
            status = 1
            continue
        if not args.quiet:
            print(f"{path}: ok: {arch.name}, {arch.num_layers()} layers, "
                  f"{arch.num_params():,} parameters, {arch.macs():,} MACs")
    return status


def cmd_models(args: argparse.Namespace) -> int:
    import resdsl
    from resdsl import zoo
    names = resdsl.list_models(args.pattern, lib=args.lib)
    if not names:
        raise ResdslError(f"no model matches {args.pattern!r}",
                          hint="`resdsl models` lists them all")
    rows = []
    for name in names:
        entry = zoo.describe(name, args.lib)
        arch = resdsl.load(entry.path, model=name, lib=args.lib)
        rows.append({"name": name, "params": arch.num_params(), "macs": arch.macs(),
                     "input": list(arch.input_shape), "oracle": entry.oracle,
                     "file": str(entry.path), "description": entry.description})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    header = ("model", "params", "MACs", "input", "oracle", "file")
    cells = [(r["name"], f"{r['params']:,}", f"{r['macs']:,}",
              "x".join(map(str, r["input"])), r["oracle"], os.path.relpath(r["file"]))
             for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    for c in [header, *cells]:
        print("  ".join(x.rjust(w) if i in (1, 2) else x.ljust(w)
                        for i, (x, w) in enumerate(zip(c, widths))).rstrip())
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    if args.params:
        return _print_params(args)
    arch = _load(args.spec, args)
    _weights(arch, args)
    pre = getattr(args, "weights_meta", None)
    if args.graph_json or args.graphml:
        from resdsl.ir.graph import to_graphml, to_node_link
        sys.stdout.write(to_graphml(arch.graph) if args.graphml else
                         to_node_link(arch.graph) + "\n")
        return 0
    if args.json:
        data = arch.to_json(args.depth)
        if pre:
            data["weights"] = pre
        print(json.dumps(data, indent=1))
    else:
        print(arch.summary(args.depth))
        if pre:
            print(f"weights: {pre['source']}; preprocessing: resize {pre.get('resize_size')}, "
                  f"crop {pre.get('crop_size')}, mean {pre.get('mean')}, std {pre.get('std')}")
    return 0


def _print_params(args: argparse.Namespace) -> int:
    import resdsl
    for name, default in resdsl.model_params(args.spec, model=args.model, lib=args.lib):
        print(f"{name} = {default}" if default is not None else f"{name}  (required)")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    arch = _load(args.spec, args)
    weights = _weights(arch, args)
    if args.target == "onnx":
        return _compile_onnx(arch, weights, args)
    if args.target == "torch":
        from resdsl.atomic import write_text
        source = arch.torch_source()
        if args.output in (None, "-"):
            sys.stdout.write(source)
            return 0
        out = args.output
        if out.endswith(("/", os.sep)) or os.path.isdir(out):
            os.makedirs(out, exist_ok=True)
            out = os.path.join(out, f"{arch.name}.py")
        wpath = os.path.splitext(out)[0] + ".safetensors" if weights is not None else None
        for path in (out, wpath):
            if path and os.path.lexists(path) and not args.force:
                raise _exists(path)
        # published without replacing (unless --force): if another command wrote either
        # path meanwhile, it is kept and this one fails; the weights go first, and are
        # taken back if the source cannot be published
        if wpath:
            from resdsl.weights import save_safetensors
            try:
                save_safetensors(weights, wpath, force=args.force)
            except FileExistsError:
                raise _exists(wpath) from None
            ours = os.stat(wpath)
        try:
            write_text(out, source, force=args.force)
        except FileExistsError:
            if wpath:
                now = os.stat(wpath)
                if (now.st_ino, now.st_dev) == (ours.st_ino, ours.st_dev):
                    os.unlink(wpath)
            raise _exists(out) from None
        if wpath:
            print(f"wrote {out} (class {_class_name(arch.name)}) and its weights {wpath} "
                  f"(from {args.weights})")
        else:
            print(f"wrote {out} (class {_class_name(arch.name)}; no weights: the module "
                  "initialises itself)")
        return 0
    from resdsl.backends.tvm.artifact import build, write_artifact
    out = args.output or os.path.join("build", f"{arch.name}-{args.target}")
    if os.path.lexists(out) and not args.force:
        raise _exists(out)
    t = time.perf_counter()
    last = [t]

    def stage(text: str) -> None:
        now = time.perf_counter()
        print(f"  {text} ...  ({now - t:.1f} s)", file=sys.stderr, flush=True)
        last[0] = now
    built = build(arch, args.target, weights=weights, batch=args.batch, db=args.db,
                  seed=args.seed, cuda_arch=args.cuda_arch, weights_source=args.weights,
                  stage=stage)
    if getattr(args, "weights_meta", None):
        built.metadata["preprocessing"] = args.weights_meta
    stage(f"writing {out}/")
    path = write_artifact(built, out, force=args.force)
    meta = built.metadata
    where = f"{args.target}, {meta['cuda_arch']}" if args.target == "cuda" else \
        f"{args.target}, {meta['cpu']}"
    print(f"wrote {path}/ ({arch.name}, {where}, batch {args.batch}, weights: "
          f"{meta['weights']}, {time.perf_counter() - t:.1f} s)")
    return 0


def _compile_onnx(arch, weights: dict | None, args: argparse.Namespace) -> int:
    from resdsl.atomic import write_bytes
    from resdsl.backends.onnx import OPSET
    out = args.output or f"{arch.name}.onnx"
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        os.makedirs(out, exist_ok=True)
        out = os.path.join(out, f"{arch.name}.onnx")
    if os.path.lexists(out) and not args.force:
        raise _exists(out)
    model = arch.to_onnx(weights, seed=args.seed, fold_bn=args.fold_bn)
    try:
        write_bytes(out, model.SerializeToString(), force=args.force)
    except FileExistsError:
        raise _exists(out) from None
    source = args.weights or f"seeded initialisation (seed {args.seed})"
    print(f"wrote {out} ({arch.name}, ONNX opset {OPSET}, dynamic batch, batch norm "
          f"{'folded' if args.fold_bn else 'kept'}, weights: {source})")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from resdsl.atomic import write_bytes
    from resdsl.dot import format_of, render
    fmt = format_of(args.output, args.format)
    arch = _load(args.spec, args)
    data = render(arch.to_dot(depth=args.depth, rankdir=args.rankdir), fmt,
                  title=arch.name, timeout=args.timeout)
    if args.output in (None, "-"):
        if fmt == "png":
            raise ResdslError("PNG is not written to a terminal", hint="pass -o net.png")
        sys.stdout.buffer.write(data)
        return 0
    if os.path.lexists(args.output) and not args.force:
        raise _exists(args.output)
    try:
        write_bytes(args.output, data, force=args.force)
    except FileExistsError:
        raise _exists(args.output) from None
    print(f"wrote {args.output} ({arch.name}, {fmt}, "
          f"{'every layer' if args.depth is None else f'depth {args.depth}'})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from resdsl.backends.tvm.artifact import load_artifact
    if args.output and os.path.lexists(args.output) and not args.force:
        raise ResdslError(f"{args.output} exists; not overwriting it",
                          hint="pass --force to replace it, or choose another --output")
    art = load_artifact(args.artifact)
    if args.input:
        x = _read_input(args.input)
        if x.ndim == len(art.input_shape) - 1:
            x = x[None]
    else:
        x = np.random.default_rng(0).standard_normal(art.input_shape, dtype=np.float32)
    y = art(x)
    meta = art.metadata
    print(f"{meta['model']} ({meta['target']}, batch {meta['batch']}): input "
          f"{list(x.shape)} {'from ' + args.input if args.input else '(random, seed 0)'}")
    if str(meta.get("weights", "")).startswith("seeded"):
        print(f"  note: the artifact holds {meta['weights']}, not trained weights: its "
              "outputs are not predictions (compile with --weights FILE)")
    for i, row in enumerate(y.reshape(y.shape[0], -1)):
        top = np.argsort(-row)[:5]
        print(f"  sample {i}: top-5 " + ", ".join(f"{k}: {row[k]:.4f}" for k in top))
    if args.output:
        import io

        from resdsl.atomic import write_bytes
        buf = io.BytesIO()
        np.save(buf, y, allow_pickle=False)
        try:
            write_bytes(args.output, buf.getvalue(), force=args.force)
        except FileExistsError:
            raise ResdslError(f"{args.output} exists; not overwriting it",
                              hint="pass --force to replace it, or choose another "
                                   "--output") from None
        except OSError as err:
            raise ResdslError(f"{args.output}: cannot write it ({err.strerror})") from None
        print(f"  outputs {list(y.shape)} written to {args.output}")
    stats = art.benchmark(x, repeats=args.repeats)
    print(f"latency: median {stats['median_ms']:.2f} ms, min {stats['min_ms']:.2f} ms over "
          f"{stats['repeats']} runs")
    return 0


def _read_input(path: str):
    """A .npy input batch: float32, finite, no pickled objects."""
    import numpy as np
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ResdslError(f"{path}: cannot read it as a .npy array "
                          f"({str(err).splitlines()[0] if str(err) else type(err).__name__})",
                          hint="save the input with numpy.save(path, x) (an array, not "
                               "an object array or .npz)") from None
    if not isinstance(x, np.ndarray):
        raise ResdslError(f"{path}: holds several arrays (.npz), not one .npy array",
                          hint="save the input batch alone with numpy.save(path, x)")
    if x.dtype != np.float32:
        raise ResdslError(f"{path}: the input is {x.dtype}, the artifact takes float32",
                          hint="convert it first: numpy.save(path, x.astype(numpy.float32))")
    if not np.isfinite(x).all():
        raise ResdslError(f"{path}: the input holds NaN or Inf",
                          hint="give finite inputs")
    return x


def cmd_tune(args: argparse.Namespace) -> int:
    from resdsl.backends.tvm.tune import knob_tune, tune
    if args.knobs and args.target != "llvm":
        raise ResdslError("--knobs searches resdsl's CPU kernels: it needs --target llvm")
    arch = _load(args.spec, args)
    weights = _weights(arch, args)
    t = time.perf_counter()
    if args.knobs:
        report = knob_tune(arch, args.trials, args.db, batch=args.batch, weights=weights,
                           progress=not args.quiet)
    else:
        report = tune(arch, args.target, args.trials, args.db, batch=args.batch,
                      weights=weights, rpc=args.rpc, cuda_arch=args.cuda_arch,
                      progress=not args.quiet)
    print(f"tuned {report.tasks} tasks, {report.trials} trials, in "
          f"{time.perf_counter() - t:.0f} s; records in {report.db}/ "
          f"(use: resdsl compile {args.spec} --target {args.target} --db {report.db})")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    """Structural diff of two specs; with --weights, whether a checkpoint loads into A
    (or B). Exit 0 when they are the same (and the weights load), 1 otherwise."""
    from resdsl.diff import diff, weights_report
    if args.b is None and not args.weights:
        raise ResdslError("resdsl diff needs a second spec B, or --weights FILE",
                          hint="resdsl diff specs/resnet50.arch specs/resnext50_32x4d.arch")
    a = _load(args.a, args)
    status = 0
    if args.b is not None:
        result = diff(a, _load(args.b, args))
        if args.json:
            print(json.dumps(result.to_json(), indent=1))
        else:
            sys.stdout.write(result.render())
        status = 0 if result.same else 1
    if args.weights:
        target = _load(args.b, args) if args.b is not None else a
        text, ok = weights_report(target, args.weights, cast=args.cast_weights)
        if not args.json:
            sys.stdout.write(("\n" if args.b is not None else "") + text)
        elif args.b is None:
            print(json.dumps({"weights": args.weights, "model": target.name, "loads": ok,
                              "report": text}, indent=1))
        status = status or (0 if ok else 1)
    return status


def cmd_fmt(args: argparse.Namespace) -> int:
    """Format specs in place (atomically, only those whose layout changes), or with
    --check / --diff report what would change and write nothing."""
    from resdsl.fmt import format_file
    status = 0
    for path in args.files:
        try:
            result = format_file(path, write=not (args.check or args.diff))
        except ResdslError as err:
            print(err.render(), file=sys.stderr)
            status = 1
            continue
        if args.diff:
            sys.stdout.write(result.diff())
        if result.changed:
            if args.check:
                print(f"would reformat {path}")
                status = 1
            elif not args.diff:
                print(f"reformatted {path}")
    return status


def _class_name(name: str) -> str:
    from resdsl.backends.torch import class_name
    return class_name(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resdsl",
        description="A declarative language and compiler for residual-family CNNs "
                    "(ResNet, pre-activation ResNet, ResNeXt, DenseNet).")
    from resdsl import __version__
    parser.add_argument("--version", action="version", version=f"resdsl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="parse and shape-check specs (exit 1 if any is invalid)",
                       description="Parse and shape-check each spec; errors go to stderr "
                                   "as file:line:col with the line, a caret and a hint.")
    p.add_argument("specs", nargs="+", metavar="SPEC",
                   help="a spec file or a model name (`resdsl models` lists them); a block "
                        "library file has each of its models checked that can be built "
                        "with its defaults")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing for valid specs")
    _spec_options(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("models", help="list the models known by name (the zoo)",
                       description="List the models that every command accepts by name: "
                                   "the bundled reference specs and those of --lib / "
                                   "RESDSL_PATH, with parameters, MACs, oracle and file.")
    p.add_argument("pattern", nargs="?", default="*", metavar="PATTERN",
                   help="shell-style pattern, e.g. 'resnext*' (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--lib", metavar="DIR", action="append",
                   help="a further directory of specs (repeatable; also RESDSL_PATH)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("inspect", help="per-layer table: name, op, output shape, params, MACs",
                       description="Print every layer with its output shape (per sample), "
                                   "parameter count and multiply-accumulates, and totals.")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--depth", type=int, metavar="N",
                   help="collapse layers into groups by the first N parts of their names")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--graph-json", action="store_true",
                   help="print the IR graph as node-link JSON (networkx.node_link_graph "
                        "reads it back)")
    p.add_argument("--graphml", action="store_true",
                   help="print the IR graph as GraphML (networkx.read_graphml reads it back)")
    p.add_argument("--params", action="store_true",
                   help="list the model's parameters (what -D sets) with their defaults")
    _weights_options(p, "also check a state_dict (.pt/.pth) or .safetensors file against "
                        "the spec and report missing, unexpected and mis-shaped tensors, "
                        "tensors that are not float32 and NaN/Inf values")
    _spec_options(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("compile", help="lower a spec to PyTorch source or a TVM artifact",
                       description="--target torch writes standalone PyTorch source "
                                   "(imports only torch); --target llvm|cuda builds a TVM "
                                   "artifact directory.")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--target", required=True, choices=["torch", "onnx", "llvm", "cuda"])
    p.add_argument("-o", "--output", metavar="PATH",
                   help="output: for torch a .py file, or a directory (made if it ends in /) "
                        "to write NAME.py into (default: stdout); for llvm/cuda the artifact "
                        "directory (default: build/NAME-TARGET)")
    _weights_options(p, "a state_dict (.pt/.pth) or .safetensors file to check and ship "
                        "(float32; see --cast-weights)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing output (without it an output is never "
                        "overwritten, also when another command creates it meanwhile)")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="batch size the TVM artifact is compiled for (default 1)")
    p.add_argument("--db", metavar="DIR", help="tuning database from `resdsl tune` to use")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initialisation when no --weights are given (default 0; "
                        "the same weights as to_torch(seed=...))")
    p.add_argument("--cuda-arch", default=None, metavar="SM",
                   help="CUDA architecture for --target cuda, e.g. sm_80 (default: the local "
                        "GPU's; without a GPU it must be given)")
    p.add_argument("--fold-bn", action="store_true",
                   help="onnx: fold each batch norm into the convolution before it")
    _spec_options(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("graph", help="draw the network: DOT, SVG, PNG or HTML",
                       description="Layers as nodes, tensors as edges labelled with their "
                                   "shapes, blocks and stages as nested clusters named like "
                                   "the state_dict, shortcuts dashed. SVG, PNG and HTML are "
                                   "laid out by Graphviz's `dot` program.")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="net.svg, net.png, net.dot or net.html (default: DOT on stdout)")
    p.add_argument("--format", choices=["dot", "svg", "png", "html"],
                   help="the output format (default: from the -o file's extension)")
    p.add_argument("--depth", type=_positive, metavar="N",
                   help="collapse layers into one node per group of the first N parts of "
                        "their names (with params and MACs), e.g. --depth 1 for stages")
    p.add_argument("--rankdir", default="TB", choices=["TB", "LR", "BT", "RL"],
                   help="layout direction (default TB: top to bottom)")
    p.add_argument("--timeout", type=_positive, default=300, metavar="S",
                   help="seconds Graphviz may take to lay the graph out (default 300)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    _spec_options(p)
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("run", help="load a TVM artifact, run it, print outputs and latency",
                       description="Load an artifact directory (checking its metadata, "
                                   "the sha256 of its library and weights files, and that "
                                   "its target and tvm version match this machine), run it on "
                                   "--input or a seeded random batch, print the top-5 outputs "
                                   "per sample and the latency.")
    p.add_argument("artifact", metavar="DIR")
    p.add_argument("--input", metavar="FILE.npy",
                   help="input batch [N, C, H, W] (or one sample [C, H, W]), float32")
    p.add_argument("--output", metavar="FILE.npy",
                   help="also save the outputs (not over an existing file without --force)")
    p.add_argument("--force", action="store_true", help="replace an existing --output")
    p.add_argument("--repeats", type=int, default=10, help="timed runs (default 10)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("tune", help="MetaSchedule tuning into a database compile --db reuses",
                       description="Search kernel schedules with MetaSchedule; the database "
                                   "in --db is created or resumed, and `compile --db` uses "
                                   "it. For cuda without a local GPU pass --rpc. One tune at a "
                                   "time per --db: a second one fails while the first holds "
                                   "the database's lock.")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--target", required=True, choices=["llvm", "cuda"])
    p.add_argument("--trials", type=int, required=True, metavar="N",
                   help="measurement trials in all (spread over the tasks)")
    p.add_argument("--db", required=True, metavar="DIR", help="database directory")
    p.add_argument("--batch", type=int, default=1, metavar="N")
    _weights_options(p, "weights (only shapes matter for tuning)")
    p.add_argument("--rpc", metavar="HOST:PORT:KEY",
                   help="TVM RPC tracker and device key that measure candidates remotely")
    p.add_argument("--cuda-arch", default=None, metavar="SM")
    p.add_argument("--knobs", action="store_true",
                   help="llvm: measure other blockings of resdsl's own convolution kernels "
                        "(register tiles, columns per task, reduction chunks, packing, "
                        "unrolling) inside the whole network instead of MetaSchedule's "
                        "search; --trials candidates in all, minutes rather than hours")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _spec_options(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("fmt", help="lay specs out canonically, comments kept",
                       description="Rewrite each spec in the canonical layout (in place, "
                                   "atomically, only when it changes). --check writes "
                                   "nothing and exits 1 listing the files that would "
                                   "change; --diff prints a unified diff instead.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if a file would change (for CI)")
    p.add_argument("--diff", action="store_true", help="write nothing; print a unified diff")
    p.set_defaults(func=cmd_fmt)

    p = sub.add_parser("diff", help="structural diff of two networks, or spec vs checkpoint",
                       description="Compare two specs layer by layer (matched by name): "
                                   "layers added, removed and changed (op, attributes, "
                                   "output shape, parameters, inputs), totals, the first "
                                   "divergence and a summary in words. With --weights, say "
                                   "whether the checkpoint loads into B (or A) and which "
                                   "tensors do not match. Exit 1 if anything differs.")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B", nargs="?")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _weights_options(p, "a state_dict (.pt/.pth) or .safetensors file: will it load "
                        "(strictly) into B, or into A when B is not given?")
    _spec_options(p)
    p.set_defaults(func=cmd_diff)

    def cmd_import(args: argparse.Namespace) -> int:   # torch loads only when it runs
        from resdsl.importer import cmd_import as run
        return run(args)
    p = sub.add_parser("import", help="write a spec for a torchvision or timm model",
                       description="Trace the model with torch.fx and write the spec a "
                                   "person would: a block per module class, stage/dense "
                                   "for runs of blocks, the module's state_dict keys as "
                                   "layer names. Stops naming the module the language "
                                   "cannot say.")
    p.add_argument("source", metavar="SOURCE",
                   help="torchvision:NAME or timm:NAME (built with random weights)")
    p.add_argument("-o", "--output", metavar="FILE", help="the .arch file (default: stdout)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--size", type=_positive, default=224, metavar="N",
                   help="input height and width of the example input (default 224)")
    p.set_defaults(func=cmd_import)
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
