"""Evaluate RegionSpot on LVIS/COCO by the official protocol; see docs/evaluation.md.

    python evaluate.py --config <model yaml> --adapter <weights.safetensors> --ann <lvis_v1_val.json> \
        --images <folder> [--proposals <detections.json> | --source sam] [--out <dir>]
    python evaluate.py score --gt <lvis json> --detections <results json> --out <metrics.json> [--fixed-ap]
"""

from regionspot.evaluation.cli import main

if __name__ == "__main__":
    main()
