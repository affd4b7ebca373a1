"""Evaluate RegionSpot on LVIS/COCO by the official protocol; the same command as `regionspot-evaluate`.
See docs/evaluation.md, or `python evaluate.py --help`.

    python evaluate.py --config <model yaml or name> --adapter <weights.safetensors> --ann <lvis_v1_val.json> \
        --images <folder> [--proposals <detections.json> | --source sam] [--out <dir>]
    python evaluate.py score --gt <lvis json> --detections <results json> --out <metrics.json> [--fixed-ap]
    python evaluate.py captions score --gt <region-caption json> --results <caption results json>
"""

from regionspot.evaluation.cli import main

if __name__ == "__main__":
    main()
