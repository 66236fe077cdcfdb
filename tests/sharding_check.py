"""Run by test_sharding.py in a subprocess with 8 fake CPU devices (XLA_FLAGS must be set
before JAX starts). Prints one JSON line with the results."""

import io
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax import algorithms, loop, parallel, trainer
from rl_jax.models import transformer
from rl_jax.types import TrainBatch


def make_batch(N=16, P=8, T=6, V=17, seed=0):
  rng = np.random.default_rng(seed)
  prompt_mask = np.ones((N, P), bool)
  prompt_mask[::3, :2] = False  # some rows left-padded
  lengths = rng.integers(1, T + 1, N)
  completion_mask = np.arange(T)[None] < lengths[:, None]
  rewards = rng.random(N).astype(np.float32)
  inputs = algorithms.AdvantageInputs(
    rewards_N=jnp.asarray(rewards),
    loss_mask_NxT=jnp.ones((N, 1), jnp.float32),
    logp_NxT=jnp.zeros((N, 1)),
    ref_logp_NxT=None,
    values_NxT=None,
    group_index_BxG=jnp.arange(N).reshape(N // 4, 4),  # groups of 4 consecutive rows
  )
  adv = np.asarray(algorithms.compute_advantages(algorithms.grpo(), inputs)[0])[:, 0]
  return TrainBatch(
    prompt_NxP=rng.integers(3, V, (N, P)).astype(np.int32),
    prompt_mask_NxP=prompt_mask,
    completion_NxT=rng.integers(3, V, (N, T)).astype(np.int32),
    completion_mask_NxT=completion_mask,
    loss_mask_NxT=completion_mask,
    adv_NxT=np.broadcast_to(adv[:, None], (N, T)).astype(np.float32),
    old_logp_NxT=np.zeros((N, T), np.float32),
    ref_logp_NxT=(-2.0 - rng.random((N, T))).astype(np.float32),
  )


def jit_cache_size(update, prompt_group_size=1) -> int:
  """Entries in the jit cache of `make_rl_update`'s program for `prompt_group_size`."""
  return update.jitted(prompt_group_size)._cache_size()


def two_steps(mesh):
  cfg = transformer.preset("test", 17)
  graphdef, params = transformer.init_model(cfg, 0)
  tx = trainer.make_optimizer(learning_rate=1e-2)
  algo = algorithms.grpo(kl_coef=0.04)
  p_sh = parallel.param_shardings(params, mesh)
  params = jax.device_put(params, p_sh)
  state = trainer.init_state(params, tx)
  state_sh = parallel.state_shardings(state, mesh)
  state = jax.device_put(state, state_sh)
  b_sh = parallel.batch_sharding(mesh)
  update = trainer.make_rl_update(graphdef, algo, tx, state_sharding=state_sh, batch_sharding=b_sh)
  batch = jax.device_put(make_batch(), b_sh)
  losses, sizes = [], []
  for i in range(2):
    state, m = update(state, batch, jax.random.key(i))
    losses.append(float(m["loss"]))
    sizes.append(jit_cache_size(update))
  specs = {
    parallel.path_str(p): str(x.sharding.spec)
    for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]
  }
  flat = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(state.params)])
  return losses, sizes, specs, flat


def split_invariance(mesh_one, mesh_eight):
  """Loss and gradient of one global batch, every aggregation mode, 1 device vs 8 shards."""
  import dataclasses

  from rl_jax.objectives import AGGREGATION_MODES

  cfg = transformer.preset("test", 17)
  graphdef, params = transformer.init_model(cfg, 2)
  batch = make_batch(N=16, seed=5)
  out = {}
  for mode in AGGREGATION_MODES:
    algo = dataclasses.replace(
      algorithms.grpo(kl_coef=0.04), aggregation=mode, aggregation_constant=6
    )
    fn = jax.value_and_grad(
      lambda p, b: trainer.rl_loss(graphdef, p, b, algo, temperature=1.0, on_policy=True)[0]
    )
    results = []
    for mesh in (mesh_one, mesh_eight):
      p = jax.device_put(params, parallel.param_shardings(params, mesh))
      b = jax.device_put(batch, parallel.batch_sharding(mesh))
      loss, grads = jax.jit(fn)(p, b)
      results.append(
        (float(loss), np.concatenate([np.asarray(g).ravel() for g in jax.tree.leaves(grads)]))
      )
    (l1, g1), (l8, g8) = results
    out[mode] = dict(
      loss_rel=abs(l1 - l8) / max(abs(l1), 1e-12),
      grad_rel=float(np.max(np.abs(g1 - g8)) / np.max(np.abs(g1))),
    )
  return out


def main():
  assert jax.device_count() == 8, jax.devices()
  one = parallel.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  eight = parallel.make_mesh(dict(data=2, fsdp=4, tensor=1))
  l1, s1, _, p1 = two_steps(one)
  l8, s8, specs, p8 = two_steps(eight)
  invariance = split_invariance(one, eight)

  # The whole loop on the (data=2, fsdp=4) mesh, two RL steps.
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from tests_support import make_small_config

  cfg = make_small_config(
    **{
      "mesh.data": 2,
      "mesh.fsdp": 4,
      "train.steps": 2,
      "rl.prompts_per_step": 8,
      "sft.steps": 4,
      "eval.every": 0,
      "eval.num_prompts": 16,
    }
  )
  with tempfile.TemporaryDirectory() as d:
    summary = loop.run(cfg, d, log=lambda m: None, stream=io.StringIO())
    rows = [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]
  print(
    json.dumps(
      dict(
        loss_one=l1,
        loss_mesh=l8,
        cache_one=s1,
        cache_mesh=s8,
        max_param_diff=float(np.max(np.abs(p1 - p8))),
        specs=specs,
        loop_losses=[r["loss"] for r in rows],
        loop_after=summary["after"]["accuracy"],
        invariance=invariance,
      )
    )
  )


if __name__ == "__main__":
  main()
