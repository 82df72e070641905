"""How long `resdsl check` takes on the deepest reference specs (goal: ResNet-1202 well
under a second). Prints a table; run: python benchmarks/check_speed.py

Times are for the whole command in a fresh process (interpreter start-up and imports
included, as a user sees it) and for the load alone (parse + elaborate + validate)."""

import statistics
import subprocess
import sys
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


def main() -> None:
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
