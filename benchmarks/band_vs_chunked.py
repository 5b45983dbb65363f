"""Sliding-window attention on CPU: the band kernel against the chunked kernel
(forward and forward+backward of one attention call, float32, batch 1), over
window sizes, with the einsum reference as the check of both outputs. The
column band/chunked is how many times faster the band kernel ran (median of
per-round ratios, both called in turn round after round); `choose_impl` gives
windows up to `MAX_BAND_WINDOW_CPU` to the band kernel on CPU.

    python -m benchmarks.band_vs_chunked
    python -m benchmarks.band_vs_chunked --windows=16,64 --seqs=1024 --rounds=60

Heads are those of `forward_vs_hf`'s configs: `tiny` (4 query heads, 2 KV
heads, head dim 16) and `small` (8, 2, 32).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import interleaved, median_ratio
from cwm_jax.model.attention import Mask, attention, reference_attention

HEADS = {"tiny": (4, 2, 16), "small": (8, 2, 32)}


def bench(heads: str, W: int, T: int, rounds: int) -> tuple[float, ...]:
  N, K, H = HEADS[heads]
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(1, T, n, H)), jnp.float32) for n in (N, K, K))
  do = jnp.asarray(rng.normal(size=(1, T, N, H)), jnp.float32)
  mask = Mask(window=W)
  want = reference_attention(q, k, v, mask)
  fns = {}
  for impl in ("chunked", "band"):
    def f(q, k, v, impl=impl):
      return attention(q, k, v, mask, impl=impl)
    fwd = jax.jit(f)
    grad = jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) * do), argnums=(0, 1, 2)))
    err = float(jnp.max(jnp.abs(fwd(q, k, v) - want)))
    if err > 1e-4:
      raise AssertionError(f"{impl} differs from the reference by {err} (W={W}, T={T})")
    fns[f"{impl} fwd"] = lambda fwd=fwd: fwd(q, k, v)
    fns[f"{impl} fwd+bwd"] = lambda grad=grad: grad(q, k, v)
  t = interleaved(fns, rounds=rounds)
  ms = {name: 1e3 * float(np.median(ts)) for name, ts in t.items()}
  return (ms["chunked fwd"], ms["band fwd"], median_ratio(t["chunked fwd"], t["band fwd"]),
          ms["chunked fwd+bwd"], ms["band fwd+bwd"],
          median_ratio(t["chunked fwd+bwd"], t["band fwd+bwd"]))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--heads", default="tiny,small")
  ap.add_argument("--windows", default="16,32,64,128")
  ap.add_argument("--seqs", default="256,1024")
  ap.add_argument("--rounds", type=int, default=40)
  args = ap.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; float32, "
        f"batch 1, {args.rounds} interleaved rounds; ms per call")
  print(f"{'heads':>6} {'W':>4} {'T':>5} | {'chunked':>8} {'band':>7} {'band/chunked':>12} | "
        f"{'chunked':>8} {'band':>7} {'band/chunked':>12}   (fwd | fwd+bwd)")
  for heads in args.heads.split(","):
    for W in map(int, args.windows.split(",")):
      for T in map(int, args.seqs.split(",")):
        cf, bf, rf, cg, bg, rg = bench(heads, W, T, args.rounds)
        print(f"{heads:>6} {W:>4} {T:>5} | {cf:8.3f} {bf:7.3f} {rf:12.2f} | "
              f"{cg:8.3f} {bg:7.3f} {rg:12.2f}")


if __name__ == "__main__":
  main()
