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
    load: `mesh -> params` for a family with stored weights (a checkpoint), placed at their
      shardings; None = random initialisation from the seed.
  """

  family: str
  model_cfg: transformer.TransformerConfig
  graphdef: Any
  tokenizer: tokenizers.Tokenizer
  partition_rules: tuple = parallel.TRANSFORMER_RULES
  stop_ids: tuple[int, ...] = ()
  load: Callable[[Any], Any] | None = dataclasses.field(default=None, repr=False)

  @property
  def pad_id(self) -> int:
    return self.tokenizer.pad_id

  def abstract_params(self):
    """The parameters' shapes and dtypes, allocating nothing."""
    return transformer.abstract_model(self.model_cfg)[1]

  def init_params(self, seed: int, mesh=None):
    """Initial parameters at their shardings on `mesh` (if given): the family's stored weights,
    or a random initialisation from `seed` created directly at its shardings."""
    if self.load is not None:
      return self.load(mesh)
    fn = lambda: transformer.init_model(self.model_cfg, seed)[1]
    if mesh is None:
      return jax.jit(fn)()
    shardings = parallel.param_shardings(self.abstract_params(), mesh, self.partition_rules)
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
    model.preset,
    tok.vocab_size,
    remat=model.remat,
    attention=model.attention,
    dtype=model.dtype,
    param_dtype=model.param_dtype,
    **overrides,
  )
  graphdef, _ = transformer.abstract_model(cfg)
  return Policy("embedded", cfg, graphdef, tok, stop_ids=tuple(tok.stop_ids))


def hf(model, task) -> Policy:
  """The `hf` family: a Hugging Face checkpoint from the local folder `model.path` (its
  config, its tokenizer, its weights; `models.hf`)."""
  del task  # the checkpoint's tokenizer serves any task
  from rl_jax.models import hf as hf_lib  # pylint: disable=import-outside-toplevel

  if not model.path:
    raise ValueError("config field 'model.path' must name a Hugging Face checkpoint folder")
  return hf_lib.policy_from_folder(
    model.path,
    chat_template=model.chat_template,
    remat=model.remat,
    attention=model.attention,
    dtype=model.dtype,
    param_dtype=model.param_dtype,
  )


FAMILIES: dict[str, Callable[..., Policy]] = {"embedded": embedded, "hf": hf}


def build(model, task) -> Policy:
  """The policy the `model` config section names (`model.family`)."""
  if model.family not in FAMILIES:
    raise ValueError(
      f"config field 'model.family'={model.family!r} is unknown; choose one of {sorted(FAMILIES)}"
    )
  if model.family == "embedded" and model.preset not in transformer.PRESETS:
    raise ValueError(
      f"config field 'model.preset'={model.preset!r} is unknown; choose one of "
      f"{sorted(transformer.PRESETS)}"
    )
  return FAMILIES[model.family](model, task)
