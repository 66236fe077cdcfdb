"""Argument checks and dtype promotion shared by the objective modules (internal)."""

import jax
import jax.numpy as jnp


def as_float(x: jax.Array) -> jax.Array:
  """`x` as an array of at least float32 precision."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def check_rank(x: jax.Array, min_rank: int, name: str) -> None:
  if jnp.ndim(x) < min_rank:
    raise ValueError(f"{name} must have rank >= {min_rank}, got shape {jnp.shape(x)}.")


def check_same_shape(**arrays: jax.Array) -> None:
  """Raises ValueError naming the arrays unless all have one shape."""
  shapes = {name: jnp.shape(a) for name, a in arrays.items()}
  if len(set(shapes.values())) != 1:
    raise ValueError(f"{', '.join(shapes)} must have the same shape, got {shapes}.")
