"""The console commands as a user meets them: names of packaged configs, usage lines that name the command typed,
`--help` before any heavy import, exit status 0 on success and one line on failure, no abbreviated options, and
only the subcommands that work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from lvis_tiny import write_tiny_lvis

from regionspot import build_regionspot
from regionspot.configs import KINDS, config_names, resolve_config
from regionspot.training.cli import RegionSpotCLI, resolve_config_names

BIN = Path(sys.executable).parent
COMMANDS = {  # console script -> the module whose `main` it runs
    "regionspot-demo": "regionspot.commands.demo",
    "regionspot-train": "regionspot.commands.train",
    "regionspot-evaluate": "regionspot.evaluation.cli",
    "regionspot-recognize": "regionspot.recognize",
    "regionspot-app": "regionspot.app.__main__",
    "regionspot-extract": "regionspot.commands.extract",
    "regionspot-configs": "regionspot.configs",
    "regionspot-export": "regionspot.commands.export",
    "regionspot-serve": "regionspot.serve.app",
}
HEAVY = ("torch", "lightning", "open_clip", "gradio", "transformers", "segment_anything", "pycocotools", "onnxruntime")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_every_shipped_config_has_a_name_and_a_bare_name_finds_it(tmp_path, monkeypatch):
    assert {"tiny", "demo", "regionspot_bb", "regionspot_bl", "regionspot_bl336"} <= set(config_names("model"))
    assert {"tiny", "demo", "fsdp", "slurm", "stage1_bl", "stage2_bl336"} <= set(config_names("training"))
    monkeypatch.chdir(tmp_path)  # far from any clone
    assert resolve_config("tiny") == KINDS["model"] / "tiny.yaml"
    assert resolve_config("tiny.yaml", kind="training") == KINDS["training"] / "tiny.yaml"
    (tmp_path / "tiny").write_text("sam: {variant: tiny}\nclip: {model_name: RegionSpot-Tiny-CLIP}\n")
    assert resolve_config("tiny") == Path("tiny")  # a file of that name comes first
    with pytest.raises(FileNotFoundError, match=r"model config not found: configs/model/tiny\.yaml .*one of: demo, "):
        resolve_config("configs/model/tiny.yaml")
    assert build_regionspot("tiny").clip.embed_dim > 0


def test_a_missing_checkpoint_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"looked for {tmp_path}/checkpoints/sam_vit_b_01ec64\.pth"):
        build_regionspot("regionspot_bl")


def test_train_and_model_configs_by_name_on_the_command_line():
    args = ["fit", "--config", "tiny", "--model.model_config=regionspot_bb", "--config=fsdp", "--config", "x: 1"]
    assert resolve_config_names(args) == [
        "fit",
        "--config",
        str(KINDS["training"] / "tiny.yaml"),
        f"--model.model_config={KINDS['model'] / 'regionspot_bb.yaml'}",
        f"--config={KINDS['training'] / 'fsdp.yaml'}",
        "--config",
        "x: 1",  # YAML given inline stays as it is
    ]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_answers_before_any_heavy_import_and_names_the_command(command):
    probe = (
        f"import sys; sys.argv = [{command!r}, '--help']\n"
        f"from {COMMANDS[command]} import main\n"
        "try:\n    main()\nexcept SystemExit as done:\n    assert done.code in (0, None), done.code\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = run(sys.executable, "-c", probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("HEAVY []"), done.stdout[-300:]
    if command != "regionspot-configs":
        assert done.stdout.startswith(f"usage: {command}")
    assert "{prog}" not in done.stdout


def test_usage_lines_name_the_module_or_script_typed(tmp_path):
    done = run(sys.executable, "-m", "regionspot.demo", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m regionspot.demo"), done.stderr
    assert "python -m regionspot.demo --out /tmp/demo --quick" in done.stdout
    done = run(sys.executable, "-m", "regionspot.training", "export", "--help")
    assert done.stdout.startswith("usage: python -m regionspot.training export"), done.stderr
    done = run(str(BIN / "regionspot-evaluate"), "captions", "score", "--help")
    assert done.stdout.startswith("usage: regionspot-evaluate captions score"), done.stderr
    done = run(str(BIN / "regionspot-train"), "--help")
    assert "export" in done.stdout and "validate" in done.stdout and "predict" not in done.stdout


def test_train_offers_only_subcommands_that_work():
    done = run(str(BIN / "regionspot-train"), "test", "--config", "tiny")
    assert done.returncode == 2 and "invalid choice: 'test'" in done.stderr
    assert set(RegionSpotCLI.subcommands()) == {"fit", "validate"}


def test_a_misspelt_option_is_an_error_not_an_abbreviation(capsys):
    with pytest.raises(SystemExit) as stopped:
        RegionSpotCLI(args=["fit", "--config", "tiny", "--trainer.max_step", "5", "--print_config"])
    assert stopped.value.code not in (0, None)
    assert "--trainer.max_step" in capsys.readouterr().err
    done = run(str(BIN / "regionspot-evaluate"), "score", "--gt", "a", "--detections", "b", "--out", "m", "--fixed")
    assert done.returncode == 2 and "unrecognized arguments: --fixed" in done.stderr  # not --fixed-ap


def test_evaluate_score_exits_0_and_a_missing_file_exits_1_with_one_line(tmp_path):
    tiny_lvis = write_tiny_lvis(tmp_path / "lvis")
    ann = str(tiny_lvis["ann"])
    gt = json.loads(Path(ann).read_text())
    box = gt["annotations"][0]
    detections = [{"image_id": box["image_id"], "category_id": box["category_id"], "bbox": box["bbox"], "score": 0.5}]
    (tmp_path / "dt.json").write_text(json.dumps(detections))
    done = run(str(BIN / "regionspot-evaluate"), "score", "--gt", ann, "--detections", "dt.json", "--out", "m.json",
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "AP" in done.stdout and "{" not in done.stderr  # no metrics dict dumped on stderr
    assert json.loads((tmp_path / "m.json").read_text())["AP"] >= 0
    done = run(str(BIN / "regionspot-evaluate"), "score", "--gt", "nope.json", "--detections", "dt.json", "--out",
               "m.json", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "nope.json" in done.stderr


def test_export_failure_is_one_line(tmp_path):
    done = run(str(BIN / "regionspot-train"), "export", "--ckpt", str(tmp_path / "missing.ckpt"))
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "training checkpoint not found" in done.stderr
