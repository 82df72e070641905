"""Fuzz the spec loader: every input must load or raise ResdslError, quickly, in bounded memory.

    python benchmarks/fuzz.py --cases 5000 --seed 1 --workers 2 --timeout 5
    python benchmarks/fuzz.py --replay build/fuzz/timeout-mut-123.json   # re-run one case here
    python benchmarks/fuzz.py --show mut:123                             # print a case's text

Runs N cases, a reproducible mix (tests/fuzzing.py: `make_cases`) of
  * mutated reference specs (specs/*.arch and specs/resnext_forms/*.arch, with their real
    paths): token deletion, duplication, swaps, hostile numbers and strings, truncation,
    deep nesting, hostile `use` paths;
  * generated, structurally plausible specs (blocks, models, combinators, arithmetic);
  * hostile files: `use` and `load()` of /etc/passwd, /dev/zero, non-UTF-8 files, FIFOs,
    directories, symlinks out of the spec tree, `use` cycles;
  * strings from hypothesis' `from_lark` over grammars/arch.lark (--lark-share).
Each case runs in one of W worker processes under a SIGALRM wall-clock cap (--timeout) and
an address-space limit (--mem-mb); a case SIGALRM cannot interrupt (a C-level big-int
operation) is killed at 1.5 x timeout + 2 s and counts as a timeout.

Prints the outcome counts (ok, resdsl-error, exception:<Type>, timeout, crash:...), the
distinct failures (outcome and the resdsl line it came from), the slowest cases, the number
over the timeout and the peak RSS of the fuzzing processes; writes each failing case to
--out (default build/fuzz/) as <outcome>-<id>.arch (the text), .json (the whole case, for
--replay) and .txt (the traceback). Exit status 1 if any case raised an exception other
than ResdslError, crashed its worker or timed out; 0 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import os
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import fuzzing  # noqa: E402  (tests/fuzzing.py)


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in s)


def write_reproducer(out_dir: Path, case: fuzzing.Case, outcome: fuzzing.Outcome) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / _safe(f"{outcome.kind.replace('exception:', '')}-{case.id}")
    if case.mode == "load" and case.data is not None:
        stem.with_suffix(".arch").write_bytes(case.data)
    else:
        stem.with_suffix(".arch").write_text(case.source(), encoding="utf-8",
                                             errors="surrogateescape")
    stem.with_suffix(".json").write_text(json.dumps(
        {"case": case.to_json(), "outcome": {k: v for k, v in vars(outcome).items()}},
        indent=1))
    stem.with_suffix(".txt").write_text(
        f"case {case.id} ({case.note})\nmode {case.mode}, path {case.path!r}\n"
        f"outcome {outcome.kind} after {outcome.seconds:.2f} s\nat {outcome.where}\n\n"
        f"{outcome.message}\n\n{outcome.traceback}\n"
        f"replay: python benchmarks/fuzz.py --replay {stem.with_suffix('.json')}\n")
    return stem


def replay(path: str, timeout: float) -> int:
    import os
    import tempfile
    d = json.loads(Path(path).read_text())
    case = fuzzing.Case.from_json(d.get("case", d))
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        tree = fuzzing.make_tree(tmp)
        out = fuzzing.run_case(case, timeout, tree)
    print(f"{case.id}: {out.kind} in {out.seconds:.3f} s at {out.where}")
    print(out.traceback or out.message)
    return 0 if out.good else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per case")
    ap.add_argument("--mem-mb", type=int, default=4096,
                    help="address-space limit of a worker, MiB (0: none)")
    ap.add_argument("--lark-share", type=float, default=0.1,
                    help="fraction of cases drawn from from_lark")
    ap.add_argument("--out", default=str(ROOT / "build" / "fuzz"))
    ap.add_argument("--slowest", type=int, default=10)
    ap.add_argument("--replay", metavar="JSON", help="re-run one reproducer in this process")
    ap.add_argument("--show", metavar="ID", help="print the text of case ID (mut:N, gen:N, ...)")
    ap.add_argument("-q", "--quiet", action="store_true")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="what a case's time is: wall-clock, or the worker's CPU time (for a "
                         "shared machine, where other load inflates wall-clock time)")
    args = ap.parse_args(argv)
    if args.clock == "cpu":
        os.environ["RESDSL_FUZZ_CLOCK"] = "cpu"
        fuzzing.CPU_CLOCK = True

    if args.replay:
        return replay(args.replay, args.timeout)
    if args.show:
        c = fuzzing.case_from_id(args.show)
        print(f"# {c.id}: {c.note}\n# mode {c.mode}, path {c.path!r}")
        print(c.source())
        return 0

    t0 = time.perf_counter()
    cases = fuzzing.make_cases(args.cases, args.seed, args.lark_share)
    t_gen = time.perf_counter() - t0
    out_dir = Path(args.out)
    done = [0]

    def progress(idx, case, out):
        done[0] += 1
        if not out.good:
            write_reproducer(out_dir, case, out)
            if not args.quiet:
                print(f"  {out.kind:<28} {case.id:<16} {out.seconds:6.2f} s  {out.where[:90]}",
                      flush=True)
        if not args.quiet and done[0] % 500 == 0:
            print(f"  ... {done[0]}/{len(cases)} cases, {time.perf_counter() - t0:.0f} s",
                  flush=True)

    outcomes, peak_worker = fuzzing.run_cases(cases, args.workers, args.timeout,
                                              args.mem_mb, progress)
    wall = time.perf_counter() - t0

    counts = collections.Counter(o.kind for o in outcomes)
    kinds = collections.Counter(
        (c.id.split(":")[0], "ok" if o.kind == "ok" else "error" if o.kind == "resdsl-error"
         else "FAIL") for c, o in zip(cases, outcomes))
    print(f"\n{len(cases)} cases (seed {args.seed}) in {wall:.1f} s "
          f"({t_gen:.1f} s generating), {args.workers} workers, timeout {args.timeout:g} s\n")
    print(f"{'outcome':<34}{'count':>8}")
    for kind, n in sorted(counts.items(), key=lambda kv: (kv[0] not in fuzzing.GOOD, -kv[1])):
        print(f"{kind:<34}{n:>8}")
    print(f"\n{'case kind':<12}{'ok':>8}{'error':>8}{'FAIL':>8}")
    for k in sorted({c.id.split(':')[0] for c in cases}):
        print(f"{k:<12}{kinds[(k, 'ok')]:>8}{kinds[(k, 'error')]:>8}{kinds[(k, 'FAIL')]:>8}")

    sigs = collections.defaultdict(list)
    for c, o in zip(cases, outcomes):
        if not o.good:
            sigs[o.signature()].append(c.id)
    if sigs:
        print("\ndistinct failures (outcome @ innermost resdsl frame):")
        for sig, ids in sorted(sigs.items(), key=lambda kv: -len(kv[1])):
            print(f"{len(ids):>6}  {sig[:150]}\n        e.g. {', '.join(ids[:4])}")

    order = sorted(range(len(cases)), key=lambda i: -outcomes[i].seconds)
    print(f"\nslowest {args.slowest} cases:")
    for i in order[:args.slowest]:
        print(f"  {outcomes[i].seconds:8.3f} s  {outcomes[i].kind:<26} {cases[i].id}")
    over = sum(o.seconds > args.timeout or o.kind == fuzzing.TIMEOUT for o in outcomes)
    print(f"\ncases over the {args.timeout:g} s timeout ({args.clock} time): {over}")
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"peak RSS: this process {self_rss / 1024:.0f} MiB, workers "
          f"{max(peak_worker, child_rss) / 1024:.0f} MiB (limit {args.mem_mb} MiB address space)")
    bad = sum(n for k, n in counts.items() if k not in fuzzing.GOOD)
    if bad:
        print(f"\n{bad} failing cases written to {out_dir}/")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
