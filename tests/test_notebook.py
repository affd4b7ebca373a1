"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel (nbclient, ipykernel's Python kernel on
this environment's interpreter), and says what it should; every committed notebook has its outputs stripped.

Each notebook is executed in its own folder, as Jupyter runs it, with one CPU thread. A check per notebook reads its
outputs and a last cell appended to the executed copy that prints the notebook's results as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOKS = sorted(Path("notebooks").glob("*.ipynb"))
KERNEL = "regionspot-test"
CELL_TIMEOUT_S = 300


def _probe(values: dict[str, str]) -> str:
    """A last cell printing the kernel's interpreter and the notebook's `values` (name: expression) as one JSON line."""
    shown = ", ".join(f"{name!r}: {expression}" for name, expression in values.items())
    printed = f"{{'executable': _sys.executable, {shown}}}"
    return f"import json as _json, sys as _sys\nprint(_json.dumps({printed}, default=str))"


def check_train_tiny(outputs: list[dict], probe: dict) -> None:
    assert probe["after"] > probe["before"] + 0.1, probe  # validation AP rises with training
    assert Path(probe["weights"]).is_file()
    assert "validation AP" in _text(outputs)


def check_quickstart(outputs: list[dict], probe: dict) -> None:
    vocabulary = set(probe["vocabulary"])
    assert len(probe["labels"]) == len(probe["boxes"]) == 3
    assert all(len(labels) == 3 and set(labels) <= vocabulary for labels in probe["labels"]), probe["labels"]
    assert any("image/png" in out.get("data", {}) for out in outputs), "the picture is not shown inline"
    assert "tiny RANDOM backbones" in _text(outputs) or "demo's trained model" in _text(outputs)
    losses = probe["losses"]
    assert len(losses) == 30 and sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses  # the loss falls
    assert _text(outputs).count("validation AP (%)") == 2  # the AP table at steps 15 and 30
    assert len(probe["named"]) == len(probe["truths"]) == probe["val_boxes"] > 0  # every validation box named
    assert set(probe["named"]) | set(probe["truths"]) <= set(probe["names"])
    assert probe["right"] == sum(n == t for n, t in zip(probe["named"], probe["truths"], strict=True))
    # Clearly above chance (1 in 4) and above always naming the commonest class; measured 16 of 16 (2026-12-07).
    boxes, chance, majority = len(probe["truths"]), probe["chance"], probe["majority"]
    assert chance == 0.25 and probe["right"] >= max(2 * chance * boxes, majority + 0.25 * boxes), probe
    assert "chance is 1 in 4" in _text(outputs)
    pictures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(pictures) == 2, "the photo and the trained model's validation boxes are not both shown"


# What each notebook must leave behind: the values to print (name: expression in the notebook), and their check.
CHECKS = {
    "train_tiny.ipynb": ({"before": "before", "after": "after", "weights": "weights"}, check_train_tiny),
    "quickstart.ipynb": (
        {
            "vocabulary": "vocabulary",
            "boxes": "boxes",
            "labels": "result.labels",
            "losses": "curve.losses",
            "names": "list(names.values())",
            "named": "named",
            "truths": "truths",
            "right": "right",
            "chance": "chance",
            "majority": "majority",
            "val_boxes": "len(val['annotations'])",
        },
        check_quickstart,
    ),
}


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> KernelSpecManager:
    """Only a kernel on this interpreter, so that a `python3` kernel installed elsewhere is never picked up."""
    folder = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(folder / KERNEL)  # its argv[0] is sys.executable
    return KernelSpecManager(kernel_dirs=[str(folder)], ensure_native_kernel=False)


def test_there_are_notebooks_and_each_has_a_check():
    assert NOTEBOOKS, "no notebooks found: run the tests from the repository's root"
    unchecked = [path.name for path in NOTEBOOKS if path.name not in CHECKS]
    assert not unchecked, f"add a check to CHECKS for {unchecked}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_committed_notebook_is_nbformat_4_with_outputs_stripped(path):
    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4 and notebook.cells
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path}: cell {index} keeps its outputs"
        assert not cell.get("attachments"), f"{path}: cell {index} keeps attachments"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs_in_a_kernel_and_says_what_it_should(path, kernel_specs):
    values, check = CHECKS[path.name]
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(_probe(values)))
    manager = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
    client = NotebookClient(
        notebook, km=manager, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(path.parent.resolve())}}
    )
    client.execute(env={**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    *cells, probed = [cell for cell in notebook.cells if cell.cell_type == "code"]
    probe = json.loads(_text(probed.outputs).strip().splitlines()[-1])
    assert probe["executable"] == sys.executable, "the kernel ran another Python than this environment's"
    check([out for cell in cells for out in cell.outputs], probe)


def _text(outputs: list[dict]) -> str:
    """The printed text (streams and plain-text results) of some outputs."""
    parts = [out.get("text", "") for out in outputs if out.get("output_type") == "stream"]
    parts += [out.get("data", {}).get("text/plain", "") for out in outputs if "data" in out]
    return "\n".join(parts)
