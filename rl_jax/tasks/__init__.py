"""Tasks: prompt sources with train / held-out splits, and their verifiers."""

from rl_jax.tasks.arithmetic import ArithmeticTask
from rl_jax.tasks.base import Example, Scores, Task
from rl_jax.tasks.countdown import CountdownTask
from rl_jax.tasks.tokenizer import CharTokenizer

TASKS = {"arithmetic": ArithmeticTask, "countdown": CountdownTask}


def make_task(name: str, **kwargs) -> Task:
  """Builds a registered task by name (config field `task.name`)."""
  if name not in TASKS:
    raise ValueError(f"task.name={name!r} is unknown; choose one of {sorted(TASKS)}")
  return TASKS[name](**kwargs)


__all__ = [
  "ArithmeticTask",
  "CharTokenizer",
  "CountdownTask",
  "Example",
  "Scores",
  "TASKS",
  "Task",
  "make_task",
]
