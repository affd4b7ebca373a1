"""Export a RegionSpot model for deployment (regionspot.onnx.export; docs/deploy.md).

{prog} onnx --config regionspot_bb --adapter adapter.safetensors --out export/
"""

from __future__ import annotations

import logging

from regionspot.commands import argument_parser

MODULE = "regionspot.onnx.export"


def main(argv: list[str] | None = None) -> None:
    """`regionspot-export onnx --config NAME_OR_PATH [--adapter FILE] --out DIR`."""
    parser = argument_parser(MODULE, __doc__)
    formats = parser.add_subparsers(dest="format", required=True)
    to_onnx = formats.add_parser(
        "onnx", help="ONNX graphs + tokenizer + manifest, for regionspot.onnx", allow_abbrev=False
    )
    to_onnx.add_argument("--config", required=True, help="a model YAML, or a packaged model config's name")
    to_onnx.add_argument("--adapter", help="trained adapter weights (overrides the config's adapter.checkpoint)")
    to_onnx.add_argument("--out", required=True, help="the folder to write into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from regionspot.onnx.export import export_onnx

    try:
        manifest = export_onnx(args.config, args.out, adapter=args.adapter)
    except (ValueError, FileNotFoundError) as err:  # a wrong file or a model the graphs cannot express: one line
        raise SystemExit(f"error: {err}") from err
    print(f"wrote the ONNX graphs, tokenizer and manifest: {manifest}")
