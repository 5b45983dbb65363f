"""Training throughput (tokens/s) and MFU of the real sharded train step.

    python -m benchmarks.train_mfu --model=tiny --seq=256 --batch=8 --steps=5      # CPU smoke
    python -m benchmarks.train_mfu --model=cwm_1b --seq=8192 --batch=8 --steps=20  # one H200
    python -m benchmarks.train_mfu --model=cwm_8b --seq=8192 --batch=64 --mesh=fsdp:-1

Runs `cwm_jax.train.jit_train_step` (chunked loss, AdamW, donation) on every
visible device with synthetic tokens, after `--warmup` untimed steps (compile).

    MFU = tokens/s * train FLOPs/token / (peak FLOP/s per device * devices)
    train FLOPs/token = 6 * P_matmul + 3 * attention (see cwm_jax/model/flops.py:
    matmul weights incl. lm_head, attention counted on the causal / window mask)

Remat recomputation is not in MFU; HFU (with it) is printed next to it. Peak
FLOP/s per device comes from `--peak_tflops` or the dense bf16 table below by
device kind; on CPU without `--peak_tflops` only tokens/s is reported.
Defaults are memory-sane for one large accelerator: bf16 compute, f32 params
and AdamW state, remat "full", loss chunks of 1024 positions. The planner's
per-device memory estimate (`cwm_jax.sharding.plan`) is printed next to XLA's.
"""

from __future__ import annotations

import os

# Let XLA take most of the accelerator memory (GPU default is 75%); before jax import.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cwm_jax.model import get_preset  # noqa: E402
from cwm_jax.model.attention import Mask, choose_impl  # noqa: E402
from cwm_jax.model.flops import (FORMULA, doc_lengths_from_segments, flops_per_token,  # noqa: E402
                                 hardware_flops_per_token)
from cwm_jax.model.params import count_params  # noqa: E402
from cwm_jax.sharding import MeshConfig, batch_sharding, make_mesh  # noqa: E402
from cwm_jax.sharding.plan import plan  # noqa: E402
from cwm_jax.train import (OptimizerConfig, init_train_state, jit_train_step, make_optimizer,  # noqa: E402
                           train_state_shardings)

# Dense bf16 peak FLOP/s per device (vendor numbers, no sparsity), matched by
# substring of `device.device_kind`, first match wins.
PEAK_FLOPS = (
    ("GH200", 989e12), ("H200", 989e12), ("H100", 989e12), ("H800", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L4", 121e12),
    ("TPU v6", 918e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5p", 459e12),
    ("TPU v5", 459e12), ("TPU v4", 275e12), ("TPU v3", 123e12),
)


def peak_flops_per_device(device, override_tflops=None):
  if override_tflops:
    return override_tflops * 1e12
  for name, flops in PEAK_FLOPS:
    if name.lower() in device.device_kind.lower():
      return flops
  return None


def planner_attention(cfg, platform, seq, packed) -> str:
  """The planner's attention family for what `impl` resolves to on this platform."""
  impl = cfg.attention_impl
  if impl == "auto":
    seg = jnp.zeros((1, seq), jnp.int32) if packed else None
    mask = Mask(causal=True, q_segment_ids=seg, kv_segment_ids=seg)
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
    impl = choose_impl(platform, mask, jnp.dtype(cfg.dtype), (1, seq, cfg.n_heads, cfg.head_dim),
                       (1, seq, cfg.n_kv_heads, cfg.head_dim))
  return "reference" if impl == "reference" else "flash"


def _count(n: int) -> str:
  return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def parse_mesh(text: str) -> MeshConfig:
  sizes = {}
  for part in filter(None, text.split(",")):
    name, _, size = part.partition(":")
    sizes[name] = int(size)
  return MeshConfig(**{"data": 1, **sizes})


def _mean_flops(counts):
  """Field-wise mean of FlopCount tuples (one per packed row)."""
  return type(counts[0])(matmul=float(np.mean([c.matmul for c in counts])),
                         attention=float(np.mean([c.attention for c in counts])))


def synthetic_batch(cfg, batch, seq, packed, seed=0):
  """Random tokens; with `packed`, documents of random length (segment ids, positions)."""
  rng = np.random.RandomState(seed)
  out = {"tokens": rng.randint(0, cfg.vocab_size, (batch, seq)).astype(np.int32)}
  if packed:
    seg = np.cumsum(rng.rand(batch, seq) < 4.0 / seq, axis=1).astype(np.int32)
    out["segment_ids"] = seg
    out["positions"] = np.stack([np.arange(seq) - np.searchsorted(r, r) for r in seg]).astype(np.int32)
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", default="tiny")
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--batch", type=int, default=8, help="global batch (rows) per step")
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--remat", default="full")
  ap.add_argument("--attention_impl", default="auto")
  ap.add_argument("--dtype", default="bfloat16", help="compute dtype")
  ap.add_argument("--param_dtype", default="float32")
  ap.add_argument("--accum_steps", type=int, default=1)
  ap.add_argument("--loss_chunk", type=int, default=1024)
  ap.add_argument("--mesh", default="fsdp:-1", help="axis:size list; -1 = the remaining devices")
  ap.add_argument("--packed", action="store_true", help="packed documents (segment ids)")
  ap.add_argument("--peak_tflops", type=float, default=None, help="per-device peak override")
  ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
  args = ap.parse_args(argv)

  cfg = get_preset(args.model, remat=args.remat, attention_impl=args.attention_impl,
                   dtype=args.dtype, param_dtype=args.param_dtype)
  mesh = make_mesh(parse_mesh(args.mesh))
  device = jax.devices()[0]
  n_dev = jax.device_count()
  opt = make_optimizer(OptimizerConfig(schedule="constant", warmup_steps=0))
  shardings = train_state_shardings(mesh, cfg, opt)
  state = init_train_state(cfg, opt, jax.random.key(0), mesh=mesh)
  step = jit_train_step(mesh, cfg, opt, shardings, accum_steps=args.accum_steps,
                        loss_chunk=args.loss_chunk)
  host_batch = synthetic_batch(cfg, args.batch, args.seq, args.packed)
  batch = {k: jax.device_put(v, batch_sharding(mesh)) for k, v in host_batch.items()}

  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = step.jitted.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  xla_bytes = mem.argument_size_in_bytes + mem.temp_size_in_bytes + \
      mem.output_size_in_bytes - mem.alias_size_in_bytes
  mesh_shape = dict(mesh.shape)
  predicted = plan(cfg, batch=args.batch, seq=args.seq, mesh_shape=mesh_shape,
                   accum_steps=args.accum_steps, loss_chunk=args.loss_chunk,
                   attention=planner_attention(cfg, device.platform, args.seq, args.packed))

  for _ in range(args.warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - t0

  tokens_per_s = args.batch * args.seq * args.steps / elapsed
  # Packed rows: attention FLOPs count only pairs within a document (row average).
  docs_per_row = ([doc_lengths_from_segments(r) for r in host_batch["segment_ids"]]
                  if args.packed else [None])
  f = _mean_flops([flops_per_token(cfg, args.seq, d) for d in docs_per_row])
  hw = float(np.mean([hardware_flops_per_token(cfg, args.seq, cfg.remat, d) for d in docs_per_row]))
  peak = peak_flops_per_device(device, args.peak_tflops)
  result = {
      "model": args.model, "params": count_params(cfg), "seq": args.seq, "batch": args.batch,
      "accum_steps": args.accum_steps, "remat": cfg.remat, "attention_impl": cfg.attention_impl,
      "dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "packed": args.packed,
      "device_kind": device.device_kind, "devices": n_dev, "mesh": mesh_shape,
      "step_s": elapsed / args.steps, "tokens_per_s": tokens_per_s,
      "tokens_per_s_per_device": tokens_per_s / n_dev,
      "train_flops_per_token": f.train, "attention_fraction": f.attention_fraction,
      "compile_s": compile_s, "loss": float(metrics["loss"]),
      "xla_bytes_per_device": xla_bytes, "planned_bytes_per_device": predicted.total,
  }
  if peak:
    result["peak_flops_per_device"] = peak
    result["mfu"] = tokens_per_s * f.train / (peak * n_dev)
    result["hfu"] = tokens_per_s * hw / (peak * n_dev)
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    result["peak_bytes_in_use"] = stats["peak_bytes_in_use"]

  print(f"{args.model} ({_count(count_params(cfg))} params) seq {args.seq} batch {args.batch} "
        f"accum {args.accum_steps} remat {cfg.remat} attention {cfg.attention_impl} "
        f"compute {cfg.dtype} params {cfg.param_dtype}{' packed' if args.packed else ''}")
  print(f"devices: {n_dev} x {device.device_kind} ({device.platform}), mesh {mesh_shape}")
  print(f"compile {compile_s:.1f} s; step {1e3 * result['step_s']:.1f} ms; "
        f"{tokens_per_s:,.0f} tokens/s ({tokens_per_s / n_dev:,.0f} per device); loss {result['loss']:.4f}")
  print(f"memory per device: XLA {xla_bytes / 1e9:.2f} GB (args+temp+unaliased out), "
        f"planner {predicted.total / 1e9:.2f} GB"
        + (f", measured peak {result['peak_bytes_in_use'] / 1e9:.2f} GB" if "peak_bytes_in_use" in result else ""))
  print(f"train FLOPs/token {f.train:.4e} (attention {100 * f.attention_fraction:.1f}%), "
        f"with remat recompute {hw:.4e}")
  if peak:
    print(f"MFU {100 * result['mfu']:.1f}%  HFU {100 * result['hfu']:.1f}%  "
          f"(peak {peak / 1e12:.0f} TFLOP/s per device)")
  else:
    print("MFU: no peak FLOP/s known for this device; pass --peak_tflops")
  print(f"formula: {FORMULA}")
  if args.json:
    with open(args.json, "a") as fh:
      fh.write(json.dumps(result) + "\n")
  return result


if __name__ == "__main__":
  main()
