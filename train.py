"""Train RegionSpot adapters (SAM and CLIP stay frozen); the same command as `regionspot-train`. See docs/training.md.

python train.py fit --config tiny
python train.py fit --config stage1_bl --trainer.devices 8
python train.py export --ckpt path/to/last.ckpt --out adapter.safetensors
"""

from regionspot.commands.train import main

if __name__ == "__main__":
    main()
