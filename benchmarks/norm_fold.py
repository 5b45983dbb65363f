"""RMSNorm forward+backward on CPU with the token axes folded into one row axis
(what `cwm_jax.model.layers.rms_norm` does on CPU) vs left as [B, T, D], side by side.

    python -m benchmarks.norm_fold
    python -m benchmarks.norm_fold --shapes=1x1024x128,8x256x128 --rounds=100

Both programs are the library's `rms_norm` traced under `dense.forced_folding`
(True / False), jitted with its vjp, called in turn round after round; the
column unfolded/folded is the median of the per-round ratios. With a size-1
batch axis XLA:CPU ran the unfolded backward's reductions several times slower
(issue 13); with B > 1 the two are close.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import interleaved, median_ratio
from cwm_jax.host_memory import use_tcmalloc
from cwm_jax.model.dense import forced_folding
from cwm_jax.model.layers import rms_norm


def compiled(fold: bool, x, w, dy):
  def fwd_bwd(x, w, dy):
    y, vjp = jax.vjp(lambda x, w: rms_norm(x, w, 1e-5), x, w)
    return (y, *vjp(dy))
  with forced_folding(fold):  # a fresh function per setting: folding is decided at trace time
    return jax.jit(lambda x, w, dy: fwd_bwd(x, w, dy)).lower(x, w, dy).compile()


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--shapes", default="1x256x256,1x1024x128,1x1024x256,2x1024x128,8x256x128",
                  help="comma-separated BxTxD")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--rounds", type=int, default=50)
  args = ap.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {args.dtype}; "
        f"{args.rounds} interleaved rounds")
  print(f"{'B x T x D':>14} {'folded ms':>10} {'unfolded ms':>12} {'unfolded/folded':>16}")
  for spec in args.shapes.split(","):
    shape = tuple(int(s) for s in spec.split("x"))
    rng = np.random.default_rng(0)
    x, dy = (jnp.asarray(rng.normal(size=shape), args.dtype) for _ in range(2))
    w = jnp.asarray(rng.normal(size=shape[-1:]), args.dtype)
    fns = {fold: compiled(fold, x, w, dy) for fold in (True, False)}
    times = interleaved({"folded": lambda: fns[True](x, w, dy),
                         "unfolded": lambda: fns[False](x, w, dy)}, rounds=args.rounds)
    print(f"{spec:>14} {np.median(times['folded']) * 1e3:>10.3f} "
          f"{np.median(times['unfolded']) * 1e3:>12.3f} "
          f"{median_ratio(times['unfolded'], times['folded']):>16.2f}")


if __name__ == "__main__":
  use_tcmalloc()  # re-executes this script once, before any measurement
  main()
