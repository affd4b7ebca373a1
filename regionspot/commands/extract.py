"""Run the frozen backbones once over a detection data set and keep what they give, for training without them
(regionspot.extract; docs/training.md, "Feature caches").

    {prog} --config regionspot_bl --ann o365/train.json \\
        --images o365/images --out features/o365_bl --clip-maps [--flips] [--dtype bf16|fp16|fp32]
    {prog} --config ... --data data.yaml --out ...     # a DatasetConfig in YAML
    {prog} ... --accelerator gpu --devices 8          # one process per GPU (Lightning Fabric)

Run the same command again after a crash: finished shards are kept, the others are done again.
"""

from __future__ import annotations

import argparse
import logging
import sys

from regionspot.commands import argument_parser

MODULE = "regionspot.extract"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(MODULE, __doc__)
    parser.add_argument("--config", required=True, help="model YAML or packaged name (its sam and clip sections count)")
    parser.add_argument("--data", help="YAML of one data set (DatasetConfig fields: ann_file, image_dir, hf_path, ...)")
    parser.add_argument("--ann", help="COCO/LVIS-format annotation JSON (instead of --data)")
    parser.add_argument("--images", help="its image folder")
    parser.add_argument("--name", default="data", help="the data set's name in the manifest")
    parser.add_argument("--out", required=True, help="the cache folder; the same command again resumes it")
    parser.add_argument("--clip-maps", action="store_true", help="also keep CLIP's token map (training needs it)")
    parser.add_argument("--flips", action="store_true", help="also keep the horizontally flipped view")
    parser.add_argument("--dtype", default="bf16", help="dtype of the stored tensors: bf16, fp16 or fp32")
    parser.add_argument(
        "--backbone-precision",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="dtype the backbones run in (auto: bfloat16 on GPU, float32 on CPU)",
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    parser.add_argument("--batch-size", type=int, default=8, help="images per frozen-step batch")
    parser.add_argument("--num-workers", type=int, default=2, help="data loader workers per process")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator: cpu, gpu, auto")
    parser.add_argument("--devices", default="1", help="processes (GPUs) on this node: a number or 'auto'")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--strategy", default="auto", help="Lightning strategy (auto: DDP with several devices)")
    parser.add_argument("--restart", action="store_true", help="discard an earlier extraction in --out first")
    args = parser.parse_args(argv)
    if args.shard_size < 1 or args.batch_size < 1:
        parser.error("--shard-size and --batch-size must be positive")
    if args.devices != "auto" and not args.devices.isdigit():
        parser.error(f"--devices must be a number or 'auto', got {args.devices!r}")

    from regionspot.data.feature_cache import STORAGE_DTYPES

    if args.dtype not in STORAGE_DTYPES:
        parser.error(f"--dtype must be one of {', '.join(STORAGE_DTYPES)}, got {args.dtype!r}")
    return args


def main(argv: list[str] | None = None) -> None:
    """`regionspot-extract` / `python -m regionspot.extract`."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("regionspot").setLevel(logging.INFO)

    import lightning as L

    from regionspot.extract import run_ranks

    devices = args.devices if args.devices == "auto" else int(args.devices)
    fabric = L.Fabric(accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes, strategy=args.strategy)
    try:
        fabric.launch(run_ranks, args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {err}") from err
