"""A calibrated quantile reward model (UARM, arXiv:2606.19818, methods.md B1), and the reward
that serves it inside the RL loop.

The model is the policy's decoder trunk (any `TransformerConfig`, initialisable from a policy's
parameters, as the PPO critic is in `logprobs.init_critic`) plus a head of 3 outputs read at the
last real token of `[prompt ; completion EOS]`: the quantiles (alpha/2, 0.5, 1 - alpha/2) of
the score a labeller gives the completion. Quantile crossing is impossible by construction
(a design choice): the head predicts the median m and two offsets,

  q_lo = m - softplus(o_lo),   q_mid = m,   q_hi = m + softplus(o_hi),

so no sorting (whose gradient would swap between outputs) is needed. It is trained with the
pinball loss (`objectives.quantile.pinball_loss`, summed over the 3 quantiles, mean over rows)
on (prompt, completion, score) records, then calibrated by conformalised quantile regression on
a held-out split (`objectives.quantile.cqr_offset`): the interval [q_lo - Q, q_hi + Q] covers a
new score with probability >= 1 - alpha.

  rl-jax train-rm --data=records.jsonl --out=rm/     train + calibrate + save (`rl_jax.cli`)
  rewards.rm.name=reward_model rewards.rm.path=rm/   serve it as a reward (`RewardModelScore`)

A saved model is a folder: `reward_model.json` (format, alpha, Q, tokenizer, length buckets,
model config, calibration report) and `params.safetensors` (never a pickle).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rl_jax import tokenizers, trainer
from rl_jax.models import transformer
from rl_jax.objectives import quantile
from rl_jax.parallel import path_str

FORMAT = "rl_jax.reward_model/1"
CONFIG_FILE, PARAMS_FILE = "reward_model.json", "params.safetensors"
MIN_ROWS = 8  # the smallest row bucket of a scoring call; buckets double from here


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """Every hyperparameter of reward-model training and calibration (the one source of truth:
  `rl-jax train-rm` flags and experiments set these fields).

  Attributes:
    alpha: target miscoverage; the quantiles are (alpha/2, 0.5, 1 - alpha/2).
    steps: optimizer steps on the training split.
    batch_size: records per step.
    learning_rate, warmup_steps, weight_decay, max_grad_norm: AdamW (`trainer.make_optimizer`).
    calibration_fraction: share of the records held out for CQR calibration (never trained on).
    seed: the split, the batch order and (without a policy to start from) the trunk's init.
    log_every: a progress line every this many steps.
  """

  alpha: float = 0.1
  steps: int = 400
  batch_size: int = 64
  learning_rate: float = 1e-3
  warmup_steps: int = 20
  weight_decay: float = 0.0
  max_grad_norm: float = 1.0
  calibration_fraction: float = 0.25
  seed: int = 0
  log_every: int = 100

  def __post_init__(self):
    if not 0.0 < self.alpha < 1.0:
      raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
    if not 0.0 < self.calibration_fraction < 1.0:
      raise ValueError(f"calibration_fraction must be in (0, 1), got {self.calibration_fraction}")
    for name in ("steps", "batch_size", "log_every"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class Record:
  """One labelled completion: the score a labeller (or a verifier) gave it."""

  prompt: str
  completion: str
  score: float


def check_records(rows: Sequence[Any], where: str = "records") -> list[Record]:
  """`Record`s from dicts with fields prompt/completion/score (or Records), checked: the fields
  present, texts strings, scores finite numbers. ValueError naming the first bad row."""
  out = []
  for i, row in enumerate(rows):
    if isinstance(row, Record):
      row = dataclasses.asdict(row)
    if not isinstance(row, dict):
      raise ValueError(f"{where}: row {i} is a {type(row).__name__}, not an object")
    missing = [k for k in ("prompt", "completion", "score") if k not in row]
    if missing:
      raise ValueError(f"{where}: row {i} lacks field(s) {missing} (has {sorted(row)})")
    if not isinstance(row["prompt"], str) or not isinstance(row["completion"], str):
      raise ValueError(f"{where}: row {i}: prompt and completion must be strings")
    score = row["score"]
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
      raise ValueError(f"{where}: row {i} has score {score!r}; scores must be finite numbers")
    out.append(Record(row["prompt"], row["completion"], float(score)))
  if not out:
    raise ValueError(f"{where}: no records")
  return out


def load_records(path: str) -> list[Record]:
  """The records of a JSONL file (one object with prompt/completion/score per line)."""
  if not os.path.isfile(path):
    raise ValueError(f"records file {path} does not exist")
  rows = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not a JSON object ({e.msg})") from None
  return check_records(rows, where=path)


def save_records(path: str, records: Sequence[Record]) -> None:
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(dataclasses.asdict(r)) + "\n")


# --- the model ------------------------------------------------------------------------------


def init_params(
  model_cfg: transformer.TransformerConfig,
  *,
  policy_params=None,
  seed: int = 0,
  median: float = 0.0,
  spread: float = 1.0,
) -> dict:
  """Reward-model parameters: a copy of `policy_params` (or a fresh trunk from `seed`) plus a
  zero-kernel head whose biases start at the median `median` and the offsets `spread` (so the
  first predictions are the label distribution's, and training starts from the trunk's
  features, as the critic does in `logprobs.init_critic`)."""
  if policy_params is None:
    trunk = transformer.init_model(model_cfg, seed)[1]
  else:
    trunk = jax.tree.map(jnp.copy, policy_params)
  raw = float(np.log(np.expm1(max(spread, 1e-3))))  # softplus^-1
  head = dict(
    kernel=jnp.zeros((model_cfg.d_model, 3), jnp.float32),
    bias=jnp.array([raw, median, raw], jnp.float32),
  )
  return dict(trunk=trunk, head=head)


def quantiles(graphdef, params, tokens_NxL, mask_NxL, last_N) -> jax.Array:
  """The (q_lo, q_mid, q_hi) of each row, float32 [N, 3], q_lo <= q_mid <= q_hi: the head on
  the final hidden state at index `last_N` (the row's last real token) of one causal pass over
  the left-padded prompt and right-padded completion `tokens_NxL` (valid where `mask_NxL`)."""
  model = transformer.merge(graphdef, params["trunk"])
  positions_NxL = transformer.positions_from_mask(mask_NxL)
  h_NxLxD, _ = model.hidden(tokens_NxL, positions_NxL, mask_NxL)
  h_NxD = jnp.take_along_axis(h_NxLxD, last_N[:, None, None], axis=1)[:, 0]
  out_Nx3 = h_NxD.astype(jnp.float32) @ params["head"]["kernel"] + params["head"]["bias"]
  mid = out_Nx3[:, 1]
  return jnp.stack(
    [mid - jax.nn.softplus(out_Nx3[:, 0]), mid, mid + jax.nn.softplus(out_Nx3[:, 2])], axis=-1
  )


def encode(tokenizer, prompts: Sequence[str], completions: Sequence[str], P: int, T: int):
  """(tokens int32 [N, P + T], mask bool [N, P + T], last int32 [N]): each prompt left-padded to
  P (`encode_prompt`), its completion plus EOS right-padded (and truncated) to T, and the index
  of the row's last real token."""
  prompt_NxP, pmask_NxP = tokenizers.encode_left_padded(tokenizer, prompts, P)
  completion_NxT, cmask_NxT = tokenizers.encode_right_padded(tokenizer, completions, T, eos=True)
  last_N = (P - 1 + cmask_NxT.sum(axis=1)).astype(np.int32)
  return (
    np.concatenate([prompt_NxP, completion_NxT], axis=1),
    np.concatenate([pmask_NxP, cmask_NxT], axis=1),
    last_N,
  )


def _bucket(n: int, smallest: int) -> int:
  """The smallest `smallest * 2^k` (k >= 0) that holds n."""
  size = smallest
  while size < n:
    size *= 2
  return size


def length_buckets(tokenizer, records: Sequence[Record]) -> tuple[int, int]:
  """(P, T): the longest prompt (with BOS) and completion (with EOS) of `records`. Training
  pads to exactly these (no wasted positions); scoring keeps them unless a longer text comes,
  then doubles them until it fits."""
  P = max(len(tokenizer.encode_prompt(r.prompt)) for r in records)
  T = max(len(tokenizer.encode(r.completion, eos=True)) for r in records)
  return P, T


@dataclasses.dataclass
class RewardModel:
  """A (trained, possibly calibrated) quantile reward model.

  Attributes:
    model_cfg: the trunk's architecture.
    tokenizer_spec: `{"kind": "char", "alphabet": ...}` or `{"kind": "folder", "path": ...}`.
    params: `{"trunk": transformer params, "head": {"kernel" [D, 3], "bias" [3]}}`.
    alpha: the miscoverage the quantile levels and the calibration target.
    offset: CQR's Q (0 before calibration).
    prompt_len, completion_len: the length buckets P and T (`length_buckets`).
    report: training and calibration numbers, saved with the model.
  """

  model_cfg: transformer.TransformerConfig
  tokenizer_spec: dict
  params: Any
  alpha: float
  offset: float = 0.0
  prompt_len: int = 16
  completion_len: int = 16
  report: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.tokenizer = make_tokenizer(self.tokenizer_spec)
    self.graphdef = transformer.abstract_model(self.model_cfg)[0]
    self.traces = 0  # how often the scoring forward pass was traced (compiled)
    self._forward = jax.jit(self._quantiles)

  def _quantiles(self, params, tokens_NxL, mask_NxL, last_N):
    self.traces += 1  # runs at trace time only
    return quantiles(self.graphdef, params, tokens_NxL, mask_NxL, last_N)

  def raw_quantiles(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """Uncalibrated (q_lo, q_mid, q_hi), float32 [N, 3], from one jitted forward per call at
    bucketed shapes: rows padded to a power of two (>= 8), lengths to the model's buckets."""
    n = len(prompts)
    if n != len(completions):
      raise ValueError(f"{n} prompts for {len(completions)} completions")
    if n == 0:
      return np.zeros((0, 3), np.float32)
    tok = self.tokenizer
    P = _bucket(max(len(tok.encode_prompt(p)) for p in prompts), self.prompt_len)
    T = _bucket(max(len(tok.encode(c, eos=True)) for c in completions), self.completion_len)
    rows = _bucket(n, MIN_ROWS)
    pad = rows - n
    tokens, mask, last = encode(
      tok, list(prompts) + [""] * pad, list(completions) + [""] * pad, P, T
    )
    return np.asarray(self._forward(self.params, tokens, mask, last))[:n]

  def score(self, prompts: Sequence[str], completions: Sequence[str]) -> dict[str, np.ndarray]:
    """`median`, calibrated `lo` = q_lo - Q and `hi` = q_hi + Q, and `width` = max(hi - lo, 0)
    (a negative Q can at most close an interval), each float32 [N]."""
    q = self.raw_quantiles(prompts, completions)
    lo, hi = q[:, 0] - self.offset, q[:, 2] + self.offset
    return dict(median=q[:, 1], lo=lo, hi=hi, width=np.maximum(hi - lo, 0.0).astype(np.float32))

  # --- saving -------------------------------------------------------------------------------

  def save(self, path: str) -> None:
    """Writes the folder `path` (created; existing files of ours are replaced)."""
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    os.makedirs(path, exist_ok=True)
    meta = dict(
      format=FORMAT,
      alpha=self.alpha,
      offset=self.offset,
      tokenizer=self.tokenizer_spec,
      prompt_len=self.prompt_len,
      completion_len=self.completion_len,
      model=dataclasses.asdict(self.model_cfg),
      report=self.report,
    )
    flat = {k: np.asarray(v) for k, v in _flatten(self.params).items()}
    save_file(flat, os.path.join(path, PARAMS_FILE))
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
      json.dump(meta, f, indent=2)

  @classmethod
  def load(cls, path: str) -> RewardModel:
    """The reward model saved in the folder `path`; ValueError if it is not one."""
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
      raise ValueError(f"{path} is not a reward model folder (no {CONFIG_FILE})")
    with open(config_path) as f:
      meta = json.load(f)
    if meta.get("format") != FORMAT:
      raise ValueError(f"{config_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["model"].items()}
    model_cfg = transformer.TransformerConfig(**fields)
    flat = load_file(os.path.join(path, PARAMS_FILE))
    target = jax.eval_shape(lambda: init_params(model_cfg, seed=0))
    params = _unflatten(target, flat, path)
    return cls(
      model_cfg,
      meta["tokenizer"],
      params,
      float(meta["alpha"]),
      float(meta["offset"]),
      int(meta["prompt_len"]),
      int(meta["completion_len"]),
      meta.get("report", {}),
    )


def make_tokenizer(spec: dict):
  """The tokenizer a saved spec names: a character vocabulary or a local HF folder."""
  if spec.get("kind") == "char":
    return tokenizers.CharTokenizer(spec["alphabet"])
  if spec.get("kind") == "folder":
    return tokenizers.load_tokenizer(spec["path"])
  raise ValueError(f"unknown tokenizer spec {spec!r} (kind 'char' or 'folder')")


def tokenizer_spec(tokenizer, folder: str | None = None) -> dict:
  """The spec that `make_tokenizer` turns back into `tokenizer`."""
  if isinstance(tokenizer, tokenizers.CharTokenizer):
    return dict(kind="char", alphabet=tokenizer.alphabet)
  if folder is None:
    raise ValueError("a non-character tokenizer is saved as its folder: give `folder`")
  return dict(kind="folder", path=os.path.abspath(folder))


def _flatten(tree) -> dict[str, Any]:
  return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflatten(target, flat: dict[str, np.ndarray], where: str):
  paths, treedef = jax.tree_util.tree_flatten_with_path(target)
  leaves = []
  for p, t in paths:
    key = path_str(p)
    if key not in flat:
      raise ValueError(f"{where}: {PARAMS_FILE} lacks {key!r} (another model config?)")
    if tuple(flat[key].shape) != tuple(t.shape):
      raise ValueError(f"{where}: {key!r} has shape {flat[key].shape}, expected {t.shape}")
    leaves.append(jnp.asarray(flat[key], t.dtype))
  return jax.tree_util.tree_unflatten(treedef, leaves)


# --- training and calibration -----------------------------------------------------------------


def split(records: Sequence[Record], fraction: float, seed: int) -> tuple[list, list]:
  """(train, calibration), split by PROMPT: a seeded shuffle of the distinct prompts, whole
  prompts moved to calibration until it holds about `fraction` of the records. CQR's guarantee
  needs calibration points exchangeable with the points served later; a completion whose prompt
  the model was trained on (with another completion) is not, and makes Q too small."""
  by_prompt: dict[str, list[int]] = {}
  for i, r in enumerate(records):
    by_prompt.setdefault(r.prompt, []).append(i)
  groups = list(by_prompt.values())
  order = np.random.default_rng([seed, 7]).permutation(len(groups))
  target, cal_idx = fraction * len(records), []
  for g in order:
    if len(cal_idx) >= target:
      break
    cal_idx.extend(groups[g])
  cal_set = set(cal_idx)
  return [r for i, r in enumerate(records) if i not in cal_set], [records[i] for i in cal_idx]


def make_train_step(graphdef, tx: optax.GradientTransformation, taus_Q) -> Callable:
  """Jitted `step(params, opt_state, tokens, mask, last, y) -> (params, opt_state, loss)`: one
  AdamW step on the pinball loss, summed over the quantiles and averaged over the rows."""

  def loss_fn(params, tokens_NxL, mask_NxL, last_N, y_N):
    q_Nx3 = quantiles(graphdef, params, tokens_NxL, mask_NxL, last_N)
    return jnp.mean(jnp.sum(quantile.pinball_loss(q_Nx3, y_N, taus_Q), axis=-1))

  def step(params, opt_state, tokens_NxL, mask_NxL, last_N, y_N):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens_NxL, mask_NxL, last_N, y_N)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def interval_stats(model: RewardModel, records: Sequence[Record]) -> dict[str, float]:
  """Coverage of the calibrated intervals, their mean width and the median's mean absolute
  error on `records`."""
  y = np.array([r.score for r in records], np.float32)
  s = score_records(model, records)
  covered = (s["lo"] <= y) & (y <= s["hi"])
  return dict(
    n=len(records),
    coverage=float(covered.mean()),
    mean_width=float(s["width"].mean()),
    median_mae=float(np.abs(s["median"] - y).mean()),
  )


def score_records(model: RewardModel, records: Sequence[Record], chunk: int = 256) -> dict:
  """`model.score` over many records, `chunk` rows per call (one compiled shape)."""
  parts = [
    model.score(
      [r.prompt for r in records[i : i + chunk]], [r.completion for r in records[i : i + chunk]]
    )
    for i in range(0, len(records), chunk)
  ]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def calibrate(model: RewardModel, records: Sequence[Record]) -> float:
  """Sets `model.offset` to CQR's Q on the calibration `records` (never trained on) and
  returns it."""
  quantile.cqr_rank(len(records), model.alpha)  # a clear error before any forward pass
  model.offset = 0.0
  s = score_records(model, records)
  y = np.array([r.score for r in records], np.float32)
  model.offset = float(quantile.cqr_offset(s["lo"], s["hi"], y, model.alpha))
  return model.offset


def train(
  records: Sequence[Record],
  *,
  model_cfg: transformer.TransformerConfig,
  tokenizer_spec: dict,
  settings: TrainSettings = TrainSettings(),
  policy_params=None,
  log: Callable[[str], None] = print,
) -> RewardModel:
  """Trains a quantile reward model on a split of `records` and calibrates it (CQR) on the
  rest; returns it with `report` holding the losses and the calibration set's coverage and
  mean width. `policy_params` (parameters of `model_cfg`) start the trunk; else a random one."""
  s = settings
  records = check_records(records)
  train_set, cal_set = split(records, s.calibration_fraction, s.seed)
  quantile.cqr_rank(len(cal_set), s.alpha)  # enough calibration records? (before training)
  if len(train_set) < s.batch_size:
    raise ValueError(f"{len(train_set)} training records, fewer than batch_size={s.batch_size}")
  tok = make_tokenizer(tokenizer_spec)
  P, T = length_buckets(tok, records)
  y_all = np.array([r.score for r in train_set], np.float32)
  lo, med, hi = np.quantile(y_all, [s.alpha / 2, 0.5, 1 - s.alpha / 2])
  params = init_params(
    model_cfg,
    policy_params=policy_params,
    seed=s.seed,
    median=float(med),
    spread=float(max(hi - med, med - lo, 1e-2)),
  )
  model = RewardModel(model_cfg, tokenizer_spec, params, s.alpha, 0.0, P, T)
  tokens, mask, last = encode(
    tok, [r.prompt for r in train_set], [r.completion for r in train_set], P, T
  )
  tx = trainer.make_optimizer(
    learning_rate=s.learning_rate,
    warmup_steps=s.warmup_steps,
    weight_decay=s.weight_decay,
    max_grad_norm=s.max_grad_norm,
  )
  step_fn = make_train_step(model.graphdef, tx, quantile.quantile_levels(s.alpha))
  params = jax.tree.map(jnp.copy, model.params)
  opt_state = tx.init(params)
  rng = np.random.default_rng([s.seed, 11])
  t0, losses, recent = time.time(), [], []
  log(
    f"reward model: {len(train_set)} training / {len(cal_set)} calibration records, "
    f"{model_cfg.num_params() / 1e6:.2f} M params, lengths {P}+{T}, alpha {s.alpha}"
  )
  for i in range(s.steps):
    idx = rng.integers(0, len(train_set), s.batch_size)
    params, opt_state, loss = step_fn(
      params, opt_state, tokens[idx], mask[idx], last[idx], y_all[idx]
    )
    recent.append(loss)
    if (i + 1) % s.log_every == 0 or i + 1 == s.steps:
      mean = float(np.mean(jax.device_get(recent)))
      losses.append((i + 1, mean))
      recent = []
      log(f"rm step {i + 1:5d}/{s.steps} | pinball loss {mean:.4f} | {time.time() - t0:.0f} s")
  model.params = params
  q = calibrate(model, cal_set)
  cal = interval_stats(model, cal_set)
  model.report = dict(
    settings=dataclasses.asdict(s),
    losses=losses,
    train_s=time.time() - t0,
    offset=q,
    calibration=cal,
  )
  log(
    f"calibrated (CQR) on {cal['n']} held-out records: Q = {q:+.4f}, coverage "
    f"{cal['coverage']:.1%} (target >= {1 - s.alpha:.0%}), mean width {cal['mean_width']:.3f}, "
    f"median MAE {cal['median_mae']:.3f}"
  )
  return model


# --- serving: the reward --------------------------------------------------------------------


class RewardModelScore:
  """The reward of a saved, calibrated reward model (`rewards.rm.name=reward_model`,
  `rewards.rm.path=DIR`): its median is the reward, and its calibrated interval width
  (q_hi + Q) - (q_lo - Q) is the extra `rm_interval_width` that the `uarm` preset reads.

  The model is loaded once; each batch is one jitted forward pass at bucketed shapes (rows to a
  power of two, lengths to the model's buckets), so steps of one bucket never recompile.
  """

  def __init__(self, path: str):
    self.model = RewardModel.load(path)

  def __call__(self, examples, completions: Sequence[str]) -> dict[str, np.ndarray]:
    s = self.model.score([e.prompt for e in examples], completions)
    return {"reward": s["median"].astype(np.float32), "rm_interval_width": s["width"]}
