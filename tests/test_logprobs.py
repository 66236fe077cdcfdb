"""The cost-saving paths of `completion_logprobs` compute the same numbers as the plain pass:
a group's prompt computed once and shared by its G completions, the chunked log-softmax, and
rematerialised blocks. Values and gradients are compared at float32 rounding."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl_jax import algorithms, lora, trainer
from rl_jax.logprobs import _logp_entropy, completion_logprobs
from rl_jax.models import transformer
from rl_jax.objectives.kl import entropy_from_logits
from rl_jax.types import TrainBatch

V, B, G, P, T = 29, 3, 4, 6, 7


def _grouped_batch(seed=0):
  """B prompts (left-padded to different lengths) x G completions of varied lengths."""
  rng = np.random.default_rng(seed)
  prompt = rng.integers(3, V, (B, P)).astype(np.int32)
  pmask = np.ones((B, P), bool)
  pmask[0, :2] = False
  pmask[2, :1] = False
  lengths = rng.integers(1, T + 1, B * G)
  cmask = np.arange(T)[None] < lengths[:, None]
  return (
    np.repeat(prompt, G, 0),
    np.repeat(pmask, G, 0),
    rng.integers(3, V, (B * G, T)).astype(np.int32),
    cmask,
  )


def _objective(graphdef, batch, **kw):
  def f(params):
    s = completion_logprobs(graphdef, params, *batch, with_entropy=True, **kw)
    # A weighted sum so that every token's log-prob and entropy reaches the gradient.
    w = jnp.arange(1, T + 1, dtype=jnp.float32) / T
    return jnp.sum(s.logp_NxT * w) + 0.5 * jnp.sum(s.entropy_NxT), s

  return jax.jit(jax.value_and_grad(f, has_aux=True))


def _assert_same(a, b):
  (_, sa), ga = a
  (_, sb), gb = b
  np.testing.assert_allclose(sa.logp_NxT, sb.logp_NxT, atol=5e-6)
  np.testing.assert_allclose(sa.entropy_NxT, sb.entropy_NxT, atol=5e-6)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, atol=5e-6 * float(np.abs(y).max()) + 1e-7)


@pytest.mark.parametrize(
  "variant",
  [
    dict(group_size=G),
    dict(group_size=2),
    dict(logits_chunk=3),
    dict(logits_chunk=1),
    dict(group_size=G, logits_chunk=2),
  ],
)
def test_shared_prompt_and_chunked_logits_match_the_plain_pass(variant):
  cfg = transformer.preset("test", V)
  graphdef, params = transformer.init_model(cfg, 0)
  batch = _grouped_batch()
  base = _objective(graphdef, batch)(params)
  _assert_same(_objective(graphdef, batch, **variant)(params), base)
  # Masked positions stay exactly zero.
  (_, s), _ = _objective(graphdef, batch, **variant)(params)
  assert np.all(np.asarray(s.logp_NxT)[~batch[3]] == 0.0)


def test_single_token_completions_with_shared_prompt():
  cfg = transformer.preset("test", V)
  graphdef, params = transformer.init_model(cfg, 1)
  pr, pm, c, cm = _grouped_batch(1)
  batch = (pr, pm, c[:, :1], cm[:, :1])
  (_, a), _ = jax.value_and_grad(
    lambda p: (0.0, completion_logprobs(graphdef, p, *batch)), has_aux=True
  )(params)
  b = completion_logprobs(graphdef, params, *batch, group_size=G)
  np.testing.assert_allclose(a.logp_NxT, b.logp_NxT, atol=5e-6)


def test_shared_prompt_rejects_rows_that_do_not_form_groups():
  cfg = transformer.preset("test", V)
  graphdef, params = transformer.init_model(cfg, 0)
  pr, pm, c, cm = _grouped_batch()
  with pytest.raises(ValueError, match="groups of 5"):
    completion_logprobs(graphdef, params, pr, pm, c, cm, group_size=5)


def test_logprob_fn_and_update_reject_rows_that_do_not_form_prompt_groups():
  """A declared prompt group size that does not divide the rows is an error, never a silent
  fallback to per-row prompts."""
  cfg = transformer.preset("test", V)
  graphdef, params = transformer.init_model(cfg, 0)
  pr, pm, c, cm = _grouped_batch()
  fn = trainer.make_logprob_fn(graphdef)
  with pytest.raises(ValueError, match="groups of 5"):
    fn(params, pr, pm, c, cm, prompt_group_size=5)
  N = B * G
  zeros = np.zeros((N, T), np.float32)
  batch = TrainBatch(pr, pm, c, cm, cm, zeros, zeros, zeros)
  tx = optax.sgd(1.0)
  update = trainer.make_rl_update(graphdef, algorithms.grpo(kl_coef=0.0), tx)
  with pytest.raises(ValueError, match="prompt groups of 5"):
    update(trainer.init_state(params, tx), batch, jax.random.key(0), prompt_group_size=5)


@pytest.mark.parametrize("group_size", [1, G])
@pytest.mark.parametrize("adapters", [False, True])
def test_remat_blocks_give_the_same_gradient(group_size, adapters):
  """Per-row and shared prompts; plain kernels, and LoRA adapters attached unmerged (the
  learner's form: `LoraKernel`s inside the recomputed blocks)."""
  cfg = transformer.preset("test", V)
  graphdef, params = transformer.init_model(cfg, 0)
  graphdef_remat, _ = transformer.init_model(transformer.preset("test", V, remat=True), 0)
  batch = _grouped_batch()
  objective = lambda g: _objective(g, batch, group_size=group_size)(params)
  if adapters:
    lcfg = lora.LoraConfig(rank=2)
    ad = jax.tree.map(lambda x: x + 0.1, lora.init_adapters(params, lcfg, seed=1))
    objective = lambda g: jax.jit(
      jax.value_and_grad(
        lambda ad: jnp.sum(
          completion_logprobs(
            g, lora.attach(params, ad, lcfg), *batch, group_size=group_size
          ).logp_NxT
        )
      )
    )(ad)
    a, b = objective(graphdef_remat), objective(graphdef)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(a[1]), jax.tree.leaves(b[1])):
      np.testing.assert_allclose(x, y, atol=5e-6 * float(np.abs(y).max()) + 1e-7)
    return
  _assert_same(objective(graphdef_remat), objective(graphdef))


def test_remat_holds_one_block_of_activations_at_a_time():
  """The recomputation of a block waits for its output's gradient, so the compiled gradient's
  scratch memory holds about one block's activations. (Under `jax.checkpoint` XLA:CPU, which
  drops its optimization barriers, scheduled every block's recomputation right after its
  forward: the scratch was nearly that of no remat at all.)"""
  cfg = transformer.preset("test", V, num_layers=4, mlp_dim=1024)
  batch = _grouped_batch()
  batch = tuple(np.tile(x, (8, 1)) for x in batch)  # 96 rows: activations dominate

  def scratch(remat):
    graphdef, params = transformer.init_model(dataclasses.replace(cfg, remat=remat), 0)
    f = lambda p: jnp.sum(completion_logprobs(graphdef, p, *batch).logp_NxT)
    return jax.jit(jax.grad(f)).lower(params).compile().memory_analysis().temp_size_in_bytes

  plain, remat = scratch(False), scratch(True)
  assert remat < 0.5 * plain, (remat, plain)


@pytest.mark.parametrize("micro", [1, 3])
def test_update_with_shared_prompts_equals_the_per_row_update(micro):
  """`update(..., prompt_group_size=G)` computes each prompt once; with whole groups per
  micro-batch (one micro-batch of 12 rows, or 3 of 4 rows = one group each) the update equals
  the per-row one."""
  cfg = transformer.preset("test", V)
  graphdef, params = transformer.init_model(cfg, 0)
  pr, pm, c, cm = _grouped_batch()
  N = B * G
  rng = np.random.default_rng(3)
  adv = np.repeat(rng.normal(size=(N, 1)), T, 1).astype(np.float32)
  ref = np.log(np.full((N, T), 1.0 / V, np.float32))
  batch = TrainBatch(pr, pm, c, cm, cm, adv, np.zeros((N, T), np.float32), ref)
  algo = dataclasses.replace(algorithms.grpo(kl_coef=0.05), aggregation_constant=T)
  tx = optax.sgd(1.0)
  outs = []
  update = trainer.make_rl_update(graphdef, algo, tx, num_microbatches=micro)
  for group_size in (1, G):
    state, m = update(
      trainer.init_state(jax.tree.map(jnp.copy, params), tx),
      batch,
      jax.random.key(0),
      prompt_group_size=group_size,
    )
    outs.append((state.params, m))
  for x, y in zip(jax.tree.leaves(outs[0][0]), jax.tree.leaves(outs[1][0])):
    np.testing.assert_allclose(x, y, atol=1e-5)
  np.testing.assert_allclose(outs[0][1]["loss"], outs[1][1]["loss"], rtol=1e-5)


def test_update_falls_back_to_per_row_prompts_when_micro_batches_split_groups():
  """12 rows in 6 micro-batches of 2 cannot hold groups of 4: the update computes prompts per
  row rather than mixing groups, and still equals the plain update."""
  cfg = transformer.preset("test", V)
  graphdef, params = transformer.init_model(cfg, 0)
  pr, pm, c, cm = _grouped_batch()
  N = B * G
  adv = np.repeat(np.linspace(-1, 1, N)[:, None], T, 1).astype(np.float32)
  zeros = np.zeros((N, T), np.float32)
  batch = TrainBatch(pr, pm, c, cm, cm, adv, zeros, zeros)
  algo = dataclasses.replace(algorithms.grpo(kl_coef=0.0), aggregation_constant=T)
  tx = optax.sgd(1.0)
  states = []
  update = trainer.make_rl_update(graphdef, algo, tx, num_microbatches=6)
  for group_size in (1, G):
    state, _ = update(
      trainer.init_state(jax.tree.map(jnp.copy, params), tx),
      batch,
      jax.random.key(0),
      prompt_group_size=group_size,
    )
    states.append(state.params)
  for x, y in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
    np.testing.assert_allclose(x, y, atol=1e-6)


def test_group_shuffle_keeps_groups_whole():
  """With minibatches, rows are shuffled by whole groups. Two minibatches of 6 rows with
  G=3 (two groups each): the update equals doing the same two SGD steps by hand on the groups
  in the order the permutation gives."""
  cfg = transformer.preset("test", V)
  graphdef, params = transformer.init_model(cfg, 0)
  rng = np.random.default_rng(5)
  Gs, N = 3, 12
  prompt = np.repeat(rng.integers(3, V, (N // Gs, P)).astype(np.int32), Gs, 0)
  pm = np.ones((N, P), bool)
  c = rng.integers(3, V, (N, T)).astype(np.int32)
  cm = np.ones((N, T), bool)
  adv = np.repeat(rng.normal(size=(N, 1)), T, 1).astype(np.float32)
  zeros = np.zeros((N, T), np.float32)
  batch = TrainBatch(prompt, pm, c, cm, cm, adv, zeros, zeros)
  algo = dataclasses.replace(algorithms.grpo(kl_coef=0.0), aggregation_constant=T)
  tx = optax.sgd(0.5)
  key = jax.random.key(7)
  update = trainer.make_rl_update(graphdef, algo, tx, num_minibatches=2)
  got = update(
    trainer.init_state(jax.tree.map(jnp.copy, params), tx), batch, key, prompt_group_size=Gs
  )[0].params
  # By hand: the epoch key, the group permutation, two plain SGD steps.
  (epoch_key,) = jax.random.split(key, 1)
  groups = np.asarray(jax.random.permutation(epoch_key, N // Gs))
  order = (groups[:, None] * Gs + np.arange(Gs)).reshape(-1)
  p = params
  grad = jax.jit(
    jax.grad(
      lambda q, mb: trainer.rl_loss(graphdef, q, mb, algo, temperature=1.0, on_policy=False)[0]
    )
  )
  for half in (order[:6], order[6:]):
    mb = jax.tree.map(lambda x: x[half], batch)
    p = jax.tree.map(lambda a, b: a - 0.5 * b, p, grad(p, mb))
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(p)):
    np.testing.assert_allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("extra", [{}, {"sliding_window": 3}], ids=["global", "window"])
def test_fused_attention_matches_einsum_attention(extra):
  """`model.attention="fused"` (jax.nn.dot_product_attention for calls with several queries)
  gives the einsum path's log-probs and gradients, with left padding, with the shared-prompt
  cache path, and in the sampler's prefill; with a sliding window too."""
  from rl_jax.sampling import SamplingConfig, generate  # pylint: disable=import-outside-toplevel

  graphdef, params = transformer.init_model(transformer.preset("test", V, **extra), 0)
  graphdef_f, _ = transformer.init_model(
    transformer.preset("test", V, attention="fused", **extra), 0
  )
  batch = _grouped_batch()
  for kw in (dict(), dict(group_size=G)):
    _assert_same(
      _objective(graphdef_f, batch, **kw)(params), _objective(graphdef, batch, **kw)(params)
    )
  cfg = SamplingConfig(max_new_tokens=5, temperature=0.0, stop_ids=())
  prompts, pmask = batch[0][::G], batch[1][::G]
  a = generate(graphdef, params, prompts, pmask, jax.random.key(0), cfg=cfg)
  b = generate(graphdef_f, params, prompts, pmask, jax.random.key(0), cfg=cfg)
  np.testing.assert_array_equal(a.tokens_NxT, b.tokens_NxT)
  np.testing.assert_allclose(a.logp_NxT, b.logp_NxT, atol=5e-6)


def test_chunked_log_softmax_never_holds_the_full_logits_of_a_150k_vocabulary():
  """With `logits_chunk`, the gradient of the log-probs over a Qwen-sized vocabulary (151,936)
  needs less scratch memory than ONE float32 [N, T, V] logits array (XLA's own accounting of the
  compiled program); without it, several such arrays."""
  cfg = transformer.preset("test", 151_936)
  graphdef, params = transformer.init_model(cfg, 0)
  N, P, T = 4, 8, 64
  args = (
    jnp.ones((N, P), jnp.int32),
    jnp.ones((N, P), bool),
    jnp.ones((N, T), jnp.int32),
    jnp.ones((N, T), bool),
  )
  full_logits = N * T * cfg.vocab_size * 4  # bytes of one float32 [N, T, V] array

  def scratch(chunk):
    loss = lambda p: completion_logprobs(
      graphdef, p, *args, with_entropy=True, logits_chunk=chunk
    ).logp_NxT.sum()
    return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes

  assert scratch(0) > 2 * full_logits
  assert scratch(16) < full_logits


def test_log_prob_and_entropy_vjp_matches_autodiff():
  """The log-prob / entropy pair's own VJP (one elementwise pass over the vocabulary) gives
  JAX's gradient of `log_softmax` and `entropy_from_logits`, with a banned (-inf) logit too."""
  rng = np.random.default_rng(0)
  z = jnp.asarray(3 * rng.normal(size=(3, 5, V)), jnp.float32).at[0, 0, 4].set(-jnp.inf)
  tok = jnp.asarray(rng.integers(0, V, (3, 5)), jnp.int32).at[0, 0].set(5)
  w1, w2 = (jnp.asarray(rng.normal(size=(3, 5)), jnp.float32) for _ in range(2))

  def plain(z, with_entropy):
    logp = jnp.take_along_axis(jax.nn.log_softmax(z, -1), tok[..., None], -1)[..., 0]
    ent = entropy_from_logits(z) if with_entropy else 0.0
    return jnp.sum(w1 * logp + w2 * ent)

  def own(z, with_entropy):
    logp, ent = _logp_entropy(z, tok, with_entropy)
    return jnp.sum(w1 * logp + w2 * ent)

  for with_entropy in (False, True):
    a, ga = jax.value_and_grad(plain)(z, with_entropy)
    b, gb = jax.value_and_grad(own)(z, with_entropy)
    np.testing.assert_allclose(b, a, rtol=1e-6)
    assert np.all(np.isfinite(gb))
    np.testing.assert_allclose(gb, ga, atol=1e-6)


def _lora_objective(graphdef, params, batch, lcfg, *, entropy_weight, **kw):
  """Gradient in LoRA adapters only (the head stays frozen) of a weighted sum of log-probs and,
  with `entropy_weight`, entropies."""

  def f(ad):
    s = completion_logprobs(
      graphdef,
      lora.attach(params, ad, lcfg),
      *batch,
      with_entropy=True,
      entropy_grad=bool(entropy_weight),
      temperature=0.7,
      **kw,
    )
    w = jnp.arange(1, T + 1, dtype=jnp.float32) / T
    return jnp.sum(s.logp_NxT * w) + entropy_weight * jnp.sum(s.entropy_NxT), s

  return jax.jit(jax.value_and_grad(f, has_aux=True))


@pytest.mark.parametrize("entropy_weight", [0.0, 0.5])
@pytest.mark.parametrize(
  "variant",
  [dict(), dict(logits_chunk=3), dict(group_size=G, logits_chunk=2)],
)
@pytest.mark.parametrize("tied", [True, False])
def test_frozen_head_gives_the_plain_gradient(entropy_weight, variant, tied):
  """`frozen_head` (the gradient's direction in h formed in the forward pass) gives the values
  and the adapter gradient of JAX's own backward pass: tied and untied heads with a soft-cap,
  at a temperature, with and without the entropy in the objective, chunked or not."""
  cfg = transformer.preset("test", V, tie_embeddings=tied, final_softcap=3.0)
  graphdef, params = transformer.init_model(cfg, 0)
  lcfg = lora.LoraConfig(rank=2)
  ad = jax.tree.map(lambda x: x + 0.1, lora.init_adapters(params, lcfg, seed=1))
  batch = _grouped_batch()
  run = lambda frozen: _lora_objective(
    graphdef, params, batch, lcfg, entropy_weight=entropy_weight, frozen_head=frozen, **variant
  )(ad)
  (la, sa), ga = run(True)
  (lb, sb), gb = run(False)
  np.testing.assert_allclose(la, lb, rtol=1e-6)
  np.testing.assert_allclose(sa.logp_NxT, sb.logp_NxT, atol=5e-6)
  np.testing.assert_allclose(sa.entropy_NxT, sb.entropy_NxT, atol=5e-6)
  scale = max(float(np.abs(y).max()) for y in jax.tree.leaves(gb))
  assert scale > 1e-2  # not vacuous
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    # float32 rounding: (g (onehot - p)) W against g ((onehot - p) W), then four layers.
    np.testing.assert_allclose(x, y, atol=2e-6 * scale + 1e-7)


def test_entropy_grad_false_holds_the_entropy_constant():
  cfg = transformer.preset("test", V)
  graphdef, params = transformer.init_model(cfg, 0)
  batch = _grouped_batch()
  ent = lambda p, **kw: jnp.sum(
    completion_logprobs(graphdef, p, *batch, with_entropy=True, **kw).entropy_NxT
  )
  g = jax.grad(ent)(params)
  assert max(float(np.abs(x).max()) for x in jax.tree.leaves(g)) > 1e-4
  g0 = jax.grad(functools.partial(ent, entropy_grad=False))(params)
  assert all(float(np.abs(x).max()) == 0.0 for x in jax.tree.leaves(g0))


def test_frozen_head_refuses_a_trained_head():
  """Declaring the head frozen while differentiating its weights is an error, not a silently
  wrong gradient."""
  cfg = transformer.preset("test", V)
  graphdef, params = transformer.init_model(cfg, 0)
  batch = _grouped_batch()
  loss = lambda p: jnp.sum(completion_logprobs(graphdef, p, *batch, frozen_head=True).logp_NxT)
  with pytest.raises(jax.errors.UnexpectedTracerError):
    jax.grad(loss)(params)


def _vocabulary_products(jaxpr, V) -> int:
  """dot_generals with a V-sized operand in `jaxpr` and every jaxpr nested in it (the chunk
  loop's body, the rematerialised chunk, custom VJPs)."""
  n = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      n += any(V in getattr(v.aval, "shape", ()) for v in eqn.invars)
    for p in eqn.params.values():
      for sub in p if isinstance(p, (tuple, list)) else (p,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          n += _vocabulary_products(sub, V)
  return n


@pytest.mark.parametrize("chunk", [0, 8])
def test_frozen_head_spares_the_backward_its_vocabulary_wide_products(chunk):
  """The gradient program in LoRA adapters at a 151,936-token vocabulary. Chunked, JAX's own
  backward recomputes each chunk's logits and multiplies by the head again (3 V-wide
  products in all); with `frozen_head` the forward's second product is the only other one (2),
  plus one for a differentiated entropy (3). Unchunked, JAX keeps the logits instead (2, at
  the cost of [N, T, V] residuals); `frozen_head` keeps [N, T, D] rows."""
  cfg = transformer.preset("test", 151_936)
  graphdef, params = transformer.init_model(cfg, 0)
  lcfg = lora.LoraConfig(rank=2)
  ad = lora.init_adapters(params, lcfg, seed=1)
  N, P, T_ = 4, 8, 32
  args = (
    jnp.ones((N, P), jnp.int32),
    jnp.ones((N, P), bool),
    jnp.ones((N, T_), jnp.int32),
    jnp.ones((N, T_), bool),
  )

  def grad(frozen, entropy_grad):
    loss = lambda a: (
      completion_logprobs(
        graphdef,
        lora.attach(params, a, lcfg),
        *args,
        with_entropy=True,
        entropy_grad=entropy_grad,
        frozen_head=frozen,
        logits_chunk=chunk,
      )
    ).logp_NxT.sum()
    return jax.grad(loss)

  products = lambda *flags: _vocabulary_products(jax.make_jaxpr(grad(*flags))(ad).jaxpr, V=151_936)
  assert products(False, False) == products(False, True) == (3 if chunk else 2)
  assert products(True, False) == 2
  assert products(True, True) == 3
  logits_bytes = N * T_ * cfg.vocab_size * 4  # one float32 [N, T, V] array
  scratch = lambda f: (
    jax.jit(grad(f, False)).lower(ad).compile().memory_analysis().temp_size_in_bytes
  )
  if chunk:
    assert scratch(True) < scratch(False) < logits_bytes
  else:
    assert scratch(True) < scratch(False) - 0.9 * logits_bytes
