"""The Policy: model + tokenizer + partition rules + stop ids, built by a model-family registry.

Tasks and prompt sources never own the tokenizer; the policy does. A family turns the `model`
config section (and the task, for a character vocabulary) into a `Policy`:

  embedded   the presets of `models.transformer` (`tiny`, `test`, `bench`, `0.5b`) with a
             character tokenizer over the task's alphabet (`model.tokenizer=char`) or any
             `transformers` tokenizer saved in a local folder (`model.tokenizer=/path`);
             randomly initialised (warm-started by SFT).

Real Hugging Face checkpoints (config.json + safetensors from a local folder) become another
family here: the loop reads a policy, never a model family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from rl_jax import parallel, tokenizers
from rl_jax.models import transformer


@dataclasses.dataclass(frozen=True)
class Policy:
  """What the step needs to sample from and train a model.

  Attributes:
    family: the model family that built it.
    model_cfg: the decoder's architecture.
    graphdef: the model's NNX graph definition (parameters travel separately).
    tokenizer: text <-> ids (`tokenizers.Tokenizer`).
    partition_rules: regex on parameter path -> PartitionSpec (`parallel.param_specs`).
    stop_ids: token ids that end a completion.
    init: `(model_cfg, seed) -> params`, the family's initial parameters (host or device).
  """

  family: str
  model_cfg: transformer.TransformerConfig
  graphdef: Any
  tokenizer: tokenizers.Tokenizer
  partition_rules: tuple = parallel.TRANSFORMER_RULES
  stop_ids: tuple[int, ...] = ()
  init: Callable[[transformer.TransformerConfig, int], Any] = dataclasses.field(
    default=lambda cfg, seed: transformer.init_model(cfg, seed)[1], repr=False
  )

  @property
  def pad_id(self) -> int:
    return self.tokenizer.pad_id

  def init_params(self, seed: int, mesh=None):
    """Initial parameters, created directly at their shardings on `mesh` (if given)."""
    fn = lambda: self.init(self.model_cfg, seed)
    if mesh is None:
      return jax.jit(fn)()
    abstract = jax.eval_shape(fn)
    shardings = parallel.param_shardings(abstract, mesh, self.partition_rules)
    return jax.jit(fn, out_shardings=shardings)()


def embedded(model, task) -> Policy:
  """The `embedded` family: a preset at the tokenizer's vocabulary, randomly initialised."""
  alphabet = task.alphabet() if hasattr(task, "alphabet") else None
  tok = tokenizers.load_tokenizer(
    model.tokenizer, alphabet=alphabet, chat_template=model.chat_template
  )
  overrides = {
    k: getattr(model, k)
    for k in ("d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim")
    if getattr(model, k) is not None
  }
  cfg = transformer.preset(
    model.preset, tok.vocab_size, remat=model.remat, attention=model.attention, **overrides
  )
  graphdef, _ = transformer.abstract_model(cfg)
  return Policy("embedded", cfg, graphdef, tok, stop_ids=tuple(tok.stop_ids))


FAMILIES: dict[str, Callable[..., Policy]] = {"embedded": embedded}


def build(model, task) -> Policy:
  """The policy the `model` config section names (`model.family`)."""
  if model.family not in FAMILIES:
    raise ValueError(
      f"config field 'model.family'={model.family!r} is unknown; choose one of {sorted(FAMILIES)}"
    )
  if model.preset not in transformer.PRESETS:
    raise ValueError(
      f"config field 'model.preset'={model.preset!r} is unknown; choose one of "
      f"{sorted(transformer.PRESETS)}"
    )
  return FAMILIES[model.family](model, task)
