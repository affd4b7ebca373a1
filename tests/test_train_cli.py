"""train.py: every shipped config parses, `fit` on the tiny config writes the adapter, `export` matches it."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from safetensors.torch import load_file
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)

from regionspot import RegionSpotConfig
from regionspot.commands.train import export_main
from regionspot.configs import KINDS
from regionspot.data.toy import write_colour_boxes
from regionspot.training import ValidationScores
from regionspot.training.cli import LoggingConfig, RegionSpotCLI, build_loggers
from regionspot.training.run_logs import ContinuedCSVLogger

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
TRAIN_CONFIGS = sorted(p for p in KINDS["training"].glob("*.yaml") if p.name != "fsdp.yaml")
BACKBONE_PAIRS = ("bb", "bl", "bl336")


def parsed(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        RegionSpotCLI(args=["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_configs_are_shipped():
    names = {p.stem for p in TRAIN_CONFIGS}
    assert {"tiny"} | {f"stage{s}_{pair}" for s in (1, 2) for pair in BACKBONE_PAIRS} <= names


@pytest.mark.parametrize("pair", BACKBONE_PAIRS)
def test_stage_configs_follow_the_regionspot_recipe(pair, capsys):
    stage1 = parsed(capsys, "--config", f"stage1_{pair}")
    stage2 = parsed(capsys, "--config", f"stage2_{pair}")
    for config in (stage1, stage2):
        model, data, trainer = config["model"], config["data"], config["trainer"]
        assert RegionSpotConfig.from_dict(model["model_config"]).sam.variant == "vit_b"  # validated and printed
        assert (model["lr"], model["weight_decay"], model["warmup_steps"]) == (2.5e-5, 1e-4, 1000)
        assert model["lr_milestones"] == [350_000, 420_000] and model["lr_gamma"] == 0.1
        assert (model["focal_alpha"], model["focal_gamma"]) == (0.25, 2.0) and model["loss_reduction"] == "images"
        clip = RegionSpotConfig.from_dict(model["model_config"]).clip
        assert clip == RegionSpotConfig.from_yaml(f"regionspot_{pair}").clip  # stage 2 alike
        assert data["batch_size"] * trainer["devices"] * trainer["num_nodes"] == 16
        assert trainer["max_steps"] == 450_000 and trainer["gradient_clip_val"] == 1.0
        assert trainer["precision"] == "bf16-mixed" and trainer["strategy"] == "ddp"
        assert trainer["use_distributed_sampler"] is False
    assert list(stage1["data"]["train"]) == ["objects365"]
    assert list(stage2["data"]["train"]) == ["objects365", "v3det", "openimages"]
    assert {d["ratio"] for d in stage2["data"]["train"].values()} == {1.0}
    stage1_export = Path(stage1["trainer"]["default_root_dir"]) / "adapter.safetensors"
    assert stage2["model"]["model_config"]["adapter"]["checkpoint"] == str(stage1_export)
    assert stage1["model"]["model_config"]["adapter"] == {
        **stage2["model"]["model_config"]["adapter"],
        "checkpoint": None,
    }


def test_paths_and_lengths_are_overridable_from_the_command_line(capsys):
    config = parsed(
        capsys,
        "--config",
        "stage2_bl",
        "--config",
        "fsdp",
        "--data.train.v3det.ann_file=/elsewhere/v3det.json",
        "--data.val.image_dir=/elsewhere/images",
        "--trainer.max_steps=10",
        "--trainer.val_check_interval=5",
    )
    assert config["data"]["train"]["v3det"]["ann_file"] == "/elsewhere/v3det.json"
    assert config["data"]["train"]["objects365"]["ann_file"].startswith("data/objects365")
    assert config["data"]["val"]["image_dir"] == "/elsewhere/images"
    assert (config["trainer"]["max_steps"], config["trainer"]["val_check_interval"]) == (10, 5)
    assert config["trainer"]["strategy"]["class_path"].endswith("FSDPStrategy")


def tiny_fit(tmp_path: Path, *, num_images: int, val_check_interval: int, options: list[str]) -> RegionSpotCLI:
    """`train.py fit` on the tiny config for 2 steps, on toy colour boxes drawn into tmp_path, run in tmp_path/run."""
    train_ann, images = write_colour_boxes(tmp_path / "data", num_images=num_images)
    val_ann, _ = write_colour_boxes(tmp_path / "data", num_images=4, seed=1, split="val")
    return RegionSpotCLI(
        args=[
            "fit",
            "--config=tiny",
            f"--data.train.toy.ann_file={train_ann}",
            f"--data.train.toy.image_dir={images}",
            f"--data.val.ann_file={val_ann}",
            f"--data.val.image_dir={images}",
            "--trainer.max_steps=2",
            f"--trainer.val_check_interval={val_check_interval}",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
            "--trainer.enable_model_summary=false",
            *options,
        ]
    )


def test_fit_on_the_tiny_config_writes_the_adapter_and_export_matches_it(tmp_path):
    options = ["--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false"]
    tiny_fit(tmp_path, num_images=12, val_check_interval=2, options=options)
    run = tmp_path / "run"
    adapter, model_yaml = run / "adapter.safetensors", run / "adapter.yaml"
    assert adapter.is_file() and RegionSpotConfig.from_yaml(model_yaml).adapter.checkpoint == str(adapter)
    log_dir = run / "logs"  # the same folder in every run of the command: a resumed run continues its metrics.csv
    rows = list(csv.DictReader((log_dir / "metrics.csv").open()))
    assert any(r.get("val/AP") for r in rows) and any(r.get("train/images_per_sec") for r in rows)
    export_main(["--ckpt", str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "exported.safetensors")])
    at_end, exported = load_file(adapter), load_file(tmp_path / "exported.safetensors")
    assert at_end.keys() == exported.keys() and all((at_end[k] == exported[k]).all() for k in at_end)


def test_fit_prints_each_validations_ap_as_a_table_and_shows_it_on_the_progress_bar(tmp_path, capsys):
    cli = tiny_fit(tmp_path, num_images=8, val_check_interval=1, options=["--trainer.logger=false"])
    printed = capsys.readouterr()
    ap = cli.trainer.callback_metrics["val/AP"]
    assert "val/AP" in cli.trainer.progress_bar_metrics and f"val/AP={ap:.3g}" in printed.err, printed.err  # the bar
    tables = [printed.out[printed.out.index(f"step {step}: validation AP (%)") :] for step in (1, 2)]
    header, row = tables[1].splitlines()[1:3]  # the last validation's table: its numbers are the logged ones
    scores = dict(zip(header.replace(" ", "").split("|"), row.replace(" ", "").split("|"), strict=True))
    assert {"AP", "AP50", "AP75"} <= scores.keys() and scores["AP"] == f"{100 * ap:.1f}", tables[1]


@pytest.mark.parametrize(
    ("rank", "fn", "printed"),
    [(0, TrainerFn.FITTING, True), (1, TrainerFn.FITTING, False), (0, TrainerFn.VALIDATING, False)],
)
def test_the_scores_table_is_printed_by_rank_zero_in_fit_only_with_the_heads_losses(rank, fn, printed, capsys):
    metrics = {"val/AP": torch.tensor(0.4125), "val/APr": torch.tensor(0.2), "val/caption_loss": torch.tensor(2.31)}
    trainer = SimpleNamespace(
        sanity_checking=False, is_global_zero=rank == 0, state=SimpleNamespace(fn=fn), global_step=7,
        callback_metrics={**metrics, "val/vqa_loss": torch.tensor(1.2), "train/loss": torch.tensor(0.5)},
    )  # fmt: skip
    ValidationScores().on_validation_end(trainer, None)
    out = capsys.readouterr().out
    if not printed:  # `validate` prints Lightning's own table
        assert out == ""
        return
    title, header, row, losses = out.splitlines()
    assert title == "step 7: validation AP (%)" and header.split() == ["AP", "|", "APr"], out
    assert row.split() == ["41.2", "|", "20.0"] and losses == "caption loss 2.310, vqa loss 1.200", out


def test_export_explains_a_wrong_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="training checkpoint not found"):
        export_main(["--ckpt", str(tmp_path / "missing.ckpt")])
    (tmp_path / "not.ckpt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        export_main(["--ckpt", str(tmp_path / "not.ckpt")])


def test_loggers_are_wandb_offline_with_a_csv_fallback(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    loggers = build_loggers(tmp_path, LoggingConfig(run_name="r"))
    assert [type(x) for x in loggers] == [ContinuedCSVLogger, WandbLogger]
    import os

    assert os.environ["WANDB_MODE"] == "offline"  # no network, no login prompt
    assert [type(x) for x in build_loggers(tmp_path, LoggingConfig(wandb=False))] == [ContinuedCSVLogger]
    assert [type(x) for x in build_loggers(tmp_path, LoggingConfig(wandb=False), fitting=False)] == [CSVLogger]
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert [type(x) for x in build_loggers(tmp_path, LoggingConfig())] == [ContinuedCSVLogger]


def test_a_resumed_fit_continues_the_wandb_run_and_a_fresh_one_starts_another(tmp_path, monkeypatch):
    """The run id is kept in <root>/logs/wandb_run_id and given to wandb.init with resume="allow"."""
    monkeypatch.delenv("WANDB_MODE", raising=False)

    def wandb_init(**options) -> dict:
        (wandb_logger,) = [x for x in build_loggers(tmp_path, LoggingConfig(), **options) if isinstance(x, WandbLogger)]
        return wandb_logger._wandb_init

    first = wandb_init(resuming=False)
    assert first["resume"] == "allow" and (tmp_path / "logs" / "wandb_run_id").read_text().strip() == first["id"]
    assert wandb_init(resuming=True)["id"] == first["id"]
    restarted = wandb_init(resuming=False)["id"]
    assert restarted != first["id"] and wandb_init(resuming=True)["id"] == restarted
    assert wandb_init(fitting=False)["id"] is None  # a validate run is a run of its own
