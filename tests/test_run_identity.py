"""A resumed evaluation never mixes two runs: a rerun in the same --out whose weights (behind the same model YAML),
annotation file, images or settings differ from the killed run's refuses in one line naming what changed; with
--restart it starts afresh and equals a fresh run; with everything the same it resumes to the uninterrupted output.

A killed run is made the way a kill leaves it: the uninterrupted run's part file cut to its first lines, its final
files gone (tests/test_robust_eval.py kills real processes and shows that this is what remains).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from lvis_tiny import write_tiny_lvis
from PIL import Image
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)
from test_robust_eval import OUTPUTS, PARTS, exact_match_scores, outputs, world  # noqa: F401 (a fixture)

from regionspot import RegionSpotConfig
from regionspot.build import build_regionspot
from regionspot.evaluation import caption_eval
from regionspot.evaluation.cli import run as evaluate_main
from regionspot.training.export import save_adapter

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
TINY = "tiny"


def write_adapter(folder: Path, *, seed: int) -> Path:
    """A trained-looking run folder: adapter.safetensors (random weights drawn from `seed`) and adapter.yaml."""
    config = RegionSpotConfig.from_yaml(TINY)
    torch.manual_seed(seed)
    model = build_regionspot(config)
    return save_adapter(model.adapter.state_dict(), config, folder / "adapter.safetensors")[1]


def kill_after(out: Path, mode: str, lines: int) -> None:
    """Leave `out` as a run killed after `lines` finished images (or batches) leaves it."""
    part = out / PARTS[mode].replace("*", "0")
    part.write_bytes(b"".join(part.read_bytes().splitlines(keepends=True)[:lines]))
    for name in OUTPUTS[mode]:
        (out / name).unlink()


@pytest.fixture(scope="module")
def lvis(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("identity")
    data = write_tiny_lvis(root / "lvis", num_images=4)
    return {**data, "run": write_adapter(root / "run", seed=1)}


def detections_args(lvis: dict[str, Path], out: Path) -> list[str]:
    return ["--config", str(lvis["run"]), "--ann", str(lvis["ann"]), "--images", str(lvis["images"]),
            "--no-progress", "--out", str(out)]  # fmt: skip


def refusal(args: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        evaluate_main(args)
    message = str(stopped.value)
    assert "\n" not in message and "--restart" in message and "another --out" in message
    return message


def test_a_rerun_after_the_adapter_behind_the_same_yaml_is_replaced_refuses_and_restart_equals_a_fresh_run(
    lvis, tmp_path
):
    out = tmp_path / "eval"
    evaluate_main(detections_args(lvis, out))
    kill_after(out, "detections", 2)
    saved = lvis["run"].with_suffix(".safetensors").read_bytes()
    write_adapter(lvis["run"].parent, seed=2)  # a second train.py run into the same folder
    try:
        message = refusal(detections_args(lvis, out))
        assert "weights.adapter.checkpoint.sha256" in message, message
        evaluate_main([*detections_args(lvis, out), "--restart"])
        evaluate_main(detections_args(lvis, tmp_path / "fresh"))
        assert outputs("detections", out) == outputs("detections", tmp_path / "fresh")
    finally:
        lvis["run"].with_suffix(".safetensors").write_bytes(saved)


def test_a_rerun_after_the_annotation_file_is_edited_in_place_refuses(lvis, tmp_path):
    out = tmp_path / "eval"
    evaluate_main(detections_args(lvis, out))
    kill_after(out, "detections", 2)
    original = lvis["ann"].read_text()
    shifted = json.loads(original)
    for ann in shifted["annotations"]:
        ann["bbox"][0] += 8
    lvis["ann"].write_text(json.dumps(shifted))
    try:
        assert "data.ann.sha256" in refusal(detections_args(lvis, out))
    finally:
        lvis["ann"].write_text(original)


def test_a_rerun_after_a_recognised_image_is_replaced_refuses(lvis, tmp_path):
    out = tmp_path / "eval"
    evaluate_main(detections_args(lvis, out))
    kill_after(out, "detections", 2)
    image = sorted(lvis["images"].iterdir())[0]  # image 10: recognised before the kill
    original = image.read_bytes()
    Image.new("RGB", (64, 48), (9, 9, 9)).save(image)  # the same size in pixels, other bytes
    try:
        assert "1 images it recognised have changed or gone since (first 000000000010.png" in refusal(
            detections_args(lvis, out)
        )
    finally:
        image.write_bytes(original)


def test_a_rerun_with_everything_the_same_resumes_to_the_uninterrupted_output(lvis, tmp_path):
    evaluate_main(detections_args(lvis, tmp_path / "reference"))
    out = tmp_path / "eval"
    shutil.copytree(tmp_path / "reference", out)
    kill_after(out, "detections", 2)
    evaluate_main(detections_args(lvis, out))
    assert outputs("detections", out) == outputs("detections", tmp_path / "reference")


def test_other_settings_refuse_too(lvis, tmp_path):
    out = tmp_path / "eval"
    evaluate_main(detections_args(lvis, out))
    kill_after(out, "detections", 2)
    assert "settings.top_k 300 -> 5" in refusal([*detections_args(lvis, out), "--top-k", "5"])


def test_captions_refuse_when_the_caption_decoder_weights_change(world, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(caption_eval, "score_captions", exact_match_scores)
    config_path = Path(world["captions"][world["captions"].index("--config") + 1])
    config = yaml.safe_load(config_path.read_text())
    weights = tmp_path / "caption_decoder.safetensors"
    torch.manual_seed(0)
    model = build_regionspot(RegionSpotConfig.from_dict(config))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.caption_decoder.state_dict().items()}, str(weights))
    config["caption"]["checkpoint"] = str(weights)
    (tmp_path / "captioner.yaml").write_text(yaml.safe_dump(config))
    args = [*world["captions"], "--config", str(tmp_path / "captioner.yaml"), "--out", str(tmp_path / "eval")]
    evaluate_main(args)
    kill_after(tmp_path / "eval", "captions", 1)
    torch.manual_seed(1)
    other = build_regionspot(
        RegionSpotConfig.from_dict(config | {"caption": {**config["caption"], "checkpoint": None}})
    )
    save_file({k: v.contiguous() for k, v in other.caption_decoder.state_dict().items()}, str(weights))
    assert "weights.caption.checkpoint.sha256" in refusal(args)


def test_vqa_refuses_when_a_file_of_the_llm_folder_changes(world, tmp_path):  # noqa: F811
    config_path = Path(world["vqa"][world["vqa"].index("--config") + 1])
    config = yaml.safe_load(config_path.read_text())
    llm = tmp_path / "llm"
    shutil.copytree(config["vqa"]["llm"], llm)
    config["vqa"]["llm"] = str(llm)
    (tmp_path / "vqa.yaml").write_text(yaml.safe_dump(config))
    args = [*world["vqa"], "--config", str(tmp_path / "vqa.yaml"), "--out", str(tmp_path / "eval")]
    evaluate_main(args)
    kill_after(tmp_path / "eval", "vqa", 1)
    with open(llm / "config.json", "a") as file:
        file.write("\n")  # any byte of the folder: its weights, its tokenizer, its config
    assert "weights.vqa.llm.sha256" in refusal(args)
