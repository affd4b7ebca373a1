"""Loading files from strangers: pickles that would run code are refused unrun, by every loader, with an error
naming the file; adapters are safetensors; a model config with an unknown key or a wrong type is refused by name."""

from __future__ import annotations

import ast
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from regionspot import RegionSpotConfig, build_regionspot
from regionspot.checkpoint import CheckpointMismatchError
from regionspot.configs import resolve_config
from regionspot.modeling.clip import build_clip
from regionspot.modeling.sam import build_sam, build_tiny_sam

TINY = "tiny"
PAYLOAD_FORMATS = ("zip", "legacy", "raw_pickle", "torchscript_lookalike")


def _write_marker(path: str) -> None:
    """What the payload runs when unpickled: a file appears. The tests assert that it never does."""
    Path(path).write_text("the checkpoint ran code")


class _RunsFunction:
    """Unpickles by calling a function of this module (any importable function would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return _write_marker, (str(self.marker),)


class _RunsExec:
    """The classic payload: builtins.exec of a string."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _poisoned(content: dict, marker: Path) -> dict:
    """`content` with both payloads beside its tensors, as an attacker would add them to a real checkpoint."""
    return {**content, "trainer": _RunsFunction(marker), "iteration": _RunsExec(marker)}


def _write_payload(path: Path, content: dict, marker: Path, kind: str) -> Path:
    poisoned = _poisoned(content, marker)
    if kind == "zip":
        torch.save(poisoned, path)
    elif kind == "legacy":
        torch.save(poisoned, path, _use_new_zipfile_serialization=False)
    elif kind == "raw_pickle":
        path.write_bytes(pickle.dumps(poisoned, protocol=2))
    else:  # a zip that names a TorchScript part, so that it is sent to torch.jit.load instead
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/constants.pkl", pickle.dumps(_RunsExec(marker)))
            archive.writestr("archive/data.pkl", pickle.dumps(poisoned))
    return path


def _refused(load, path: Path, marker: Path, error: type[BaseException] = CheckpointMismatchError) -> None:
    with pytest.raises(error) as info:
        load(path)
    assert not marker.exists(), f"loading {path.name} ran the payload"
    if error is CheckpointMismatchError:
        assert str(path) in str(info.value)
        assert "holds more than weights" in str(info.value) or "cannot read" in str(info.value)


def test_the_payloads_are_live(tmp_path):
    """The refusals below mean something: each payload does run under a plain (unsafe) load."""
    for kind in ("zip", "legacy"):
        marker = tmp_path / f"ran_{kind}"
        path = _write_payload(tmp_path / f"{kind}.pth", {"w": torch.zeros(1)}, marker, kind)
        torch.load(path, weights_only=False)
        assert marker.exists()
    marker = tmp_path / "ran_exec"
    pickle.loads(pickle.dumps(_RunsExec(marker)))
    assert marker.exists()


@pytest.mark.parametrize("kind", PAYLOAD_FORMATS)
def test_sam_checkpoint_with_a_payload_is_refused(tmp_path, kind):
    marker = tmp_path / "ran"
    path = _write_payload(tmp_path / "sam.pth", {"model": build_tiny_sam().state_dict()}, marker, kind)
    _refused(lambda p: build_sam(variant="tiny", checkpoint=str(p)), path, marker)


@pytest.mark.parametrize("kind", PAYLOAD_FORMATS)
def test_clip_checkpoint_with_a_payload_is_refused(tmp_path, kind):
    marker = tmp_path / "ran"
    state = build_clip(model_name="RegionSpot-Tiny-CLIP").state_dict()
    path = _write_payload(tmp_path / "clip.pt", {"state_dict": state}, marker, kind)
    _refused(lambda p: build_clip(model_name="RegionSpot-Tiny-CLIP", checkpoint=str(p)), path, marker)


def _release_content(tiny_config: RegionSpotConfig) -> dict:
    """detectron2's layout of a RegionSpot release for the tiny model: model.to_clip / decoder / projector."""
    adapter = build_regionspot(tiny_config).adapter.state_dict()
    renamed = {"input_proj.": "to_clip.", "output_proj.": "projector."}
    state = {}
    for key, tensor in adapter.items():
        for ours, theirs in renamed.items():
            key = theirs + key.removeprefix(ours) if key.startswith(ours) else key
        state[f"model.{key}"] = tensor
    return {"model": state}


@pytest.mark.parametrize("kind", PAYLOAD_FORMATS)
def test_regionspot_release_with_a_payload_is_refused_by_build_and_export(tmp_path, kind, tiny_config):
    from regionspot.training.export import export_adapter

    marker = tmp_path / "ran"
    path = _write_payload(tmp_path / "model_final.pth", _release_content(tiny_config), marker, kind)
    config = RegionSpotConfig.from_dict({**tiny_config.to_dict(), "adapter": {"checkpoint": str(path)}})
    _refused(lambda p: build_regionspot(config), path, marker)
    _refused(lambda p: export_adapter(p, tmp_path / "a.safetensors", model_config=tiny_config), path, marker)


@pytest.mark.parametrize("kind", PAYLOAD_FORMATS[:3])
def test_training_checkpoint_with_a_payload_is_refused_by_export(tmp_path, kind, tiny_config):
    from regionspot.training.export import export_adapter, read_training_checkpoint
    from regionspot.training.module import CONFIG_KEY

    marker = tmp_path / "ran"
    adapter = build_regionspot(tiny_config).adapter.state_dict()
    content = {"state_dict": {f"model.adapter.{k}": v for k, v in adapter.items()}, CONFIG_KEY: tiny_config.to_dict()}
    path = _write_payload(tmp_path / "last.ckpt", content, marker, kind)
    _refused(read_training_checkpoint, path, marker)
    _refused(lambda p: export_adapter(p, tmp_path / "a.safetensors"), path, marker)
    with pytest.raises(
        CheckpointMismatchError, match=r"last\.ckpt holds more than weights .*nothing of it was executed"
    ):
        read_training_checkpoint(path)


def test_resume_and_load_from_checkpoint_refuse_a_payload(tmp_path, tiny_config):
    """`train.py fit --ckpt_path` (Lightning's strategy.load_checkpoint) and RegionSpotModule.load_from_checkpoint."""
    from lightning.pytorch import Trainer

    from regionspot.training.module import CONFIG_KEY, RegionSpotModule

    marker = tmp_path / "ran"
    path = _write_payload(tmp_path / "last.ckpt", {"state_dict": {}, CONFIG_KEY: tiny_config.to_dict()}, marker, "zip")
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    _refused(trainer.strategy.load_checkpoint, path, marker, error=pickle.UnpicklingError)
    _refused(RegionSpotModule.load_from_checkpoint, path, marker, error=pickle.UnpicklingError)


def test_every_torch_load_in_the_package_is_weights_only():
    """A static check, so that a new loader cannot forget it: torch.load(..., weights_only=True), no pickle.load."""
    calls = 0
    for source in Path("regionspot").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            if owner == "pickle" and node.func.attr in ("load", "loads"):
                pytest.fail(f"{source}:{node.lineno} unpickles with pickle.{node.func.attr}")
            if owner == "torch" and node.func.attr == "load":
                calls += 1
                flags = {k.arg: k.value for k in node.keywords}
                weights_only = flags.get("weights_only")
                assert isinstance(weights_only, ast.Constant) and weights_only.value is True, f"{source}:{node.lineno}"
    assert calls >= 2  # checkpoint.load_torch_file and the training module's


def test_adapters_and_caption_decoders_are_safetensors_and_load_without_torch_load(tmp_path, tiny_config, monkeypatch):
    from regionspot.config import CaptionConfig
    from regionspot.training.export import save_adapter

    config = RegionSpotConfig.from_dict(tiny_config.to_dict())
    config.caption = CaptionConfig(depth=1, width=32, num_heads=2, mlp_dim=64, max_length=8, token_ids=[1, 2, 3])
    model = build_regionspot(config)
    weights, yaml_path = save_adapter(
        model.adapter.state_dict(), config, tmp_path / "adapter.safetensors",
        caption_decoder=model.caption_decoder.state_dict(),
    )  # fmt: skip
    for path in (weights, tmp_path / "caption_decoder.safetensors"):
        with safe_open(str(path), framework="pt") as file:  # a safetensors header, no pickle
            assert len(list(file.keys())) > 0

    def no_pickles(*args, **kwargs):
        raise AssertionError("an adapter or caption decoder was read through torch.load")

    monkeypatch.setattr(torch, "load", no_pickles)
    rebuilt = build_regionspot(yaml_path)
    assert all(
        torch.equal(a, b)
        for a, b in zip(rebuilt.adapter.state_dict().values(), model.adapter.state_dict().values(), strict=True)
    )


def test_a_truncated_safetensors_adapter_is_a_clear_error(tmp_path, tiny_config):
    from regionspot.training.export import save_adapter

    weights, yaml_path = save_adapter(
        build_regionspot(tiny_config).adapter.state_dict(), tiny_config, tmp_path / "a.safetensors"
    )
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointMismatchError, match=r"cannot read .*a\.safetensors as safetensors"):
        build_regionspot(yaml_path)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"adapter": {"depth": "two"}}, r"adapter\.depth must be an integer, got 'two' \(str\)"),
        ({"adapter": {"depth": [2]}}, r"adapter\.depth must be an integer, got \[2\]"),
        ({"adapter": {"depth": 2.5}}, r"adapter\.depth must be an integer"),
        ({"adapter": {"dropout": "0.1"}}, r"adapter\.dropout must be a number"),
        ({"adapter": {"num_heads": True}}, r"adapter\.num_heads must be an integer, got True"),
        ({"sam": {"multimask": "false"}}, r"sam\.multimask must be true or false, got 'false'"),
        ({"sam": {"prompt_batch_size": None}}, r"sam\.prompt_batch_size must be an integer, got None"),
        ({"sam": {"checkpoint": 5}}, r"sam\.checkpoint must be a string or null, got 5"),
        ({"clip": {"model_name": ["ViT-B-16"]}}, r"clip\.model_name must be a string"),
        ({"caption": {"token_ids": [1, "two"]}}, r"caption\.token_ids must be a list of integers or null"),
        ({"caption": {"token_ids": "1,2"}}, r"caption\.token_ids must be a list of integers or null"),
        ({"caption": {"num_beams": {"n": 2}}}, r"caption\.num_beams must be an integer"),
    ],
)
def test_a_model_config_with_a_wrong_type_is_refused_by_name(tmp_path, section, message):
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(resolve_config(TINY).read_text()), **section}))
    with pytest.raises(TypeError, match=message):
        RegionSpotConfig.from_yaml(path)


def test_a_model_config_with_an_unknown_key_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['depht'\] in adapter"):
        RegionSpotConfig.from_dict({"adapter": {"depht": 2}})
    with pytest.raises(ValueError, match="must be a mapping"):
        RegionSpotConfig.from_dict(["sam", "clip"])


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("--model.model_config.adapter.depth=two", "model.model_config.adapter.depth"),
        ("--model.model_config.adapter.depht=2", "model.model_config.adapter.depht"),
    ],
)
def test_a_train_config_with_a_wrong_type_or_unknown_key_is_refused_by_name(override, named, capsys):
    from regionspot.training.cli import RegionSpotCLI

    with pytest.raises(SystemExit) as exit_info:
        RegionSpotCLI(args=["fit", "--config", "tiny", override, "--print_config"])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err
