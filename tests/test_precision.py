"""Mixed precision: bf16 activations and matmuls over float32 master weights, with the
log-probs of the ratio in float32 (`model.dtype`, `model.param_dtype`)."""

import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tests_support import dot_generals

from rl_jax import loop, trainer
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


def test_master_weights_keep_the_updates_bfloat16_rounds_away():
  """SGD at lr 1e-3 on a weight of 1.0 with gradient 1: each step (-0.001) is below half a
  bfloat16 ulp at 1.0 (2^-8), so bfloat16 alone never moves; float32 masters reach 0.99 after 10
  steps and the stored weight is its rounding, 253 / 256 = 0.98828125."""
  grads = {"w": jnp.ones((1,), jnp.bfloat16)}
  for masters, expected in ((False, 1.0), (True, 0.98828125)):
    tx = trainer.with_master_weights(optax.sgd(1e-3)) if masters else optax.sgd(1e-3)
    state = trainer.init_state({"w": jnp.ones((1,), jnp.bfloat16)}, tx)
    for _ in range(10):
      state, reason = trainer.apply_gradients(state, grads, jnp.float32(0.0), tx)
      assert int(reason) == 0
    assert state.params["w"].dtype == jnp.bfloat16
    assert float(state.params["w"][0]) == expected
  master = state.opt_state.master["w"]
  assert master.dtype == jnp.float32
  np.testing.assert_allclose(float(master[0]), 0.99, rtol=1e-6)


def test_master_weights_over_float32_parameters_change_nothing():
  """Over float32 parameters the masters are the parameters: the same AdamW trajectory, bit
  for bit."""
  rng = np.random.default_rng(0)
  params = {"a": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.zeros((4,))}
  plain = trainer.make_optimizer(learning_rate=1e-2, weight_decay=0.1)
  wrapped = trainer.make_optimizer(learning_rate=1e-2, weight_decay=0.1, master_weights=True)
  states = [trainer.init_state(params, tx) for tx in (plain, wrapped)]
  for i in range(3):
    g = jax.tree.map(lambda x, i=i: jnp.full_like(x, 0.5 - i), params)
    states = [
      trainer.apply_gradients(s, g, jnp.float32(0), tx)[0]
      for s, tx in zip(states, (plain, wrapped))
    ]
  for k in params:
    np.testing.assert_array_equal(states[0].params[k], states[1].params[k])
    np.testing.assert_array_equal(states[1].opt_state.master[k], states[1].params[k])


def test_a_bfloat16_storage_run_keeps_float32_masters(small_config, tmp_path):
  """`model.param_dtype=bfloat16`: the checkpointed parameters are bfloat16, the optimizer's
  masters and moments float32, and the parameters are exactly the masters rounded."""
  from rl_jax.checkpoint import Checkpointer

  over = {"model.param_dtype": "bfloat16", "train.steps": 2, "eval.every": 0}
  # a dense reward (minus 0.1 a character): the groups' rewards differ, the update moves
  over.update({"rewards.brevity.name": "test_components:brevity", "rewards.brevity.weight": 1})
  cfg = small_config(**over)
  loop.run(cfg, str(tmp_path), log=lambda m: None, stream=io.StringIO())
  rows = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert all(np.isfinite(r["loss"]) and r["skipped_updates"] == 0 for r in rows)
  assert all(r["grad_norm"] > 0 for r in rows)
  exp = loop.Experiment.build(cfg)
  target = exp.rl_state(exp.policy.init_params(cfg.seed, exp.mesh))
  ckpt = Checkpointer(str(tmp_path))
  state, _, _ = ckpt.restore(2, target, jax.random.key(0))
  ckpt.close()
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.bfloat16)}
  assert isinstance(state.opt_state, trainer.MasterWeights)
  assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim} == {jnp.dtype(jnp.float32)}
  rounded = jax.tree.map(lambda m: m.astype(jnp.bfloat16), state.opt_state.master)
  for a, b in zip(jax.tree.leaves(rounded), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  moved = [
    float(jnp.max(jnp.abs(m - p.astype(jnp.float32))))
    for m, p in zip(jax.tree.leaves(state.opt_state.master), jax.tree.leaves(state.params))
  ]
  assert max(moved) > 0  # the masters hold what bfloat16 could not
