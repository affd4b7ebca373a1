"""Building the model with and without its image encoders (`image_encoders=False`: training from a feature cache).

    python benchmarks/bench_build.py                                                  # tiny random backbones
    python benchmarks/bench_build.py --config regionspot_bl336 --random-checkpoints

`--random-checkpoints` writes random SAM and CLIP weights of the config's architectures to a temporary folder and
builds from those files, the path real checkpoints take (without the encoders, SAM and CLIP are built on the meta
device and only the rest is allocated and loaded); otherwise the config's own checkpoints are read, and where it
names none the backbones are random, built whole, the encoders then dropped. Each build runs in a fresh process, so
that its peak resident memory is its own. Prints one table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import torch

from regionspot import RegionSpotConfig
from regionspot.build import build_regionspot


def measure(config: RegionSpotConfig, image_encoders: bool) -> dict[str, float]:
    """In its own process: seconds to build, peak resident MiB, frozen parameters (millions)."""
    start = time.perf_counter()
    model = build_regionspot(config, image_encoders=image_encoders)
    seconds = time.perf_counter() - start
    peak_mib = _peak_resident_kib() / 1024
    return {"seconds": seconds, "peak_mib": peak_mib, "frozen_m": model.parameter_counts()["frozen"] / 1e6}


def _peak_resident_kib() -> int:
    """This process's peak resident memory (Linux's VmHWM; getrusage's maxrss would count the parent's, which a spawned
    process inherits across exec)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def write_random_checkpoints(config: RegionSpotConfig, folder: Path) -> None:
    """Random weights of the config's SAM and CLIP, saved as their checkpoints (not named as the releases are)."""
    config.sam.checkpoint = config.clip.checkpoint = None
    model = build_regionspot(config)
    torch.save(model.sam.sam.state_dict(), folder / "random_sam.pth")
    torch.save(model.clip.model.state_dict(), folder / "random_clip.pt")
    config.sam.checkpoint, config.clip.checkpoint = str(folder / "random_sam.pth"), str(folder / "random_clip.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--random-checkpoints", action="store_true", help="build from random weights saved as files")
    args = parser.parse_args()

    config = RegionSpotConfig.from_yaml(args.config)
    config.adapter.checkpoint = None  # the adapter is the same small build either way
    with tempfile.TemporaryDirectory(prefix="bench_build_") as folder:
        if args.random_checkpoints:
            write_random_checkpoints(config, Path(folder))
        spawn = multiprocessing.get_context("spawn")
        rows = {}
        for image_encoders in (True, False):
            with spawn.Pool(1) as pool:
                rows[image_encoders] = pool.apply(measure, (config, image_encoders))
    source = "random checkpoint files" if args.random_checkpoints else "the config's checkpoints (random where none)"
    print(f"# {args.config}, built from {source}; {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print("| image encoders | build s | peak resident MiB | frozen parameters |")
    print("|---|---:|---:|---:|")
    for image_encoders, row in rows.items():
        print(
            f"| {'built' if image_encoders else 'left out'} | {row['seconds']:.2f} | {row['peak_mib']:.0f} | "
            f"{row['frozen_m']:.1f}M |"
        )


if __name__ == "__main__":
    main()
