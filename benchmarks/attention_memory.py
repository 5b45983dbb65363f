"""Memory and time of attention forward+backward vs sequence length: the einsum
reference against the chunked (flash-style) kernel, on a global causal mask and
a local window.

    python -m benchmarks.attention_memory                       # CPU, 2k .. 32k
    python -m benchmarks.attention_memory --seqs=1024,2048 --repeats=1
    python -m benchmarks.attention_memory --dtype=bfloat16 --heads=8 --mem_cap_gb=40  # GPU

Memory is XLA's `temp_size_in_bytes` of the compiled gradient function (the
buffers besides inputs and outputs; deterministic, read from the compiled
executable, so it is reported even where running would not fit). Time is the
median wall time of `--repeats` runs after a warm-up, measured only where the
compiled temp fits under `--mem_cap_gb`; otherwise "skipped (needs X GB)".
Ratios are reference / chunked in the same process. The chunked kernel's
memory grows linearly in T (and its local-window cost too); the reference's
[T, T] scores grow quadratically.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks.timing import first_and_median
from cwm_jax.model.attention import attention
from cwm_jax.model.attention.mask import Mask


def grad_fn(impl: str, mask: Mask, chunk: int):
  """d/d(q, k, v) of sum(attention(q, k, v) * w): a full forward+backward."""
  def loss(q, k, v, w):
    out = attention(q, k, v, mask, impl=impl, chunk=chunk)
    return jnp.sum(out.astype(jnp.float32) * w)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def measure(impl, mask, chunk, shapes, dtype, repeats, cap_bytes):
  """(temp bytes, median seconds or None when over the cap)."""
  (B, T, N, K, H) = shapes
  args = [jax.ShapeDtypeStruct((B, T, N, H), dtype), jax.ShapeDtypeStruct((B, T, K, H), dtype),
          jax.ShapeDtypeStruct((B, T, K, H), dtype), jax.ShapeDtypeStruct((B, T, N, H), jnp.float32)]
  compiled = grad_fn(impl, mask, chunk).lower(*args).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  if temp > cap_bytes:
    return temp, None
  keys = jax.random.split(jax.random.key(T), 4)
  values = [jax.random.normal(kk, a.shape, a.dtype) for kk, a in zip(keys, args)]
  return temp, first_and_median(compiled, *values, repeats=repeats)[1]


def _mb(x):
  return f"{x / 2**20:,.1f}"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seqs", default="2048,4096,8192,16384,32768")
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--kv_heads", type=int, default=2)
  ap.add_argument("--head_dim", type=int, default=32)
  ap.add_argument("--window", type=int, default=1024)
  ap.add_argument("--chunk", type=int, default=512)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--mem_cap_gb", type=float, default=4.0,
                  help="run (time) a case only if its compiled temp memory is below this")
  ap.add_argument("--impls", default="reference,chunked")
  args = ap.parse_args(argv)

  dtype = jnp.dtype(args.dtype)
  cap = args.mem_cap_gb * 2**30
  impls = args.impls.split(",")
  device = jax.devices()[0]
  print(f"attention fwd+bwd: B={args.batch} N={args.heads} K={args.kv_heads} H={args.head_dim} "
        f"{args.dtype}, chunk {args.chunk}, on {device.platform} ({device.device_kind}), "
        f"{jax.device_count()} device(s); memory = compiled temp_size_in_bytes (MiB)")
  header = (f"{'T':>7} {'mask':>12} | " + " | ".join(f"{i + ' MiB':>14} {i + ' ms':>16}" for i in impls)
            + (" | mem ratio  time ratio" if len(impls) == 2 else "") + " | mem x per 2x T")
  print(header)
  print("-" * len(header))
  prev = {}
  for T in [int(s) for s in args.seqs.split(",")]:
    for mask_name, mask in (("global", Mask(causal=True)),
                            (f"local {args.window}", Mask(causal=True, window=args.window))):
      row, results = f"{T:>7} {mask_name:>12} | ", {}
      for impl in impls:
        temp, secs = measure(impl, mask, args.chunk,
                             (args.batch, T, args.heads, args.kv_heads, args.head_dim), dtype,
                             args.repeats, cap)
        results[impl] = (temp, secs)
        timing = f"{1e3 * secs:,.1f}" if secs is not None else f"skipped (needs {temp / 2**30:.1f} GB)"
        row += f"{_mb(temp):>14} {timing:>16} | "
      if len(impls) == 2:
        (t_a, s_a), (t_b, s_b) = results[impls[0]], results[impls[1]]
        time_ratio = f"{s_a / s_b:.2f}" if s_a and s_b else "-"
        row += f"{t_a / max(t_b, 1):>9.1f} {time_ratio:>11} | "
      growth = [f"{results[i][0] / prev[(mask_name, i)]:.1f}" if (mask_name, i) in prev else "-"
                for i in impls]
      row += " / ".join(growth)
      for i in impls:
        prev[(mask_name, i)] = results[i][0]
      print(row, flush=True)


if __name__ == "__main__":
  main()
