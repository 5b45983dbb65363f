"""One float32 matmul, XLA:CPU (jitted `jnp.dot`) vs torch (`torch.mm`), at the
shapes of `forward_vs_hf`'s models, side by side, plus each side's CPU
utilisation (CPU seconds per wall second; 2.0 = both cores busy on 2 cores).

    python -m benchmarks.matmul_vs_torch
    python -m benchmarks.matmul_vs_torch --shapes=256x256x704,1024x256x704 --rounds=100

M x K x N: [M, K] @ [K, N]. The rows are the projections of `small` at T = 256
(q/o 256x256x256, gate/up 256x256x704, down 256x704x256, lm head 256x256x8192)
and at T = 1024, and one large square for reference. torch is a benchmark-only
reference (as in forward_vs_hf); both run on the allocator our commands choose.
The reading (issue 13): where XLA:CPU's matmul library is slower than torch's,
our fwd+bwd cannot beat HF's by more than the rest of the step allows.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import interleaved, median_ratio
from cwm_jax.host_memory import use_tcmalloc

SHAPES = ("256x256x256,256x256x704,256x704x256,256x256x8192,"
          "1024x256x704,1024x704x256,2048x2048x2048")


def utilisation(fn, seconds: float = 0.3) -> float:
  """CPU time per wall time of calling fn repeatedly for about `seconds`."""
  w0, c0 = time.perf_counter(), time.process_time()
  while time.perf_counter() - w0 < seconds:
    fn()
  return (time.process_time() - c0) / (time.perf_counter() - w0)


def main():
  import torch
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--shapes", default=SHAPES, help="comma-separated MxKxN")
  ap.add_argument("--rounds", type=int, default=50)
  args = ap.parse_args()
  dot = jax.jit(jnp.dot)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); float32; {args.rounds} interleaved rounds")
  print(f"{'M x K x N':>16} {'XLA GFLOP/s':>12} {'torch GFLOP/s':>14} {'XLA/torch':>10} "
        f"{'XLA cpu/wall':>13} {'torch cpu/wall':>15}")
  for spec in args.shapes.split(","):
    m, k, n = (int(s) for s in spec.split("x"))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(m, k)).astype(np.float32), rng.normal(size=(k, n)).astype(np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fns = {"xla": lambda: dot(ja, jb).block_until_ready(), "torch": lambda: torch.mm(ta, tb)}
    times = interleaved(fns, rounds=args.rounds)
    flops = 2 * m * k * n
    print(f"{spec:>16} {flops / np.median(times['xla']) / 1e9:>12.0f} "
          f"{flops / np.median(times['torch']) / 1e9:>14.0f} "
          f"{median_ratio(times['torch'], times['xla']):>10.2f} "
          f"{utilisation(fns['xla']):>13.2f} {utilisation(fns['torch']):>15.2f}")


if __name__ == "__main__":
  use_tcmalloc()  # re-executes this script once, before any measurement
  main()
