"""Training that survives its own failures: NaN/inf steps skipped and counted (and a stop after too many in a row),
checkpoints written atomically (a failed or killed write leaves the previous one whole), and the adapter's attention
in linear memory without a global switch."""

from __future__ import annotations

import csv
import pickle
import signal
from pathlib import Path

import killable
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)
from test_training import adapter_state, make_data, make_module, make_trainer

from regionspot import RegionSpotPredictor
from regionspot.commands.train import main
from regionspot.data.toy import write_colour_boxes
from regionspot.modeling.adapter import RegionFusionAdapter, RegionSelfAttention
from regionspot.training.fault_tolerance import (
    BAD_STEPS_KEY,
    PARTIAL_SUFFIX,
    AtomicCheckpointIO,
    UnreadableCheckpointError,
)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    val = write_colour_boxes(root, num_images=4, seed=1, split="val")
    return {"train": write_colour_boxes(root, num_images=16), "val": val}


class Poison(L.Callback):
    """Makes a gradient infinite at some steps; keeps the adapter as it is after every step."""

    def __init__(self, *, inf_grad: set[int]) -> None:
        self.inf_grad = inf_grad
        self.after_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step in self.inf_grad:
            pl_module.model.adapter.output_proj.weight.grad[0, 0] = float("inf")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after_step[trainer.global_step] = adapter_state(pl_module)


def poisoned_module(monkeypatch, nan_steps: set[int], **kwargs):
    """A module whose naming losses are NaN at `nan_steps`."""
    module = make_module(**kwargs)
    naming_losses = module.objective._naming_losses

    def losses(*args):
        focal, softmax = naming_losses(*args)
        poison = float("nan") if module.global_step in nan_steps else 1.0
        return focal * poison, softmax * poison

    monkeypatch.setattr(module.objective, "_naming_losses", losses)
    return module


def test_nan_loss_and_inf_gradient_steps_are_skipped_counted_and_training_goes_on(toy_data, tmp_path, monkeypatch):
    module, poison = poisoned_module(monkeypatch, nan_steps={2}), Poison(inf_grad={5})
    logger = CSVLogger(tmp_path)
    trainer = make_trainer(tmp_path, max_steps=8, callbacks=[poison], logger=logger, log_every_n_steps=1)
    trainer.fit(module, make_data(toy_data))
    assert trainer.global_step == 8 and float(trainer.callback_metrics["train/skipped_steps"]) == 2.0
    states = poison.after_step  # states[k]: the adapter after k steps
    for bad in (2, 5):  # the steps read batches 2 and 5, and changed nothing
        assert all(torch.equal(states[bad + 1][k], states[bad][k]) for k in states[bad]), bad
    assert not torch.equal(states[4]["output_proj.weight"], states[3]["output_proj.weight"])
    assert all(torch.isfinite(v).all() for v in states[8].values())
    adamw = trainer.optimizers[0].state[module.model.adapter.output_proj.weight]
    assert int(adamw["step"]) == 6  # AdamW's moments moved on the six good steps only
    rows = list(csv.DictReader((Path(logger.log_dir) / "metrics.csv").open()))
    assert [float(r["train/skipped_steps"]) for r in rows if r.get("train/skipped_steps")] == [0, 0, 1, 1, 1, 2, 2, 2]


def test_the_nan_stop_advice_works_a_lower_lr_on_resume_applies_and_the_message_names_the_setting(
    toy_data, tmp_path, monkeypatch
):
    """The stop message says to rerun with a lower --model.lr and --ckpt_path: done so, the run continues at the
    lower rate with the whole allowance of bad steps (it went on at the checkpoint's rate before, and stopped at
    its first bad step saying max_bad_steps_in_a_row=4 where the setting was 3)."""
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=1000, save_last=True)
    module = poisoned_module(monkeypatch, nan_steps=set(range(3, 6)), max_bad_steps_in_a_row=3)
    trainer = make_trainer(tmp_path, max_steps=20, enable_checkpointing=True, callbacks=[checkpoints])
    with pytest.raises(RuntimeError, match=r"max_bad_steps_in_a_row=3\)") as error:
        trainer.fit(module, make_data(toy_data))
    assert "--model.lr=0.0003" in str(error.value) and "--ckpt_path" in str(error.value)
    resumed = poisoned_module(monkeypatch, nan_steps={6, 7}, max_bad_steps_in_a_row=3, lr=3e-4, weight_decay=0.05)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=1000, save_last=True)
    trainer = make_trainer(tmp_path, max_steps=9, enable_checkpointing=True, callbacks=[checkpoints])
    trainer.fit(resumed, make_data(toy_data), ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    (group,) = scheduler.optimizer.param_groups
    assert scheduler.base_lrs == [3e-4] and group["weight_decay"] == 0.05
    assert group["lr"] == pytest.approx(3e-4 * scheduler.lr_lambdas[0](scheduler.last_epoch))
    assert trainer.global_step == 9 and resumed.guard.bad_steps.skipped == 5


def test_the_schedule_given_on_resume_replaces_the_checkpoints(toy_data, tmp_path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=1000, save_last=True)
    trainer = make_trainer(tmp_path, max_steps=2, enable_checkpointing=True, callbacks=[checkpoints])
    trainer.fit(make_module(lr_milestones=[100]), make_data(toy_data))
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=1000, save_last=True)
    trainer = make_trainer(tmp_path, max_steps=4, enable_checkpointing=True, callbacks=[checkpoints])
    module = make_module(lr_milestones=[3], lr_gamma=0.5, warmup_steps=0)
    trainer.fit(module, make_data(toy_data), ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(3e-3 * 0.5)  # step 4: past milestone 3


def test_too_many_bad_steps_in_a_row_stop_with_a_clear_message_and_a_checkpoint(toy_data, tmp_path, monkeypatch):
    module = poisoned_module(monkeypatch, nan_steps=set(range(3, 100)), max_bad_steps_in_a_row=3)
    poison = Poison(inf_grad=set())
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=1000, save_last=True)
    trainer = make_trainer(tmp_path, max_steps=20, enable_checkpointing=True, callbacks=[poison, checkpoints])
    with pytest.raises(RuntimeError, match=r"the 3 optimizer steps before step 6 .* NaN or infinite") as error:
        trainer.fit(module, make_data(toy_data))
    saved_path = tmp_path / "checkpoints" / "last.ckpt"
    assert str(saved_path) in str(error.value) and "--ckpt_path" in str(error.value)
    saved = AtomicCheckpointIO().load_checkpoint(saved_path)
    assert saved["global_step"] == 6 and saved[BAD_STEPS_KEY] == {"skipped": 3, "in_a_row": 3}
    weights = {k.removeprefix("model.adapter."): v for k, v in saved["state_dict"].items()}
    assert all(torch.equal(weights[k], v) for k, v in poison.after_step[3].items())  # those before the bad steps


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    checkpoint_io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    checkpoint_io.save_checkpoint({"step": 1, "weights": torch.ones(4)}, path)
    before = path.read_bytes()

    def half_then_full_disk(obj, file) -> None:
        file.write(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_full_disk)
    with pytest.raises(OSError, match="No space"):
        checkpoint_io.save_checkpoint({"step": 2, "weights": torch.zeros(4)}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_kill_9_while_writing_leaves_the_previous_checkpoint_whole(tmp_path):
    path, started = tmp_path / "last.ckpt", tmp_path / "writing"
    process = killable.start_checkpoint_writes(str(path), str(started))
    killable.wait_until(started.exists, process)  # half of the second checkpoint is on disk
    assert killable.kill(process) == -signal.SIGKILL
    partial = path.with_name(f".last.ckpt{PARTIAL_SUFFIX}")
    assert partial.is_file() and not partial.name.endswith(".ckpt")  # never taken for a `last` checkpoint
    kept = AtomicCheckpointIO().load_checkpoint(path)
    assert kept["version"] == 1 and torch.equal(kept["weights"], torch.arange(killable.CHECKPOINT_NUMBERS) * 1.0)
    AtomicCheckpointIO().save_checkpoint({"version": 3}, path)  # the next save takes the partial file's place
    assert AtomicCheckpointIO().load_checkpoint(path) == {"version": 3} and not partial.exists()


def test_resuming_reads_checkpoints_with_weights_only(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (print, ("this checkpoint ran code",))

    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode()}, path)
    with pytest.raises(UnreadableCheckpointError, match=r"it pickles print, which could run code") as error:
        AtomicCheckpointIO().load_checkpoint(path)
    assert isinstance(error.value.__cause__, pickle.UnpicklingError)


@pytest.mark.parametrize("content", ["pickle", "garbage", "truncated"])
def test_resuming_from_an_unreadable_or_pickle_bearing_checkpoint_is_one_line(content, toy_data, tmp_path):
    """train.py fit --ckpt_path <bad file>: one line naming the file and what to do, no traceback (a bare
    UnpicklingError traceback before)."""

    class RunsCode:
        def __reduce__(self):
            return (print, ("this checkpoint ran code",))

    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode() if content == "pickle" else 1}, path)
    if content == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif content == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    train_ann, images = toy_data["train"]
    data = [f"--data.train.toy.ann_file={train_ann}", f"--data.train.toy.image_dir={images}",
            f"--data.val.ann_file={train_ann}", f"--data.val.image_dir={images}"]  # fmt: skip
    args = ["fit", "--config=tiny", *data, f"--trainer.default_root_dir={tmp_path / 'run'}",
            "--trainer.max_steps=2", f"--ckpt_path={path}"]  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        main(args)
    message = str(stopped.value)
    assert message.startswith(f"error: cannot resume from {path}: ") and "\n" not in message, message


def test_adapter_attention_runs_in_linear_memory_without_a_global_switch(tiny_model, image, monkeypatch):
    torch.manual_seed(0)
    adapter = RegionFusionAdapter(token_dim=16, width=32, output_dim=24, depth=2, num_heads=2, ffn_dim=64).eval()
    assert all(isinstance(layer.self_attn, RegionSelfAttention) for layer in adapter.decoder.layers)
    regions, clip_tokens = torch.randn(2, 40, 16), torch.randn(2, 9, 32)
    padding = torch.arange(40)[None] >= torch.tensor([[40], [25]])
    reference = RegionFusionAdapter(token_dim=16, width=32, output_dim=24, depth=2, num_heads=2, ffn_dim=64).eval()
    for layer in reference.decoder.layers:  # plain nn.MultiheadAttention with the same weights
        plain = torch.nn.MultiheadAttention(32, 2, batch_first=True)
        plain.load_state_dict(layer.self_attn.state_dict())
        layer.self_attn = plain
    reference.load_state_dict(adapter.state_dict())
    with torch.no_grad():
        ours = adapter(regions, clip_tokens, padding)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            expected = reference(regions, clip_tokens, padding)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    assert torch.equal(ours, expected)  # what the predictor's global switch used to give
    monkeypatch.setattr(torch.backends.mha, "set_fastpath_enabled", _refuse)
    predictor = RegionSpotPredictor(tiny_model)
    predictor.set_image(image)
    assert len(predictor.predict(vocabulary=["red", "blue"], boxes=[[30, 20, 90, 60]])) == 1


def _refuse(enabled: bool) -> None:
    raise AssertionError("nothing may flip torch's global attention switch")
