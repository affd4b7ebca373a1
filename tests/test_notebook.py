"""notebooks/train_tiny.ipynb is valid nbformat 4 and its code cells run in order: the module trains in a notebook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic_boxes import one_cpu_thread  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
NOTEBOOK = Path("notebooks/train_tiny.ipynb")


def test_notebook_is_nbformat_4():
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["nbformat"] == 4 and notebook["cells"]
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and "execution_count" in cell


def test_notebook_cells_train_the_tiny_model(capsys):
    notebook = json.loads(NOTEBOOK.read_text())
    namespace: dict = {"__name__": "__notebook__"}
    for index, cell in enumerate(c for c in notebook["cells"] if c["cell_type"] == "code"):
        exec(compile("".join(cell["source"]), f"{NOTEBOOK}:cell{index}", "exec"), namespace)
    assert namespace["after"] > namespace["before"] + 0.1, (namespace["before"], namespace["after"])
    assert Path(namespace["weights"]).is_file()
    assert "validation AP" in capsys.readouterr().out
