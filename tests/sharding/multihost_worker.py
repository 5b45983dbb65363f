"""One process of the multi-process test (tests/sharding/test_distributed.py).

    python tests/sharding/multihost_worker.py --out=FILE [--coordinator=HOST:PORT
        --num_processes=2 --process_id=I]

Every process builds the same 8-device data x fsdp mesh over all processes'
devices, loads only its own rows of a deterministic global batch, runs the real
sharded train step (`cwm_jax.train.jit_train_step`, AdamW) twice and writes the
losses and parameter checksums as JSON (and the parameters as .npz).
XLA_FLAGS (fake CPU device count) is set by the parent before this starts.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cwm_jax.sharding.distributed import global_batch, initialize_distributed, local_rows  # noqa: E402

GLOBAL_BATCH, SEQ, STEPS = 16, 32, 2


def gather_params(params) -> dict:
  """Every parameter replicated and copied to host (as float64 numpy), by path."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    full = jax.jit(lambda v: v, out_shardings=jax.sharding.NamedSharding(
        x.sharding.mesh, jax.sharding.PartitionSpec()))(x)
    out[jax.tree_util.keystr(path)] = np.asarray(full, np.float64)
  return out


def checksums(host_params: dict) -> dict:
  """Order-sensitive summaries: sum, L1 norm and a cosine-weighted sum."""
  out = {}
  for name, a in host_params.items():
    a = a.ravel()
    out[name] = [float(a.sum()), float(np.abs(a).sum()), float((a * np.cos(np.arange(a.size))).sum())]
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", required=True)
  ap.add_argument("--coordinator")
  ap.add_argument("--num_processes", type=int)
  ap.add_argument("--process_id", type=int)
  args = ap.parse_args()
  jax.config.update("jax_default_matmul_precision", "highest")
  multi = initialize_distributed(args.coordinator, args.num_processes, args.process_id)

  from cwm_jax.model import get_preset
  from cwm_jax.sharding import MeshConfig, batch_sharding, make_mesh
  from cwm_jax.train import (OptimizerConfig, init_train_state, jit_train_step, make_optimizer,
                             train_state_shardings)

  assert len(jax.devices()) == 8, jax.devices()
  cfg = get_preset("tiny")
  mesh = make_mesh(MeshConfig(data=2, fsdp=4))
  sharding = batch_sharding(mesh)
  rng = np.random.RandomState(0)
  seg = np.cumsum(rng.rand(GLOBAL_BATCH, SEQ) < 0.1, axis=1).astype(np.int32)
  full = {
      "tokens": rng.randint(0, cfg.vocab_size, (GLOBAL_BATCH, SEQ)).astype(np.int32),
      "segment_ids": seg,
      "positions": np.stack([np.arange(SEQ) - np.searchsorted(row, row) for row in seg]).astype(np.int32),
      "loss_mask": (rng.rand(GLOBAL_BATCH, SEQ) < 0.9).astype(np.int32),
  }
  rows = local_rows(sharding, GLOBAL_BATCH)
  local = {k: v[rows] for k, v in full.items()}

  optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-2, schedule="constant",
                                             warmup_steps=0))
  state = init_train_state(cfg, optimizer, jax.random.key(0), mesh=mesh)
  step = jit_train_step(mesh, cfg, optimizer, train_state_shardings(mesh, cfg, optimizer))
  losses = []
  for _ in range(STEPS):
    state, metrics = step(state, global_batch(local, sharding))
    losses.append(float(metrics["loss"]))
  host = gather_params(state.params)
  np.savez(args.out + ".npz", **host)
  result = {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "multi": multi, "rows": [rows.start, rows.stop],
            "local_devices": len(jax.local_devices()), "losses": losses, "checksums": checksums(host)}
  with open(args.out, "w") as f:
    json.dump(result, f)
  if multi:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
