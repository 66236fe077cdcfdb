"""Run by tests/test_hf.py in a subprocess with 8 fake CPU devices: a checkpoint loaded onto a
(data=2, fsdp=2, tensor=2) mesh gives the logits of the one-device load. Prints JSON."""

import json
import sys

import jax
import numpy as np

from rl_jax import parallel
from rl_jax.models import hf


def main(folder: str) -> None:
  assert jax.device_count() == 8, jax.devices()
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  policy, one = hf.from_pretrained(folder)
  _, sharded = hf.from_pretrained(folder, mesh=mesh)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 97, (4, 10)).astype(np.int32)
  mask = np.arange(10)[None] >= np.array([[0], [3], [6], [9]])
  tokens = np.where(mask, tokens, 0)
  batch = parallel.shard_batch((tokens, mask), mesh)
  a = np.asarray(jax.jit(lambda p, t, m: hf.logits(policy, p, t, m))(one, tokens, mask))
  b = np.asarray(jax.jit(lambda p, t, m: hf.logits(policy, p, t, m))(sharded, *batch))
  kernel = sharded["layers"][0]["attn"]["q_proj"]["kernel"]
  print(
    json.dumps(
      dict(
        max_diff=float(np.abs(a - b)[mask].max()),
        scale=float(np.abs(a).max()),
        q_spec=str(kernel.sharding.spec),
        devices=len(kernel.sharding.device_set),
      )
    )
  )


if __name__ == "__main__":
  main(sys.argv[1])
