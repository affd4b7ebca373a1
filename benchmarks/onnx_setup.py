"""What bench_onnx.py, bench_serve.py and onnx_parity.py share: a model held as files, its export, both predictors.

`--random-weights` builds SAM, CLIP and the adapter of a config with random weights and saves each to a file in the
work folder, as a user holds real checkpoints, so that the torch predictor and the export load the very same
files. The export is made once per work folder and reused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from regionspot import RegionSpotConfig, RegionSpotPredictor, build_regionspot
from regionspot.onnx import OnnxRegionPredictor
from regionspot.onnx.export import export_onnx


def work_folder(config_path: str, *, one_template: bool) -> Path:
    return Path(f"/tmp/regionspot-bench-{Path(config_path).stem}{'-plain' if one_template else ''}")


def held_config_of(args: argparse.Namespace, *, work: Path | None = None) -> tuple[Path, RegionSpotConfig]:
    """The work folder (default: `work_folder`'s) and `held_config` of a benchmark's --config, --random-weights and
    --one-template options: any config but the tiny one gets random weights, saved in the work folder."""
    work = work or work_folder(args.config, one_template=args.one_template)
    random_weights = args.random_weights or "tiny" not in args.config
    return work, held_config(args.config, work, random_weights=random_weights, one_template=args.one_template)


def held_config(config_path: str, work: Path, *, random_weights: bool, one_template: bool = False) -> RegionSpotConfig:
    """The config, in float32, its checkpoints pointing at files in `work` (random weights saved there first).
    `one_template`: names read as "{}." alone instead of the config's 81 prompts (CLIP-L's text tower costs ~13
    GFLOP a prompt: real-size runs on a CPU wait minutes per vocabulary otherwise; queries cost the same)."""
    config = RegionSpotConfig.from_yaml(config_path)
    config.clip.precision = "float32"  # the export's precision: parity and speed compare like with like
    if one_template:
        config.clip.templates = "plain"
    if not random_weights:
        return config
    work.mkdir(parents=True, exist_ok=True)
    files = {part: work / f"random_{part}.safetensors" for part in ("sam", "clip", "adapter")}
    if not all(f.is_file() for f in files.values()):
        config.sam.checkpoint = config.clip.checkpoint = config.adapter.checkpoint = None
        torch.manual_seed(0)
        model = build_regionspot(config)
        for part, module in (("sam", model.sam.sam), ("clip", model.clip.model), ("adapter", model.adapter)):
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, files[part])
    config.sam.checkpoint, config.clip.checkpoint = str(files["sam"]), str(files["clip"])
    config.adapter.checkpoint = str(files["adapter"])
    return config


def exported(config: RegionSpotConfig, work: Path) -> Path:
    """The export of `config` in work/export (made unless already there)."""
    folder = work / "export"
    if not (folder / "manifest.json").is_file():
        export_onnx(config, folder)
    return folder


def predictors(
    config: RegionSpotConfig, folder: Path, *, threads: int, device: str = "cpu", providers: list[str] | None = None
) -> tuple[RegionSpotPredictor, OnnxRegionPredictor]:
    """The torch predictor (on `device`) and the ONNX one (on onnxruntime's `providers`, default the CPU), on the
    same weights, each with `threads` compute threads."""
    torch.set_num_threads(threads)
    with torch.device(device):
        model = build_regionspot(config)
    return RegionSpotPredictor(model), OnnxRegionPredictor(folder, threads=threads, providers=providers)
