"""LoRA: adapters on frozen weights. The adapted model starts as the base model, the update
trains exactly the adapters with the gradient of the merged model's loss, the base (the KL
reference) never changes, and checkpoints hold the adapters alone."""

import io
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tests_support import dot_generals

from rl_jax import algorithms, loop, lora, trainer
from rl_jax import step as step_lib
from rl_jax.checkpoint import Checkpointer
from rl_jax.models import transformer
from rl_jax.parallel import path_str
from rl_jax.types import TrainBatch

CFG = lora.LoraConfig(rank=2, alpha=4.0, targets=("q_proj", "down_proj"))


def _model():
  cfg = transformer.preset("test", 31)
  graphdef, params = transformer.init_model(cfg, 0)
  return graphdef, params


def test_merge_by_hand_and_identity_at_init():
  _, params = _model()
  adapters = lora.init_adapters(params, CFG, seed=1)
  assert sorted(adapters) == [
    f"layers/{i}/{m}" for i in (0, 1) for m in ("attn/q_proj", "mlp/down_proj")
  ]
  assert lora.num_params(adapters) == 2 * (2 * (32 + 32) + 2 * (64 + 32))
  merged = lora.merge(params, adapters, CFG)  # B = 0: exactly the base model
  for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  ad = adapters["layers/0/attn/q_proj"]
  ad["b"] = jnp.ones_like(ad["b"])
  merged = lora.merge(params, adapters, CFG)
  w = params["layers"][0]["attn"]["q_proj"]["kernel"]
  expect = w + 2.0 * ad["a"] @ ad["b"]  # alpha / rank = 2
  np.testing.assert_allclose(merged["layers"][0]["attn"]["q_proj"]["kernel"], expect, rtol=1e-6)
  np.testing.assert_array_equal(
    merged["layers"][0]["attn"]["k_proj"]["kernel"], params["layers"][0]["attn"]["k_proj"]["kernel"]
  )
  with pytest.raises(ValueError, match="lora.targets"):
    lora.LoraConfig(rank=2, targets=("qproj",))


def test_the_sampler_weights_share_every_leaf_the_adapters_do_not_change():
  """Under LoRA `Step.policy_params` (the sampler's weights, made once a step) computes the
  adapted kernels only: every other leaf is the base's own array, not a copy (W5's tied
  embedding alone is 545 MB)."""
  _, params = _model()
  adapters = jax.tree.map(lambda x: x + 0.01, lora.init_adapters(params, CFG, seed=1))
  state = trainer.init_state(adapters, optax.sgd(1.0))
  merged = step_lib.Step.policy_params(types.SimpleNamespace(lora=CFG), state, params)
  expect = lora.merge(params, adapters, CFG)
  flat = lambda t: jax.tree_util.tree_flatten_with_path(t)[0]
  for (path, m), (_, e), (_, base) in zip(flat(merged), flat(expect), flat(params)):
    np.testing.assert_array_equal(m, e)
    adapted = any(f"/{t}/kernel" in "/" + path_str(path) for t in CFG.targets)
    assert (m is not base) if adapted else (m is base), path


def _batch(seed=0, N=4, P=3, T=4):
  rng = np.random.default_rng(seed)
  mask = np.arange(T)[None] < rng.integers(1, T + 1, N)[:, None]
  return TrainBatch(
    jnp.asarray(rng.integers(3, 31, (N, P)), jnp.int32),
    jnp.ones((N, P), bool),
    jnp.asarray(rng.integers(3, 31, (N, T)), jnp.int32),
    jnp.asarray(mask),
    jnp.asarray(mask),
    jnp.asarray(rng.normal(size=(N, 1)) * mask, jnp.float32),
    jnp.zeros((N, T), jnp.float32),
    jnp.zeros((N, T), jnp.float32),
  )


def test_the_update_trains_the_adapters_with_the_merged_models_gradient():
  graphdef, params = _model()
  adapters = lora.init_adapters(params, CFG, seed=1)
  adapters = jax.tree.map(lambda x: x + 0.01, adapters)  # B != 0: every gradient flows
  algo = algorithms.dr_grpo(aggregation="token_mean")
  tx = optax.sgd(0.1)
  update = trainer.make_rl_update(graphdef, algo, tx, lora=CFG)
  batch = _batch()
  state = trainer.init_state(jax.tree.map(jnp.copy, adapters), tx)  # the update donates it
  base = jax.tree.map(jnp.copy, params)
  new, metrics = update(state, batch, jax.random.key(0), frozen=params)

  def loss(ad):
    return trainer.rl_loss(
      graphdef, lora.merge(base, ad, CFG), batch, algo, temperature=1.0, on_policy=True
    )[0]

  value, grads = jax.value_and_grad(loss)(adapters)
  np.testing.assert_allclose(metrics["loss"], value, rtol=1e-5)
  for got, a, g in zip(
    jax.tree.leaves(new.params), jax.tree.leaves(adapters), jax.tree.leaves(grads)
  ):
    np.testing.assert_allclose(got, a - 0.1 * g, rtol=1e-5, atol=1e-7)
  assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(base)):  # the base never changes
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="frozen"):
    update(new, batch, jax.random.key(0))


def test_a_lora_run_checkpoints_only_adapters(small_config, tmp_path):
  cfg = small_config(
    **{
      "lora.rank": 4,
      "train.steps": 2,
      "eval.every": 0,
      "task.partial_credit": 0.5,  # rewards vary within groups: the adapters get a gradient
      "checkpoint.every": 2,
      "train.learning_rate": 1e-2,
    }
  )
  loop.run(cfg, str(tmp_path), log=lambda m: None, stream=io.StringIO())
  exp = loop.Experiment.build(cfg)
  params = exp.policy.init_params(0, exp.mesh)
  ckpt = Checkpointer(str(tmp_path))
  state, _, _ = ckpt.restore(2, exp.rl_state(params), jax.random.key(0))
  names = set(state.params)
  assert names and all("/" in n for n in names)  # projection paths: adapters, no embeddings
  # rank 4 x (in + out) of q, k, v, o, gate, up, down (32+32, 32+16, 32+16, 32+32, 3 x 96) x 2
  assert lora.num_params(state.params) == 4 * 512 * 2
  assert any(np.abs(np.asarray(ad["b"])).max() > 0 for ad in state.params.values())  # trained
  ckpt.close()
  with pytest.raises(loop.config_lib.ConfigError, match="lora.rank"):
    loop.Experiment.build(small_config(**{"lora.rank": 4, "algorithm.name": "ppo"}))
  assert os.path.exists(tmp_path / "reference")


def _dot_output_shapes(jaxpr) -> set:
  return {tuple(v.aval.shape) for eqn in dot_generals(jaxpr) for v in eqn.outvars}


@pytest.mark.parametrize("targets", [lora.DEFAULT_TARGETS, ("k_proj", "up_proj")])
def test_attached_adapters_equal_the_merged_model_without_its_weight_gradients(targets):
  """`lora.attach` (x W + s (x A) B, what the learner uses) gives the merged model's logits and
  adapter gradients, and its backward pass computes no full [in, out] weight gradient x^T dy
  (which `merge` makes the model compute for every targeted kernel: a product as large as the
  forward's). All projections adapted, and a subset (zero blocks under the plain kernels)."""
  cfg = lora.LoraConfig(rank=3, alpha=6.0, targets=targets)
  graphdef, params = _model()
  adapters = lora.init_adapters(params, cfg, seed=2)
  rng = np.random.default_rng(0)
  adapters = jax.tree.map(
    lambda x: jnp.asarray(0.1 * rng.normal(size=x.shape), jnp.float32), adapters
  )
  tokens = jnp.asarray(rng.integers(0, 31, (3, 5)), jnp.int32)  # 15 tokens: no kernel's shape
  mask = jnp.ones((3, 5), bool)

  def loss(ad, form):
    model = transformer.merge(graphdef, form(params, ad, cfg))
    logits, _ = model(tokens, transformer.positions_from_mask(mask), mask)
    return jnp.sum(jnp.tanh(logits))

  (l1, g1), (l2, g2) = (jax.value_and_grad(loss)(adapters, f) for f in (lora.attach, lora.merge))
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  kernel_shapes = {
    tuple(x.shape)
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
    if any(
      f"/{t}/kernel" in "/" + "/".join(str(getattr(k, "key", k)) for k in path) for t in targets
    )
  }
  grad_dots = lambda form: _dot_output_shapes(
    jax.make_jaxpr(jax.grad(lambda ad: loss(ad, form)))(adapters).jaxpr
  )
  assert kernel_shapes and not kernel_shapes & grad_dots(lora.attach), kernel_shapes
  assert kernel_shapes <= grad_dots(lora.merge)  # what attach avoids
