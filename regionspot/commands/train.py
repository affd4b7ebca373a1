"""Train RegionSpot adapters (SAM and CLIP stay frozen), or export a trained one. See docs/training.md.

    {prog} fit --config tiny                      # a packaged training config by name (regionspot-configs), or a YAML
    {prog} fit --config stage1_bl --trainer.devices 8 --data.train.objects365.ann_file ...
    {prog} fit --config tiny --ckpt_path last     # the same command again continues an interrupted run
    {prog} validate --config tiny --ckpt_path runs/tiny/checkpoints/last.ckpt
    {prog} export --ckpt runs/tiny/checkpoints/last.ckpt --out adapter.safetensors

`{prog} fit --help` lists every option of the model, the data and Lightning's trainer.
"""

from __future__ import annotations

import signal
import sys

from regionspot.commands import argument_parser

MODULE = "regionspot.training"  # `python -m regionspot.training` runs this command too
SUBCOMMANDS = {
    "fit": "train the adapter (and the heads the model config has) with LightningCLI",
    "validate": "score a checkpoint on the validation set (LVIS AP with ground-truth boxes)",
    "export": "write a trained adapter as .safetensors plus a model YAML that loads it",
}


def main(argv: list[str] | None = None) -> None:
    """`regionspot-train` / `python train.py`: LightningCLI's fit and validate, and `export`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argument_parser(MODULE, __doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, text in SUBCOMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)
    command = parser.parse_args(argv[:1]).command  # the rest is the subcommand's to parse
    if command == "export":
        try:
            export_main(argv[1:])
        except (FileNotFoundError, ValueError, RuntimeError) as err:  # a wrong file: one line saying which and why
            raise SystemExit(f"error: {err}") from err
        return

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from regionspot.training.cli import RegionSpotCLI
    from regionspot.training.fault_tolerance import UnreadableCheckpointError
    from regionspot.training.run_logs import EarlierRunError

    try:
        RegionSpotCLI(args=argv)
    except SIGTERMException as stopped:  # pre-empted, checkpoint saved: exit as a terminated process, not as done
        raise SystemExit(128 + signal.SIGTERM) from stopped
    except (UnreadableCheckpointError, EarlierRunError) as err:  # a one-line message says which file and what to do
        raise SystemExit(f"error: {err}") from err


def export_main(argv: list[str] | None = None) -> None:
    """`regionspot-train export`: a training checkpoint (or RegionSpot's model_final.pth) -> adapter files."""
    parser = argument_parser(MODULE, SUBCOMMANDS["export"].capitalize() + ".", "export")
    parser.add_argument("--ckpt", required=True, help="a checkpoint of `fit`, or RegionSpot's model_final.pth")
    parser.add_argument("--out", default="adapter.safetensors", help="output .safetensors (the YAML goes beside it)")
    parser.add_argument(
        "--config",
        help="for an original RegionSpot model_final.pth (required there): the model it was trained for, "
        "regionspot_bb, regionspot_bl or regionspot_bl336 (a packaged name) or a model YAML",
    )
    args = parser.parse_args(argv)

    from regionspot.training.export import export_adapter

    weights, config = export_adapter(args.ckpt, args.out, model_config=args.config)
    print(f"wrote {weights} and {config}; use it with build_regionspot({str(config)!r})")
