"""Structure the codebase promises: no function in rl_jax/ longer than 80 lines (docstrings
aside), so that each reads in one screen, and `loop.run` tells the story in well under that."""

import ast
import pathlib

from tests_support import ROOT

MAX_LINES = 80


def _functions():
  for path in sorted(pathlib.Path(ROOT, "rl_jax").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        yield path.relative_to(ROOT), node


def _length(fn) -> int:
  """Lines of `fn` without its docstring."""
  lines = fn.end_lineno - fn.lineno + 1
  first = fn.body[0]
  if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
    if isinstance(first.value.value, str):
      lines -= first.end_lineno - first.lineno + 1
  return lines


def test_no_function_is_longer_than_80_lines():
  long = [
    f"{path}:{fn.lineno} {fn.name} ({_length(fn)} lines)"
    for path, fn in _functions()
    if _length(fn) > MAX_LINES
  ]
  assert not long, f"split these functions: {long}"


def test_loop_run_reads_in_well_under_80_lines():
  (run,) = [fn for path, fn in _functions() if str(path).endswith("loop.py") and fn.name == "run"]
  assert _length(run) <= 70
