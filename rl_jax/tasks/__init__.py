"""Tasks: prompt sources with train / held-out splits, and their verifiers.

Registered names (`task.name`): the embedded procedural tasks `arithmetic`, `countdown`,
`steps` (chained addition with one running sum per line, scored for outcome and process) and
`driving` (lane plans scored by a small simulator, a continuous reward by difficulty level),
`jsonl` (question / answer pairs from JSONL files) and `tfds` (a prepared TFDS dataset in a
local data directory); any other task by import path (`task.name=my_pkg.tasks:make_task`).
"""

from rl_jax import components
from rl_jax.tasks.arithmetic import ArithmeticTask
from rl_jax.tasks.base import Example, Task, max_lengths_of, sft_target
from rl_jax.tasks.countdown import CountdownTask
from rl_jax.tasks.driving import DrivingTask
from rl_jax.tasks.jsonl import JsonlTask
from rl_jax.tasks.steps import StepsTask
from rl_jax.tasks.tfds_source import TfdsTask

TASKS = {
  "arithmetic": ArithmeticTask,
  "countdown": CountdownTask,
  "driving": DrivingTask,
  "jsonl": JsonlTask,
  "steps": StepsTask,
  "tfds": TfdsTask,
}


def check(component: components.Component) -> components.Component:
  """A `task` config section checked (name and keyword arguments, converted to the annotated
  types) without building the task."""
  fn = components.resolve("task.name", component.name, TASKS)
  return components.Component.of(
    component.name, **components.check_kwargs("task", fn, component.args)
  )


def build(component: components.Component) -> Task:
  """The task a `task` config section names, built with its keyword arguments."""
  return components.build("task", component, TASKS)


__all__ = [
  "TASKS",
  "ArithmeticTask",
  "CountdownTask",
  "DrivingTask",
  "Example",
  "JsonlTask",
  "StepsTask",
  "Task",
  "TfdsTask",
  "build",
  "check",
  "max_lengths_of",
  "sft_target",
]
