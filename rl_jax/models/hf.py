"""Hugging Face checkpoints from a local folder: config, weights and tokenizer.

`from_pretrained(path)` reads a folder in the Hugging Face layout (`config.json`,
`model.safetensors` or sharded `model-*.safetensors` with `model.safetensors.index.json`, and
the tokenizer files) and returns a `Policy`: the one decoder of `models.transformer`
configured as the checkpoint's family, its parameters, and the folder's tokenizer. Weights are
read one tensor at a time and placed directly at their target sharding, so no full copy of the
model is held on the host.

Families (`config.json`'s `model_type`): `llama` (Llama 3.x with its rope scaling; Llama 2),
`qwen2` (Qwen2 / Qwen2.5: q/k/v bias), `qwen3` (Qwen3 dense: q/k norm), `gemma2` (soft-capping,
alternating sliding-window layers) and `gemma3_text` (Gemma 3 text: q/k norm, 5 sliding layers
to 1 global, a local RoPE base, linear RoPE scaling). Each is a configuration of the one decoder,
not a copy of it. A feature the decoder does not have (other RoPE types, Qwen's sliding window,
an attention output bias, the multimodal Gemma 3) is refused with an error naming the field,
never approximated. Nothing is downloaded: `path` is a folder.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from rl_jax import parallel
from rl_jax.models import transformer

FAMILIES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3_text")
GEMMA = ("gemma2", "gemma3_text")
# Gemma's defaults where a config.json leaves the key out (transformers' configuration classes).
_GEMMA_DEFAULTS = {
  "gemma2": dict(
    query_pre_attn_scalar=256,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    sliding_window=4096,
    sliding_window_pattern=2,
    rope_theta=10_000.0,
  ),
  "gemma3_text": dict(
    query_pre_attn_scalar=256,
    attn_logit_softcapping=None,
    final_logit_softcapping=None,
    sliding_window=4096,
    sliding_window_pattern=6,
    rope_theta=1_000_000.0,
  ),
}


class CheckpointFormatError(ValueError):
  """The folder is not a checkpoint rl_jax can load; the message names the file or field."""


def _read_config(path: str) -> dict:
  file = os.path.join(path, "config.json")
  if not os.path.isdir(path):
    raise CheckpointFormatError(f"model.path={path!r} is not a folder")
  if not os.path.exists(file):
    raise CheckpointFormatError(f"{file} is missing: not a Hugging Face checkpoint folder")
  with open(file) as f:
    return json.load(f)


def _rope(params: dict, default_theta: float) -> tuple[float, tuple | None]:
  """(RoPE base, scaling) of one set of rope parameters: scaling None (default), ("linear",
  factor) or ("llama3", factor, low, high, original); other scaled RoPE types are refused."""
  kind = params.get("rope_type") or params.get("type") or "default"
  theta = float(params.get("rope_theta", default_theta))
  if kind == "default":
    return theta, None
  if kind == "linear":
    return theta, ("linear", float(params["factor"]))
  if kind == "llama3":
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in keys if k not in params]
    if missing:
      raise CheckpointFormatError(f"config.json: llama3 rope scaling lacks {missing}")
    return theta, (
      "llama3",
      float(params["factor"]),
      float(params["low_freq_factor"]),
      float(params["high_freq_factor"]),
      int(params["original_max_position_embeddings"]),
    )
  raise CheckpointFormatError(
    f"config.json: rope type {kind!r} is not supported yet; supported: default, linear, llama3"
  )


def _rope_fields(hf: dict, family: str) -> dict:
  """rope_theta / rope_scaling / rope_local_theta of either config.json layout: transformers
  5's `rope_parameters` (per layer type for Gemma 3) or the older rope_theta, rope_scaling and
  rope_local_base_freq keys."""
  default_theta = _GEMMA_DEFAULTS.get(family, {}).get("rope_theta", 10_000.0)
  legacy = dict(hf.get("rope_scaling") or {})
  legacy.setdefault("rope_theta", hf.get("rope_theta", default_theta))
  params = hf.get("rope_parameters") or {}
  if "full_attention" in params:  # Gemma 3: one set per layer type
    theta, scaling = _rope(params["full_attention"], default_theta)
    local = params.get("sliding_attention") or {}
    local_theta, local_scaling = _rope(local, hf.get("rope_local_base_freq", 10_000.0))
    if local_scaling is not None:
      raise CheckpointFormatError("config.json: scaled RoPE on sliding layers is not supported")
  else:
    theta, scaling = _rope(dict(legacy, **params), default_theta)
    local_theta = hf.get("rope_local_base_freq", 10_000.0) if family == "gemma3_text" else None
  return dict(rope_theta=theta, rope_scaling=scaling, rope_local_theta=local_theta)


def _gemma_fields(hf: dict, family: str) -> dict:
  """The decoder fields of Gemma 2 / Gemma 3 text: (1 + w) norms, norms after attention and
  MLP, embedding scaling, GeGLU, query scalar, soft-capping, sliding-window layers."""
  d = _GEMMA_DEFAULTS[family]
  get = lambda key: hf.get(key, d[key])  # noqa: E731 - a config key with the family's default
  if hf.get("use_bidirectional_attention"):
    raise CheckpointFormatError("config.json: use_bidirectional_attention is not supported")
  layers = hf["num_hidden_layers"]
  layer_types = hf.get("layer_types") or [
    "sliding_attention" if (i + 1) % get("sliding_window_pattern") else "full_attention"
    for i in range(layers)
  ]
  unknown = set(layer_types) - {"sliding_attention", "full_attention"}
  if unknown or len(layer_types) != layers:
    raise CheckpointFormatError(f"config.json: layer_types {layer_types} are not supported")
  window = get("sliding_window")
  return dict(
    embed_scale=True,
    norm_offset=1.0,
    sandwich_norms=True,
    activation="gelu",
    query_scalar=float(get("query_pre_attn_scalar")),
    attn_softcap=get("attn_logit_softcapping"),
    final_softcap=get("final_logit_softcapping"),
    sliding_window=int(window) if window else None,
    sliding_layers=tuple(t == "sliding_attention" for t in layer_types) if window else (),
  )


def _check_supported(hf: dict, family) -> None:
  if family == "gemma3":
    raise CheckpointFormatError(
      "config.json: model_type 'gemma3' is the multimodal Gemma 3; rl_jax loads the text-only "
      "decoder (model_type 'gemma3_text', as gemma-3-1b) and not yet the multimodal checkpoints"
    )
  if family not in FAMILIES:
    raise CheckpointFormatError(
      f"config.json: model_type {family!r} is not supported; supported: {', '.join(FAMILIES)}"
    )
  if family not in GEMMA and (
    hf.get("use_sliding_window") or (family == "llama" and hf.get("sliding_window"))
  ):
    raise CheckpointFormatError("config.json: sliding-window attention is not supported yet")
  if family != "qwen2" and (hf.get("attention_bias") or hf.get("mlp_bias")):
    # Llama's and Qwen3's attention_bias also biases the output projection, which the decoder
    # has no parameter for (Qwen2's q/k/v bias is `qkv_bias`).
    raise CheckpointFormatError("config.json: attention_bias / mlp_bias are not supported yet")
  act = hf.get("hidden_activation") or hf.get("hidden_act") or "silu"
  if act != ("gelu_pytorch_tanh" if family in GEMMA else "silu"):
    raise CheckpointFormatError(f"config.json: activation {act!r} is not supported for {family}")


def config_from_hf(
  hf: dict, *, dtype: str = "float32", param_dtype: str = "float32", **overrides
) -> transformer.TransformerConfig:
  """The decoder configuration of a Hugging Face `config.json` (as a dict)."""
  family = hf.get("model_type")
  _check_supported(hf, family)
  heads = hf["num_attention_heads"]
  fields = dict(
    vocab_size=hf["vocab_size"],
    d_model=hf["hidden_size"],
    num_layers=hf["num_hidden_layers"],
    num_heads=heads,
    num_kv_heads=hf.get("num_key_value_heads") or heads,
    head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
    mlp_dim=hf["intermediate_size"],
    norm_eps=hf.get("rms_norm_eps", 1e-6),
    tie_embeddings=bool(hf.get("tie_word_embeddings", family in GEMMA)),
    qkv_bias=family == "qwen2",
    qk_norm=family in ("qwen3", "gemma3_text"),
    dtype=dtype,
    param_dtype=param_dtype,
    **_rope_fields(hf, family),
  )
  if family in GEMMA:
    fields.update(_gemma_fields(hf, family))
  return transformer.TransformerConfig(**{**fields, **overrides})


_NORMS = {  # rl_jax norm -> Hugging Face name (Gemma's sandwich norms; Llama / Qwen)
  True: {
    "attn_norm": "input_layernorm",
    "attn_post_norm": "post_attention_layernorm",
    "mlp_norm": "pre_feedforward_layernorm",
    "mlp_post_norm": "post_feedforward_layernorm",
  },
  False: {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"},
}


def hf_name(path: str, sandwich_norms: bool = False) -> tuple[str, bool]:
  """(Hugging Face tensor name, transposed?) of an rl_jax parameter path: Hugging Face stores
  linear weights as [out, in], rl_jax kernels as [in, out]."""
  parts = path.split("/")
  if parts[0] == "embed":
    return "model.embed_tokens.weight", False
  if parts[0] == "final_norm":
    return "model.norm.weight", False
  if parts[0] == "lm_head":
    return "lm_head.weight", True
  i, rest = parts[1], parts[2:]
  prefix = f"model.layers.{i}."
  if rest[0] in _NORMS[sandwich_norms]:
    return prefix + _NORMS[sandwich_norms][rest[0]] + ".weight", False
  module = "self_attn" if rest[0] == "attn" else "mlp"
  leaf = {"kernel": "weight", "bias": "bias", "scale": "weight"}[rest[2]]
  return f"{prefix}{module}.{rest[1]}.{leaf}", rest[2] == "kernel"


_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}


class SafetensorsFile:
  """One tensor at a time from a `.safetensors` file, read with plain file reads into a fresh
  host array. `safetensors.safe_open` memory-maps the file, and the pages it touches count as
  the process's resident memory until the map closes: loading W4's 0.8 GB checkpoint that way
  peaked at 2.3 GB of RSS (weights, mapped file and transfer copies at once). The format: an
  8-byte little-endian header length, a JSON header of {name: dtype, shape, data_offsets}, the
  data."""

  def __init__(self, file: str):
    self.file = file
    with open(file, "rb") as f:
      (size,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    self.tensors, self.start = header, 8 + size

  def keys(self):
    return self.tensors.keys()

  def read(self, name: str) -> np.ndarray:
    info = self.tensors[name]
    if info["dtype"] not in _DTYPES:
      raise CheckpointFormatError(f"{self.file}: {name!r} has dtype {info['dtype']}")
    dtype = np.dtype(_DTYPES[info["dtype"]])
    begin, end = info["data_offsets"]
    count = int(np.prod(info["shape"], dtype=np.int64))
    if end - begin != count * dtype.itemsize:
      raise CheckpointFormatError(f"{self.file}: {name!r} has inconsistent data offsets")
    x = np.fromfile(self.file, dtype=dtype, count=count, offset=self.start + begin)
    if x.size != count:
      raise CheckpointFormatError(f"{self.file}: truncated inside {name!r}")
    return x.reshape(info["shape"])


def _weight_files(path: str) -> dict[str, str]:
  """Tensor name -> the safetensors file that holds it."""
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return {name: os.path.join(path, file) for name, file in weight_map.items()}
  single = os.path.join(path, "model.safetensors")
  if not os.path.exists(single):
    raise CheckpointFormatError(
      f"{path} has neither model.safetensors nor model.safetensors.index.json (only "
      "safetensors weights are read: never pickles)"
    )
  return {name: single for name in SafetensorsFile(single).keys()}


def load_params(
  path: str, cfg: transformer.TransformerConfig, mesh=None, rules=parallel.TRANSFORMER_RULES
) -> Any:
  """The checkpoint's weights as rl_jax parameters, each read alone and placed at its sharding
  on `mesh` (or the default device)."""
  _, abstract = transformer.abstract_model(cfg)
  shardings = None if mesh is None else parallel.param_shardings(abstract, mesh, rules)
  files = _weight_files(path)
  handles: dict[str, SafetensorsFile] = {}

  def load(key_path, leaf, sharding=None):
    name, transpose = hf_name(parallel.path_str(key_path), cfg.sandwich_norms)
    if name not in files:
      raise CheckpointFormatError(f"{path}: the weights lack {name!r} (for {cfg})")
    file = files[name]
    if file not in handles:
      handles[file] = SafetensorsFile(file)
    x = handles[file].read(name)
    x = np.ascontiguousarray(x.T) if transpose else x
    if tuple(x.shape) != tuple(leaf.shape):
      raise CheckpointFormatError(
        f"{file}: {name!r} has shape {tuple(x.shape)}, the model expects {tuple(leaf.shape)}"
      )
    x = x.astype(leaf.dtype, copy=False)
    return jax.device_put(x, sharding) if sharding is not None else jnp.asarray(x)

  if shardings is None:
    return jax.tree_util.tree_map_with_path(load, abstract)
  return jax.tree_util.tree_map_with_path(load, abstract, shardings)


def policy_from_folder(
  path: str,
  *,
  dtype: str = "float32",
  param_dtype: str = "float32",
  chat_template: bool | None = None,
  **overrides,
):
  """The `Policy` of the checkpoint in `path` (config and tokenizer read now; weights when
  `policy.init_params(seed, mesh)` is called, at their shardings on that mesh)."""
  from rl_jax import policy as policy_lib  # pylint: disable=import-outside-toplevel
  from rl_jax import tokenizers  # pylint: disable=import-outside-toplevel

  cfg = config_from_hf(_read_config(path), dtype=dtype, param_dtype=param_dtype, **overrides)
  tokenizer = tokenizers.HFTokenizer.from_folder(path, chat_template=chat_template)
  if tokenizer.vocab_size > cfg.vocab_size:
    raise CheckpointFormatError(
      f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, the model {cfg.vocab_size}"
    )
  graphdef, _ = transformer.abstract_model(cfg)
  return policy_lib.Policy(
    "hf",
    cfg,
    graphdef,
    tokenizer,
    stop_ids=tuple(tokenizer.stop_ids),
    load=lambda mesh: load_params(path, cfg, mesh),
  )


def from_pretrained(
  path: str,
  *,
  mesh=None,
  dtype: str = "float32",
  param_dtype: str = "float32",
  chat_template: bool | None = None,
  **overrides,
):
  """(Policy, params) of the Hugging Face checkpoint in the local folder `path`: the decoder
  configured as its family, its tokenizer, and its weights at their shardings on `mesh`."""
  policy = policy_from_folder(
    path, dtype=dtype, param_dtype=param_dtype, chat_template=chat_template, **overrides
  )
  return policy, policy.init_params(0, mesh)


_ARCHITECTURES = {
  "llama": "LlamaForCausalLM",
  "qwen2": "Qwen2ForCausalLM",
  "qwen3": "Qwen3ForCausalLM",
  "gemma2": "Gemma2ForCausalLM",
  "gemma3_text": "Gemma3ForCausalLM",
}


def family_of(cfg: transformer.TransformerConfig) -> str:
  """The Hugging Face family a decoder configuration is an instance of."""
  gemma = (cfg.embed_scale, cfg.norm_offset, cfg.sandwich_norms, cfg.activation)
  if gemma == (True, 1.0, True, "gelu") and not cfg.qkv_bias:
    return "gemma3_text" if cfg.qk_norm else "gemma2"
  llama_like = (False, 0.0, False, "silu") == gemma and not (
    cfg.query_scalar or cfg.attn_softcap or cfg.final_softcap or cfg.sliding_window
  )
  if not llama_like or cfg.rope_local_theta is not None:
    raise CheckpointFormatError(
      f"{cfg} is not an instance of a family that can be exported: {', '.join(FAMILIES)}"
    )
  return "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"


def _rope_to_hf(theta: float, scaling) -> dict:
  if scaling is None:
    return {"rope_type": "default", "rope_theta": theta}
  if scaling[0] == "linear":
    return {"rope_type": "linear", "rope_theta": theta, "factor": scaling[1]}
  factor, low, high, original = scaling[1:]
  return dict(
    rope_type="llama3",
    rope_theta=theta,
    factor=factor,
    low_freq_factor=low,
    high_freq_factor=high,
    original_max_position_embeddings=original,
  )


def _int_if_whole(x: float) -> float | int:
  return int(x) if float(x).is_integer() else x  # transformers types the Gemma scalar as int


def _gemma_to_hf(cfg: transformer.TransformerConfig, family: str) -> dict:
  rope = _rope_to_hf(cfg.rope_theta, cfg.rope_scaling)
  out = dict(
    hidden_activation="gelu_pytorch_tanh",
    query_pre_attn_scalar=_int_if_whole(cfg.query_scalar or cfg.head_dim),
    attn_logit_softcapping=cfg.attn_softcap,
    final_logit_softcapping=cfg.final_softcap,
    sliding_window=cfg.sliding_window,
    layer_types=[
      "full_attention" if cfg.window(i) is None else "sliding_attention"
      for i in range(cfg.num_layers)
    ],
    rope_parameters=rope,
  )
  if family == "gemma3_text":
    local = cfg.rope_local_theta or cfg.rope_theta
    out["rope_parameters"] = {
      "full_attention": rope,
      "sliding_attention": {"rope_type": "default", "rope_theta": local},
    }
    out["rope_local_base_freq"] = local
  return out


def config_to_hf(cfg: transformer.TransformerConfig) -> dict:
  """The `config.json` of a decoder configuration (the inverse of `config_from_hf`)."""
  family = family_of(cfg)
  out = dict(
    architectures=[_ARCHITECTURES[family]],
    model_type=family,
    vocab_size=cfg.vocab_size,
    hidden_size=cfg.d_model,
    intermediate_size=cfg.mlp_dim,
    num_hidden_layers=cfg.num_layers,
    num_attention_heads=cfg.num_heads,
    num_key_value_heads=cfg.num_kv_heads,
    head_dim=cfg.head_dim,
    rms_norm_eps=cfg.norm_eps,
    rope_theta=cfg.rope_theta,
    tie_word_embeddings=cfg.tie_embeddings,
    max_position_embeddings=32_768,  # RoPE positions have no bound here; a serving default
    torch_dtype="float32",  # `save_pretrained` writes float32 tensors
  )
  if family in GEMMA:
    return dict(out, **_gemma_to_hf(cfg, family))
  return dict(
    out,
    hidden_act="silu",
    rope_parameters=_rope_to_hf(cfg.rope_theta, cfg.rope_scaling),
    attention_bias=cfg.qkv_bias and family != "qwen2",
  )


def save_pretrained(policy, params, path: str) -> None:
  """Writes `params` as a Hugging Face folder (`config.json`, `model.safetensors`, and the
  policy's tokenizer when it is a Hugging Face one) that `transformers` and serving engines
  load. Arrays are gathered from their shardings one at a time."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  os.makedirs(path, exist_ok=True)
  tensors = {}
  for key_path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    name, transpose = hf_name(parallel.path_str(key_path), policy.model_cfg.sandwich_norms)
    x = np.asarray(jax.device_get(x), np.float32)
    tensors[name] = np.ascontiguousarray(x.T if transpose else x)
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_to_hf(policy.model_cfg), f, indent=2)
  hf_tokenizer = getattr(policy.tokenizer, "hf", None)
  if hf_tokenizer is not None:
    hf_tokenizer.save_pretrained(path)


def logits(policy, params, tokens_NxL, mask_NxL) -> jax.Array:
  """Float32 logits [N, L, V] of left- (or right-) padded tokens: positions count valid
  tokens, padded keys are masked (what the sampler and the trainer do)."""
  model = transformer.merge(policy.graphdef, params)
  mask = jnp.asarray(mask_NxL, bool)
  out, _ = model(jnp.asarray(tokens_NxL), transformer.positions_from_mask(mask), mask)
  return out
