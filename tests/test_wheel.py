"""The built wheel, installed (not editable) into a fresh venv, works from an empty folder: scripts/check_wheel.sh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_works_from_an_empty_folder():
    venv = Path(sys.prefix)  # the venv running the tests holds the dependencies the fresh one borrows
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check_wheel.sh"), str(venv)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "the wheel works from an empty folder" in done.stdout
