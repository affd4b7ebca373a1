"""Train RegionSpot adapters (SAM and CLIP stay frozen). See docs/training.md.

python train.py fit --config configs/tiny.yaml
python train.py fit --config configs/stage1_bl.yaml --trainer.devices 8
python train.py export --ckpt path/to/last.ckpt --out adapter.safetensors
"""

from regionspot.training.cli import main

if __name__ == "__main__":
    main()
