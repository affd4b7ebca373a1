"""How long each console command takes to answer `--help`, next to `python -c "import torch"` (the issue's bar).

    python benchmarks/bench_help.py [--repeats 3]

Each command runs as a fresh process, as a user types it; the table gives the median wall time in seconds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = [
    [sys.executable, "-c", "import torch"],
    [sys.executable, "-c", "import lightning"],
    *[[str(BIN / name), "--help"] for name in ("regionspot-train", "regionspot-evaluate", "regionspot-recognize")],
    *[[str(BIN / name), "--help"] for name in ("regionspot-app", "regionspot-extract", "regionspot-demo")],
    *[[str(BIN / name), "--help"] for name in ("regionspot-configs", "regionspot-export", "regionspot-serve")],
    [str(BIN / "regionspot-evaluate"), "captions", "score", "--help"],
]


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| command | median s |\n|---|---:|")
    for command in COMMANDS:
        shown = " ".join([Path(command[0]).name, *command[1:]])
        print(f"| `{shown}` | {statistics.median(seconds(command) for _ in range(args.repeats)):.2f} |", flush=True)


if __name__ == "__main__":
    main()
