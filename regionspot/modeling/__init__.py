"""The networks, one file per part: SAM wrapper, CLIP wrapper, fusion adapter, losses, the whole model."""
