"""How long `resdsl check` takes on the deepest reference specs (goal: ResNet-1202 well
under a second), and the start-up of `resdsl --help` and `resdsl check resnet50` as ratios
to `python -c pass` measured in the same run (goals: --help <= 0.15 s, check resnet50 <=
0.35 s on a 2-core machine). Prints tables; run: python benchmarks/check_speed.py

Times are for the whole command in a fresh process (interpreter start-up and imports
included, as a user sees it) and for the load alone (parse + elaborate + validate)."""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = ["resnet1202", "preact_resnet1001", "resnet152", "densenet201", "resnet18"]


def command_time(spec: str, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "resdsl", "check", "-q", f"specs/{spec}.arch"],
                       cwd=ROOT, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def load_time(spec: str, repeats: int = 5) -> tuple[float, int]:
    import resdsl
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        arch = resdsl.load(ROOT / f"specs/{spec}.arch")
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(arch.graph)


def startup(repeats: int = 7) -> None:
    """Interleaved: python -c pass, resdsl --help, resdsl check resnet50; the last also
    with resdsl's bytecode cached (in a temporary PYTHONPYCACHEPREFIX), as an installed
    package has it, for where PYTHONDONTWRITEBYTECODE makes every run compile resdsl."""
    check = [sys.executable, "-m", "resdsl", "check", "-q", "resnet50"]
    cmds = {"python -c pass": [sys.executable, "-c", "pass"],
            "resdsl --help": [sys.executable, "-m", "resdsl", "--help"],
            "resdsl check resnet50": check,
            "  (bytecode cached)": check}
    with tempfile.TemporaryDirectory() as prefix:
        cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = prefix
        subprocess.run(check, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=cached)
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(repeats):
            for name, cmd in cmds.items():
                t = time.perf_counter()
                subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                               env=cached if name.startswith(" ") else None)
                times[name].append(time.perf_counter() - t)
    base = statistics.median(times["python -c pass"])
    flag = os.environ.get("PYTHONDONTWRITEBYTECODE")
    print(f"(PYTHONDONTWRITEBYTECODE={flag!r}: rows but the last "
          f"{'compile resdsl from source each run' if flag else 'use its bytecode'})")
    print(f"{'command':<24} {'median (ms)':>12} {'/ python -c pass':>17}")
    for name in cmds:
        m = statistics.median(times[name])
        print(f"{name:<24} {m * 1000:>12.0f} {m / base:>17.2f}")
    print()


def main() -> None:
    startup()
    baseline = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        baseline.append(time.perf_counter() - t)
    print(f"python start-up alone: {statistics.median(baseline) * 1000:.0f} ms\n")
    print(f"{'spec':<20} {'layers':>7} {'load (ms)':>10} {'resdsl check (ms)':>18}")
    for spec in SPECS:
        load, layers = load_time(spec)
        print(f"{spec:<20} {layers:>7} {load * 1000:>10.0f} {command_time(spec) * 1000:>18.0f}")


if __name__ == "__main__":
    main()
