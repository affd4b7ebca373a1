"""Test helpers: one intra-op thread for tiny models, a tiny extraction's arguments (the toy data set itself is
`regionspot.data.toy`)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_cpu_thread():
    """Tiny models on a shared CPU: one intra-op thread is several times faster than oversubscribed threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def extraction_args(
    config, *, ann, images, out, shard_size: int, batch_size: int, name: str | None = None
) -> list[str]:
    """`regionspot.extract` arguments for a tiny fp32 CPU extraction with CLIP maps and flipped views."""
    return [
        "--config", str(config), "--ann", str(ann), "--images", str(images), *(["--name", name] if name else []),
        "--out", str(out), "--clip-maps", "--flips", "--dtype", "fp32", "--backbone-precision", "float32",
        "--shard-size", str(shard_size), "--batch-size", str(batch_size), "--num-workers", "0", "--accelerator", "cpu",
    ]  # fmt: skip
