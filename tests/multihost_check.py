"""Run by tests/test_multihost.py in a fresh process (the device count is fixed at start-up):

  python tests/multihost_check.py restore WORKDIR STEP OUT.npz DATA FSDP

restores WORKDIR's checkpoint STEP onto a (data=DATA, fsdp=FSDP) mesh of this process's
devices (XLA_FLAGS gives the count), checks that the parameters really are split over fsdp, and
writes them (flat names -> arrays) to OUT.npz.
"""

import json
import os
import sys

import jax
import ml_collections
import numpy as np


def restore(workdir: str, step: int, out: str, data: int, fsdp: int) -> None:
  from rl_jax import config as config_lib
  from rl_jax import loop
  from rl_jax.checkpoint import Checkpointer
  from rl_jax.parallel import path_str

  with open(os.path.join(workdir, "config.json")) as f:
    cd = config_lib.apply_overrides(
      ml_collections.ConfigDict(json.load(f)),
      {
        "mesh.data": str(data),
        "mesh.fsdp": str(fsdp),
        "mesh.dcn_data": "1",
        "distributed.initialize": "off",
      },
    )
  config = config_lib.from_configdict(cd)
  exp = loop.Experiment.build(config)
  assert dict(exp.mesh.shape) == {"data": data, "fsdp": fsdp, "tensor": 1}
  params = exp.policy.init_params(config.seed, exp.mesh)
  ckpt = Checkpointer(workdir)
  state, _, meta = ckpt.restore(step, exp.rl_state(params), jax.random.key(config.seed))
  ckpt.close()
  assert meta["step"] == step
  leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
  split = [path_str(p) for p, x in leaves if "fsdp" in str(x.sharding.spec)]
  assert split, "no parameter is split over fsdp: the restore did not use the new mesh"
  np.savez(out, **{path_str(p): np.asarray(x) for p, x in leaves})
  print(f"restored step {step} onto {dict(exp.mesh.shape)}; {len(split)} arrays split over fsdp")


if __name__ == "__main__":
  command, *args = sys.argv[1:]
  if command != "restore":
    raise SystemExit(f"unknown command {command!r}")
  restore(args[0], int(args[1]), args[2], int(args[3]), int(args[4]))
