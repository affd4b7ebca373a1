"""Every artifact a run writes goes through one atomic writer (`regionspot.files`): a write cut half-way (a kill, a
full disk) leaves the previous file whole, never half of a new one.

The cut is simulated where the bytes go out, whichever way a file is written (Path.write_text, json.dump,
safetensors' save_file): the first bytes land, then the disk is full.
"""

from __future__ import annotations

import errno
import json
import pathlib

import pytest
import torch
from lvis_tiny import write_tiny_lvis
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)

from regionspot import RegionSpotConfig
from regionspot.build import build_regionspot
from regionspot.evaluation.cli import run as evaluate_main
from regionspot.training import export

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
TINY = "tiny"


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def cut_writes(monkeypatch, names: tuple[str, ...]) -> None:
    """From now on every text or JSON file whose name holds one of `names` gets its first 10 characters written,
    then the disk is full."""

    def write_text(self, data, *args, **kwargs):
        with open(self, "w") as file:
            file.write(data[:10] if any(n in self.name for n in names) else data)
        if any(n in self.name for n in names):
            raise disk_full()

    def dump(obj, file, **kwargs):
        text = json.dumps(obj, **kwargs)
        cut = any(n in pathlib.Path(file.name).name for n in names)
        file.write(text[:10] if cut else text)
        if cut:
            raise disk_full()

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    monkeypatch.setattr(json, "dump", dump)


def test_a_write_cut_half_way_leaves_the_previous_detections_and_metrics_whole(tmp_path, monkeypatch):
    lvis = write_tiny_lvis(tmp_path / "lvis", num_images=2)
    args = ["--config", TINY, "--ann", str(lvis["ann"]), "--images", str(lvis["images"]), "--no-progress",
            "--out", str(tmp_path / "eval")]  # fmt: skip
    evaluate_main(args)
    before = {p.name: p.read_bytes() for p in (tmp_path / "eval").glob("*.json")}
    assert {"detections.json", "metrics.json", "skipped.json"} <= before.keys()
    cut_writes(monkeypatch, ("detections.json", "metrics.json"))
    with pytest.raises(OSError, match="No space left on device"):
        evaluate_main(args)  # the rerun resumes (nothing to do), then merges and scores again
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in (tmp_path / "eval").glob("*.json")}
    assert after == before
    assert not [p.name for p in (tmp_path / "eval").iterdir() if p.name.endswith(".partial")]


def test_a_write_cut_half_way_leaves_the_previous_adapter_whole(tmp_path, monkeypatch):
    config = RegionSpotConfig.from_yaml(TINY)
    torch.manual_seed(0)
    state = build_regionspot(config).adapter.state_dict()
    weights, yaml_path = export.save_adapter(state, config, tmp_path / "adapter.safetensors")
    before = weights.read_bytes(), yaml_path.read_bytes()

    def save_file(tensors, filename, metadata=None):
        pathlib.Path(filename).write_bytes(b"half of a safetensors file")
        raise disk_full()

    monkeypatch.setattr(export, "save_file", save_file)
    with pytest.raises(OSError, match="No space left"):
        export.save_adapter({k: v + 1 for k, v in state.items()}, config, weights)
    assert weights.read_bytes() == before[0] and yaml_path.read_bytes() == before[1]
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]
