"""What bench_onnx.py, bench_serve.py and onnx_parity.py share: a model held as files, its export, both predictors.

`--random-weights` builds SAM, CLIP and the adapter of a config with random weights and saves each to a file in the
work folder, as a user holds real checkpoints, so that the torch predictor and the export load the very same
files; without it, a part whose config names no checkpoint (the tiny config's adapter) gets its random weights saved
the same way, since each build would draw its own. The export is made once per work folder and reused while the
checkpoints' SHA-256 digests are the ones its manifest records; otherwise it is made again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from regionspot import RegionSpotConfig, RegionSpotPredictor, build_regionspot
from regionspot.onnx import OnnxRegionPredictor
from regionspot.onnx.export import MANIFEST, checkpoint_digests, export_onnx


def work_folder(config_path: str, *, one_template: bool) -> Path:
    return Path(f"/tmp/regionspot-bench-{Path(config_path).stem}{'-plain' if one_template else ''}")


def held_config_of(args: argparse.Namespace, *, work: Path | None = None) -> tuple[Path, RegionSpotConfig]:
    """The work folder (default: `work_folder`'s) and `held_config` of a benchmark's --config, --random-weights and
    --one-template options: any config but the tiny one gets random weights, saved in the work folder (the tiny
    one: those of its parts without a checkpoint, which is all of them as shipped)."""
    work = work or work_folder(args.config, one_template=args.one_template)
    random_weights = args.random_weights or "tiny" not in args.config
    return work, held_config(args.config, work, random_weights=random_weights, one_template=args.one_template)


def held_config(config_path: str, work: Path, *, random_weights: bool, one_template: bool = False) -> RegionSpotConfig:
    """The config, in float32, its checkpoints pointing at files in `work`: every part's random weights saved there
    first with `random_weights`, else those of the parts without a checkpoint (each build would draw its own).
    `one_template`: names read as "{}." alone instead of the config's 81 prompts (CLIP-L's text tower costs ~13
    GFLOP a prompt: real-size runs on a CPU wait minutes per vocabulary otherwise; queries cost the same)."""
    config = RegionSpotConfig.from_yaml(config_path)
    config.clip.precision = "float32"  # the export's precision: parity and speed compare like with like
    if one_template:
        config.clip.templates = "plain"
    sections = {"sam": config.sam, "clip": config.clip, "adapter": config.adapter}
    drawn = [part for part, section in sections.items() if random_weights or section.checkpoint is None]
    if not drawn:
        return config
    work.mkdir(parents=True, exist_ok=True)
    files = {part: work / f"random_{part}.safetensors" for part in drawn}
    if not all(f.is_file() for f in files.values()):
        for part in drawn:
            sections[part].checkpoint = None
        torch.manual_seed(0)
        model = build_regionspot(config)
        modules = {"sam": model.sam.sam, "clip": model.clip.model, "adapter": model.adapter}
        for part in drawn:
            save_file({k: v.contiguous() for k, v in modules[part].state_dict().items()}, files[part])
    for part in drawn:
        sections[part].checkpoint = str(files[part])
    return config


def exported(config: RegionSpotConfig, work: Path) -> Path:
    """The export of `config` in work/export: made unless there, and made again when the checkpoints its manifest
    records (path and SHA-256) are not the config's files as they are now."""
    folder = work / "export"
    manifest = folder / MANIFEST
    if not manifest.is_file() or json.loads(manifest.read_text()).get("checkpoints") != checkpoint_digests(config):
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
