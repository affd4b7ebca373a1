"""train.py killed (SIGKILL at random moments), pre-empted (SIGTERM) or requeued by SLURM, then resumed: the run
ends with exactly the adapter, and the optimizer state, of a run never interrupted.

The tiny config on the toy set, with what could make a resumed run drift: adapter dropout (torch's generator),
random flips and crops (numpy's), epochs of 5 steps (resumed mid-epoch and at epoch ends), validation every 6
steps. The frozen-feature cache stays off: a resumed run recomputes its misses in other batches, whose last bits
differ (regionspot.training.module, `frozen_cache_size`).
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import killable
import pytest
import torch
import yaml
from safetensors.torch import load_file
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)

from regionspot.commands.train import main
from regionspot.configs import config_names, resolve_config
from regionspot.data.toy import write_colour_boxes
from regionspot.training.cli import RegionSpotCLI
from regionspot.training.fault_tolerance import AtomicCheckpointIO

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
MAX_STEPS = 16
EVERY_STEP = {"every_n_train_steps": 1, "save_last": True}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("toy")
    train_ann, images = write_colour_boxes(root, num_images=24)
    val_ann, _ = write_colour_boxes(root, num_images=4, seed=1, split="val")
    return {"train": str(train_ann), "val": str(val_ann), "images": str(images)}


def fit_args(run: Path, toy: dict[str, str], *, checkpoints: dict, max_steps: int = MAX_STEPS) -> list[str]:
    """`train.py fit` on the tiny config, checkpoints in `run`/checkpoints, resuming from `last` when there is one."""
    override = {
        "model": {"frozen_cache_size": 0},
        "data": {
            "train": {"toy": {"ann_file": toy["train"], "image_dir": toy["images"]}},
            "val": {"ann_file": toy["val"], "image_dir": toy["images"]},
            "batches_per_epoch": 5,
            "augment": {"short_edges": [], "flip_prob": 0.5, "crop_prob": 0.3},
        },
        "trainer": {
            "max_steps": max_steps,
            "val_check_interval": 6,
            "limit_val_batches": 1,
            "log_every_n_steps": 1,
            "default_root_dir": str(run),
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(run / "checkpoints"), **checkpoints},
                }
            ],
        },
    }
    run.mkdir(parents=True, exist_ok=True)
    (run / "override.yaml").write_text(json.dumps(override))
    return [
        "fit",
        "--config=tiny",
        f"--config={run / 'override.yaml'}",
        "--model.model_config.adapter.dropout=0.1",
        "--ckpt_path=last",
    ]


def trained_tensors(run: Path) -> dict[str, torch.Tensor]:
    """The exported adapter, and AdamW's moments and step counts from the last checkpoint."""
    tensors = load_file(run / "adapter.safetensors")
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    for index, state in last["optimizer_states"][0]["state"].items():
        tensors.update({f"adamw.{index}.{name}": value for name, value in state.items()})
    return tensors


def assert_equal_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    unequal = [name for name in expected if not torch.equal(actual[name], expected[name])]
    assert not unequal, f"{len(unequal)} of {len(expected)} trained tensors differ, e.g. {unequal[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(toy, tmp_path_factory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("uninterrupted")
    main(fit_args(run, toy, checkpoints=EVERY_STEP))
    return trained_tensors(run)


def test_kill_9_at_random_moments_then_resuming_gives_the_uninterrupted_run(toy, uninterrupted, tmp_path, capsys):
    run = tmp_path / "killed"
    args, checkpoints = fit_args(run, toy, checkpoints=EVERY_STEP), run / "checkpoints"
    rng = random.Random(18)
    resumed_from = []
    for _ in range(3):
        resumed_from.append(killable.latest_step(checkpoints))
        target = min(resumed_from[-1] + rng.randint(1, 4), MAX_STEPS - 8)  # room for the sleep on a fast machine
        process = killable.start_training(args)
        killable.wait_until(lambda: killable.latest_step(checkpoints) >= target, process)  # noqa: B023
        # Anywhere in the next step or so: reading data, forward, backward, validation, a checkpoint half-written.
        time.sleep(rng.uniform(0.0, 0.2))
        assert killable.kill(process) == -signal.SIGKILL
    resumed_from.append(killable.latest_step(checkpoints))
    main(args)  # to the end, in this process
    assert_equal_tensors(trained_tensors(run), uninterrupted)
    assert sorted(resumed_from) == resumed_from and resumed_from[-1] < MAX_STEPS
    with capsys.disabled():
        print(f"\n3 kills survived; the runs resumed at steps {resumed_from[1:]} (epochs of 5 steps)")


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_ends_as_the_uninterrupted_one(toy, uninterrupted, tmp_path):
    run = tmp_path / "preempted"
    # No `last` checkpoint but the one SIGTERM writes: the step files only show how far the run got.
    args = fit_args(run, toy, checkpoints={"every_n_train_steps": 1, "save_top_k": -1, "save_last": False})
    process = killable.start_training(args)
    killable.wait_until(lambda: killable.latest_step(run / "checkpoints") >= 6, process)
    assert killable.kill(process, signal.SIGTERM) == 128 + signal.SIGTERM  # exits as terminated, not as done
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == killable.latest_step(run / "checkpoints") < MAX_STEPS  # the step it finished
    assert not (run / "adapter.safetensors").exists()  # a pre-empted run exports nothing
    main(args)
    assert_equal_tensors(load_file(run / "adapter.safetensors"), adapter_only(uninterrupted))


def adapter_only(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value for name, value in tensors.items() if not name.startswith("adamw.")}


def slurm_job(tmp_path: Path, monkeypatch) -> Path:
    """SLURM's variables of job 4242, and a stand-in for `scontrol` that appends its arguments to the file returned."""
    bin_dir, requests = tmp_path / "bin", tmp_path / "scontrol.txt"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {requests}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "regionspot", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}  # fmt: skip
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    return requests


def test_slurm_requeue_through_lightnings_plugin_saves_requeues_and_resumes(toy, tmp_path, monkeypatch):
    """The packaged slurm config under SLURM's variables, with a stand-in for `scontrol`: SIGUSR1 reaches Lightning's
    own handler, which writes hpc_ckpt_1.ckpt (through AtomicCheckpointIO) and asks for the requeue; the requeued
    job, the same command, starts from that checkpoint by itself."""
    requests = slurm_job(tmp_path, monkeypatch)
    run = tmp_path / "slurm"
    args = [*fit_args(run, toy, checkpoints=EVERY_STEP, max_steps=5)[:-1], "--config=slurm"]  # no ckpt

    def fit(signal_at: int) -> RegionSpotCLI:
        callback = {"class_path": "killable.SignalAt", "init_args": {"step": signal_at}}
        return RegionSpotCLI(args=[*args, f"--trainer.callbacks+={json.dumps(callback)}"])

    first = fit(signal_at=3)
    sender = next(c for c in first.trainer.callbacks if isinstance(c, killable.SignalAt))
    assert type(first.trainer._accelerator_connector.cluster_environment).__name__ == "SLURMEnvironment"
    assert any("slurm_sigusr" in getattr(h, "__name__", "") for h in sender.handler.signal_handlers)
    assert isinstance(first.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert requests.read_text().split() == ["requeue", "4242"]
    assert torch.load(run / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == 3

    requeued = fit(signal_at=-1)
    restarted = next(c for c in requeued.trainer.callbacks if isinstance(c, killable.SignalAt))
    assert restarted.started_at == [3] and requeued.trainer.global_step == 5


TRAINING_CONFIGS = sorted(name for name in config_names("training") if name.startswith(("tiny", "stage")))


def swapped_in(run: Path, toy: dict[str, str]) -> dict:
    """What a shipped training config reads, but its checkpoints folder: tiny backbones, the toy set, one CPU."""
    model_config = yaml.safe_load(resolve_config("tiny").read_text())
    model_config["adapter"]["checkpoint"] = None  # stage 2 starts from stage 1's adapter: a config merges into it
    return {
        "model": {"model_config": model_config, "frozen_cache_size": 0},
        "data": {
            "train": {"toy": {"ann_file": toy["train"], "image_dir": toy["images"]}},
            "val": {"ann_file": toy["val"], "image_dir": toy["images"]},
            "val_name": "toy_val", "batch_size": 2, "val_batch_size": 2, "num_workers": 0, "max_regions": 8,
            "augment": {"short_edges": [], "max_size": 160},
        },
        "trainer": {
            "accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "precision": "32-true",
            "max_steps": 4, "limit_val_batches": 0, "log_every_n_steps": 1, "default_root_dir": str(run),
            "enable_progress_bar": False, "enable_model_summary": False,
        },
        "logging": {"wandb": False},
    }  # fmt: skip


def signal_at(step: int, signum: int = int(signal.SIGTERM)) -> str:
    return "--trainer.callbacks+=" + json.dumps(
        {"class_path": "killable.SignalAt", "init_args": {"step": step, "signum": signum}}
    )


def started_at(cli: RegionSpotCLI) -> list[int]:
    return next(c for c in cli.trainer.callbacks if isinstance(c, killable.SignalAt)).started_at


@pytest.mark.parametrize("config", TRAINING_CONFIGS)
def test_every_shipped_training_config_continues_from_its_checkpoint_with_the_same_command(config, toy, tmp_path):
    """Pre-empted at step 2 (SIGTERM: a `last` checkpoint of step 2), then the same command plus --ckpt_path last,
    with the config's own ModelCheckpoint and logger: the run starts at step 2, not 0, ends at max_steps, and its
    metrics.csv holds each step once."""
    run = tmp_path / "run"
    (tmp_path / "swap.yaml").write_text(json.dumps(swapped_in(run, toy)))
    args = ["fit", f"--config={config}", f"--config={tmp_path / 'swap.yaml'}"]
    with pytest.raises(SystemExit) as stopped:
        main([*args, signal_at(2)])
    assert stopped.value.code == 128 + signal.SIGTERM
    resumed = RegionSpotCLI(args=[*args, signal_at(-1), "--ckpt_path=last"])
    assert started_at(resumed) == [2] and resumed.trainer.global_step == 4
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert_logged_once(run, steps=4)  # one log, continued (not a logs/version_N per run)


@pytest.mark.parametrize("config", TRAINING_CONFIGS)
def test_every_shipped_training_config_under_slurm_continues_after_a_requeue(config, toy, tmp_path, monkeypatch):
    """The config plus the packaged slurm config as a SLURM job: SIGUSR1 at step 2 saves hpc_ckpt_1.ckpt and asks for
    the requeue; the requeued job, the same command, starts at step 2."""
    requests = slurm_job(tmp_path, monkeypatch)
    run = tmp_path / "run"
    (tmp_path / "swap.yaml").write_text(json.dumps(swapped_in(run, toy)))
    args = ["fit", f"--config={config}", f"--config={tmp_path / 'swap.yaml'}", "--config=slurm"]
    RegionSpotCLI(args=[*args, signal_at(2, int(signal.SIGUSR1))])
    assert requests.read_text().split() == ["requeue", "4242"]
    requeued = RegionSpotCLI(args=[*args, signal_at(-1)])
    assert started_at(requeued) == [2] and requeued.trainer.global_step == 4
    assert_logged_once(run, steps=4)  # the first job's rows of steps 2 and 3 dropped, logged again


def test_old_step_checkpoints_are_pruned_as_configured_across_a_resume(toy, tmp_path):
    """ModelCheckpoint(every_n_train_steps=1), save_top_k at its default 1: one step checkpoint stays, resumed or
    not (each run kept its own folder before, so the pruning never saw the earlier run's files)."""
    run = tmp_path / "run"
    swap = swapped_in(run, toy)
    swap["trainer"] |= {"max_steps": 6, "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"every_n_train_steps": 1, "save_last": True}}]}  # fmt: skip
    (tmp_path / "swap.yaml").write_text(json.dumps(swap))
    args = ["fit", "--config=tiny", f"--config={tmp_path / 'swap.yaml'}"]
    with pytest.raises(SystemExit):
        main([*args, signal_at(3)])
    main([*args, "--ckpt_path=last"])
    steps = sorted(p.relative_to(run).as_posix() for p in run.rglob("*step=*.ckpt"))
    assert steps == ["checkpoints/epoch=0-step=6.ckpt"]


@pytest.mark.parametrize("resume_from", ["last", "path"])
def test_optimizer_settings_given_on_resume_apply_through_train_py(resume_from, toy, tmp_path, caplog):
    """`--model.lr` and `--model.weight_decay` on resume: LightningCLI put the checkpoint's back over them and
    Lightning restored the checkpoint's optimizer, so the run went on at the old rate; now the rate at the resumed
    step is the new base rate times the schedule, and the log says so."""
    run = tmp_path / "run"
    (tmp_path / "swap.yaml").write_text(json.dumps(swapped_in(run, toy)))
    args = ["fit", "--config=tiny", f"--config={tmp_path / 'swap.yaml'}"]
    with pytest.raises(SystemExit):
        main([*args, signal_at(2)])
    # "last", or the path the NaN stop names (with a path LightningCLI also put the checkpoint's settings back)
    ckpt = "last" if resume_from == "last" else str(run / "checkpoints" / "last.ckpt")
    with caplog.at_level("INFO"):
        resumed = RegionSpotCLI(args=[*args, "--model.lr=1e-4", "--model.weight_decay=0.05", f"--ckpt_path={ckpt}"])
    scheduler = resumed.trainer.lr_scheduler_configs[0].scheduler
    (group,) = scheduler.optimizer.param_groups
    assert resumed.model.hparams.lr == 1e-4 and scheduler.base_lrs == [1e-4] and group["weight_decay"] == 0.05
    assert group["lr"] == pytest.approx(1e-4 * scheduler.lr_lambdas[0](scheduler.last_epoch))
    assert "resumed at step 2 with model.lr 0.002 -> 0.0001, model.weight_decay 0.0001 -> 0.05" in caplog.text


def logged(run: Path) -> list[dict[str, str]]:
    """The rows of the run's metrics.csv (whole lines only), without the throughput (a measured time)."""
    path = run / "logs" / "metrics.csv"
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    rows = csv.DictReader(line for line in lines if line.endswith("\n"))
    return [{k: v for k, v in row.items() if k != "train/images_per_sec"} for row in rows]


def logged_steps(run: Path) -> list[int]:
    return [int(row["step"]) for row in logged(run)]


def assert_logged_once(run: Path, *, steps: int) -> None:
    """The run's metrics.csv holds steps 0 to `steps` - 1 in order, each with as many rows (a config that adds a
    LearningRateMonitor logs two a step)."""
    logged = logged_steps(run)
    assert logged == sorted(logged) and set(logged) == set(range(steps)), logged
    assert len(set(Counter(logged).values())) == 1, logged


def test_a_run_killed_past_its_checkpoint_and_resumed_logs_one_run_equal_to_an_uninterrupted_one(toy, tmp_path):
    """The shipped configs' checkpointing (a `last` checkpoint after each validation, here every 6 steps), a kill -9
    two steps past the checkpoint of step 6, the same command: <root>/logs/metrics.csv continues, its rows of steps 6
    and 7 (trained again) are dropped, and it ends with the rows of an uninterrupted run, value for value."""
    at_validation = {"save_last": True}
    main(fit_args(tmp_path / "whole", toy, checkpoints=at_validation))
    run = tmp_path / "killed"
    args = fit_args(run, toy, checkpoints=at_validation)
    process = killable.start_training(args)
    killable.wait_until(lambda: max(logged_steps(run), default=-1) >= 8, process)
    assert killable.kill(process) == -signal.SIGKILL
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert max(logged_steps(run)) >= 8  # rows of the steps the resumed run trains again
    main(args)
    whole = logged(tmp_path / "whole")
    assert logged_steps(run) == [int(row["step"]) for row in whole] and logged(run) == whole
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["config.yaml", "hparams.yaml", "metrics.csv"]


def test_a_fresh_fit_into_a_root_holding_a_run_refuses_in_one_line_and_restart_starts_afresh(toy, tmp_path):
    run = tmp_path / "run"
    (tmp_path / "swap.yaml").write_text(json.dumps(swapped_in(run, toy)))
    args = ["fit", "--config=tiny", f"--config={tmp_path / 'swap.yaml'}"]
    main(args)
    first, checkpoints = logged(run), sorted((run / "checkpoints").iterdir())
    with pytest.raises(SystemExit) as refused:
        main(args)
    message = str(refused.value.code)
    assert message.startswith(f"error: {run} holds an earlier run (") and "\n" not in message
    assert "--ckpt_path last" in message and "--restart" in message
    assert logged(run) == first and sorted((run / "checkpoints").iterdir()) == checkpoints  # untouched
    main([*args, "--restart"])
    assert logged_steps(run) == [int(row["step"]) for row in first]  # one run's rows, not two runs'


def _training_with_stuck_workers(args: list[str], reading: str) -> None:
    """train.py with 2 loader workers, each stuck for a minute in its first image (a huge file, a stalled network
    file system)."""
    from regionspot.data import detection

    torch.set_num_threads(1)
    decode = detection._decode

    def stuck(read_image, source):
        Path(reading, str(os.getpid())).touch()
        time.sleep(60)
        return decode(read_image, source)

    detection._decode = stuck
    main(args)


def test_kill_9_of_the_trainer_leaves_no_loader_worker_behind(toy, tmp_path):
    reading = tmp_path / "reading"
    reading.mkdir()
    (tmp_path / "swap.yaml").write_text(json.dumps(swapped_in(tmp_path / "run", toy)))
    args = ["fit", "--config=tiny", f"--config={tmp_path / 'swap.yaml'}", "--data.num_workers=2"]
    process, workers = killable.start_with_stuck_workers(_training_with_stuck_workers, (args, str(reading)), reading)
    survivors = killable.survivors_of_kill_9(process, workers)
    assert not survivors, f"{len(survivors)} of {len(workers)} loader workers outlived the trainer"


def test_a_resumed_fit_logs_to_the_same_offline_wandb_run(toy, tmp_path, monkeypatch):
    """wandb offline (no network): the pre-empted run and its resume log to offline runs of one id, the id kept in
    logs/wandb_run_id (a resume that started a new wandb run would add a folder of another id)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    swap = swapped_in(run, toy) | {"logging": {"wandb": True, "offline": True}}
    (tmp_path / "swap.yaml").write_text(json.dumps(swap))
    args = ["fit", "--config=tiny", f"--config={tmp_path / 'swap.yaml'}"]
    with pytest.raises(SystemExit):
        main([*args, signal_at(2)])
    main([*args, "--ckpt_path=last"])
    run_id = (run / "logs" / "wandb_run_id").read_text().strip()
    # A folder per run, named by its start time to the second and its id (the two may share one).
    offline_runs = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert offline_runs and all(name.endswith(f"-{run_id}") for name in offline_runs), offline_runs
