"""The prototyping notebook runs top to bottom (executed, not just parsed)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_new_objective_notebook_executes():
  path = os.path.join(ROOT, "notebooks", "new_objective.ipynb")
  nb = nbformat.read(path, as_version=4)
  NotebookClient(
    nb,
    timeout=900,
    kernel_name="python3",
    resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}},
  ).execute()
  outputs = "".join(
    o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
  )
  assert "held-out accuracy" in outputs
  images = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
    if "image/png" in o.get("data", {})
  ]
  assert images, "the training plot was not produced"
