"""The prototyping notebooks run top to bottom (executed, not just parsed)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _execute(name: str):
  """The notebook `notebooks/<name>` executed in a fresh kernel, from its own folder."""
  path = os.path.join(ROOT, "notebooks", name)
  nb = nbformat.read(path, as_version=4)
  NotebookClient(
    nb,
    timeout=900,
    kernel_name="python3",
    resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}},
  ).execute()
  return nb


def _text(nb) -> str:
  return "".join(
    o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
  )


@pytest.mark.slow
def test_new_objective_notebook_executes():
  nb = _execute("new_objective.ipynb")
  assert "held-out accuracy" in _text(nb)
  images = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
    if "image/png" in o.get("data", {})
  ]
  assert images, "the training plot was not produced"


@pytest.mark.slow
def test_process_rewards_notebook_executes():
  """PAPO and RCC next to GRPO: its cells assert the advantages' key facts (hand-made groups,
  replayed rollouts, the presets equal to the pure functions) and train a few PAPO steps."""
  outputs = _text(_execute("process_rewards.ipynb"))
  for line in ("rows where PAPO != GRPO", "baseline shift per group", "held-out accuracy"):
    assert line in outputs, f"the notebook printed no {line!r}"
