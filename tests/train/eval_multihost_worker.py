"""One process of the multi-process evaluation test (tests/train/test_evaluation.py).

    python tests/train/eval_multihost_worker.py --out=FILE --tokenizer=PATH --data=PATH
        [--coordinator=HOST:PORT --num_processes=2 --process_id=I]

Every process builds the same 8-device data x fsdp mesh and tiny model, then
evaluates (a) fixed global batches, feeding only its own rows of each, and
(b) a held-out jsonl file through the one-pass pipeline, reading only its shard
of the records, and writes the metrics as JSON. The test runs `evaluate` in its
own process too, as the 1-process reference. XLA_FLAGS (fake CPU device count)
is set by the parent before this starts.
"""

import argparse
import contextlib
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cwm_jax.sharding.distributed import initialize_distributed  # noqa: E402

GLOBAL_BATCH, SEQ, FIXED_BATCHES = 16, 32, 2


def model_config(vocab_size: int):
  from cwm_jax.model import get_preset
  return get_preset("tiny", vocab_size=vocab_size, d_model=32, n_layers=2, scan_period=2,
                    layer_types=("global", "local"), n_heads=4, n_kv_heads=2, head_dim=8,
                    mlp_dim=64, window=8)


def fixed_batches(vocab_size: int) -> list[dict]:
  """Deterministic global [GLOBAL_BATCH, SEQ] batches with packed segments and a loss mask."""
  rng = np.random.RandomState(0)
  out = []
  for _ in range(FIXED_BATCHES):
    seg = np.cumsum(rng.rand(GLOBAL_BATCH, SEQ) < 0.1, axis=1).astype(np.int32) + 1
    out.append({
        "tokens": rng.randint(0, vocab_size, (GLOBAL_BATCH, SEQ)).astype(np.int32),
        "segment_ids": seg,
        "positions": np.stack([np.arange(SEQ) - np.searchsorted(r, r)
                               for r in seg]).astype(np.int32),
        "loss_mask": (rng.rand(GLOBAL_BATCH, SEQ) < 0.9).astype(np.int32),
    })
  return out


def setup(vocab_size: int):
  """(mesh, model config, params, jitted eval sums) on the 8-device data x fsdp mesh.

  Parameters are drawn with numpy (the same in every process) and placed shard by
  shard: much faster than compiling the model's initialiser for 8 devices.
  """
  from cwm_jax.model.params import abstract_params
  from cwm_jax.sharding import MeshConfig, make_mesh, param_shardings
  from cwm_jax.train.evaluation import jit_eval_sums

  cfg = model_config(vocab_size)
  mesh = make_mesh(MeshConfig(data=2, fsdp=4))
  shardings = param_shardings(mesh, cfg)
  rng = np.random.RandomState(0)

  def place(spec, sharding):
    host = (0.05 * rng.standard_normal(spec.shape)).astype(spec.dtype)
    return jax.make_array_from_callback(spec.shape, sharding, lambda index: host[index])
  params = jax.tree.map(place, abstract_params(cfg), shardings)
  return mesh, cfg, params, jit_eval_sums(mesh, cfg, shardings, loss_chunk=SEQ)


def evaluate(tokenizer_path: str, data_path: str, model=None) -> dict:
  """Metrics of (a) the fixed batches and (b) the held-out file, in this process's share;
  `model` is `setup(...)`'s result, made here if not given."""
  from cwm_jax.sharding import batch_sharding
  from cwm_jax.sharding.distributed import local_rows
  from cwm_jax.tokenizer import load_tokenizer
  from cwm_jax.train.evaluation import HeldOutLoss, held_out_batches
  from data_pipelines.pipeline import PipelineConfig, SourceConfig

  vocab_size = load_tokenizer(tokenizer_path).vocab_size
  mesh, _, params, sums = model or setup(vocab_size)
  rows = local_rows(batch_sharding(mesh), GLOBAL_BATCH)
  mine = [{k: v[rows] for k, v in b.items()} for b in fixed_batches(vocab_size)]
  fixed = HeldOutLoss(lambda: contextlib.nullcontext(iter(mine)), None, sums)(params, 0)

  pipeline = PipelineConfig(sources=(SourceConfig("held_out", data_path, "text"),),
                            tokenizer_path=tokenizer_path, seq_len=SEQ, batch_size=GLOBAL_BATCH,
                            shuffle=False, pack_open_rows=1)
  make = held_out_batches(pipeline)
  opened = []

  def make_and_keep():
    opened.append(make())
    return opened[-1]
  held_out = HeldOutLoss(make_and_keep, 10, sums)(params, 0)
  local_batches = -(-opened[0].rows // (GLOBAL_BATCH // jax.process_count()))
  return {"rows": [rows.start, rows.stop], "fixed": fixed, "held_out": held_out,
          "local_rows": opened[0].rows, "local_batches": local_batches}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", required=True)
  ap.add_argument("--tokenizer", required=True)
  ap.add_argument("--data", required=True)
  ap.add_argument("--coordinator")
  ap.add_argument("--num_processes", type=int)
  ap.add_argument("--process_id", type=int)
  args = ap.parse_args()
  jax.config.update("jax_default_matmul_precision", "highest")
  multi = initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  assert len(jax.devices()) == 8, jax.devices()
  result = {"process_count": jax.process_count(), **evaluate(args.tokenizer, args.data)}
  with open(args.out, "w") as f:
    json.dump(result, f)
  if multi:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
