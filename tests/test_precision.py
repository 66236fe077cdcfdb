"""Mixed precision: bf16 activations and matmuls over float32 master weights, with the
log-probs of the ratio in float32 (`model.dtype`, `model.param_dtype`)."""

import io
import os

import jax
import jax.numpy as jnp
import numpy as np
from tests_support import dot_generals

from rl_jax import loop
from rl_jax.logprobs import completion_logprobs
from rl_jax.metrics import read_jsonl
from rl_jax.models import transformer


def test_bf16_logprobs_are_float32_and_close_to_the_float32_model():
  rng = np.random.default_rng(0)
  prompt = jnp.asarray(rng.integers(3, 40, (4, 6)), jnp.int32)
  completion = jnp.asarray(rng.integers(3, 40, (4, 5)), jnp.int32)
  ones = lambda x: jnp.ones(x.shape, bool)
  out = {}
  for dtype in ("float32", "bfloat16"):
    cfg = transformer.preset("test", 40, dtype=dtype)
    graphdef, params = transformer.init_model(cfg, 0)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))  # master weights
    out[dtype] = completion_logprobs(
      graphdef, params, prompt, ones(prompt), completion, ones(completion), with_entropy=True
    )
  assert out["bfloat16"].logp_NxT.dtype == jnp.float32
  np.testing.assert_allclose(out["bfloat16"].logp_NxT, out["float32"].logp_NxT, atol=0.05)
  assert not np.array_equal(out["bfloat16"].logp_NxT, out["float32"].logp_NxT)  # really bf16


def _dot_operand_dtypes(jaxpr) -> set:
  """The operand dtypes of every matrix product in a jaxpr, sub-jaxprs included."""
  return {str(v.aval.dtype) for eqn in dot_generals(jaxpr) for v in eqn.invars}


def test_bf16_compute_stays_bf16_through_the_norms():
  """With `model.dtype=bfloat16` every matrix product of the forward and backward pass takes
  bf16 operands, float32 master weights included (cast at use): the norms return their input's
  dtype (flax's RMSNorm promoted bf16 activations to its float32 scale, so every matmul after
  the first norm ran in float32)."""
  for name, extra in (("llama", {}), ("gemma", dict(sandwich_norms=True, norm_offset=1.0))):
    cfg = transformer.preset("test", 40, dtype="bfloat16", qk_norm=True, **extra)
    graphdef, params = transformer.init_model(cfg, 0)
    tokens, mask = jnp.ones((2, 5), jnp.int32), jnp.ones((2, 5), bool)

    def loss(p, graphdef=graphdef):
      logits, _ = transformer.merge(graphdef, p)(tokens, jnp.zeros_like(tokens), mask)
      return logits.sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
    assert _dot_operand_dtypes(jaxpr) == {"bfloat16"}, name


def test_a_bf16_run_trains(small_config, tmp_path):
  cfg = small_config(**{"model.dtype": "bfloat16", "train.steps": 2, "eval.every": 0})
  loop.run(cfg, str(tmp_path), log=lambda m: None, stream=io.StringIO())
  rows = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["loss"]) and r["skipped_updates"] == 0 for r in rows)
