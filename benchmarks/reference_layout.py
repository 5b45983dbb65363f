"""The einsum reference attention on CPU, as it is against the formulation before
7410bec (token-major einsums 'BTKGH,BSKH->BKGTS', autodiff through every step of
the masked softmax), forward and forward+backward of one call, float32, with both
outputs checked against each other. The reference is CPU `auto`'s pick for small
score matrices (up to `SMALL_SCORES_CPU`) and the decode path's attention. The
columns before/now are how many times faster the current one ran (median of
per-round ratios, both called in turn round after round).

    python -m benchmarks.reference_layout
    python -m benchmarks.reference_layout --heads=small --seqs=128 --rounds=60

Heads are those of `forward_vs_hf`'s configs: `tiny` (4 query heads, 2 KV heads,
head dim 16) and `small` (8, 2, 32); causal mask, batch 2.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import interleaved, median_ratio
from cwm_jax.model.attention import Mask, reference_attention

HEADS = {"tiny": (4, 2, 16), "small": (8, 2, 32)}


def reference_before(q_BTNH, k_BSKH, v_BSKH, mask: Mask):
  """The reference attention before 7410bec (the baseline of this benchmark)."""
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1], k_BSKH.shape[2]
  q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
  s_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH,
                       preferred_element_type=jnp.float32) * H ** -0.5
  ok_B11TS = mask.dense_BTS(T, S)[:, None, None]
  s_BKGTS = jnp.where(ok_B11TS, s_BKGTS, -jnp.inf)
  m_BKGT1 = jnp.max(s_BKGTS, axis=-1, keepdims=True)
  m_BKGT1 = jnp.where(jnp.isfinite(m_BKGT1), m_BKGT1, 0.0)
  p_BKGTS = jnp.where(ok_B11TS, jnp.exp(s_BKGTS - m_BKGT1), 0.0)
  denom_BKGT1 = jnp.sum(p_BKGTS, axis=-1, keepdims=True)
  p_BKGTS = p_BKGTS / jnp.where(denom_BKGT1 > 0, denom_BKGT1, 1.0)
  o_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", p_BKGTS.astype(v_BSKH.dtype), v_BSKH,
                       preferred_element_type=jnp.float32)
  return o_BTKGH.reshape(B, T, N, H).astype(q_BTNH.dtype)


def bench(heads: str, T: int, rounds: int) -> tuple[float, ...]:
  N, K, H = HEADS[heads]
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, T, n, H)), jnp.float32) for n in (N, K, K))
  do = jnp.asarray(rng.normal(size=(2, T, N, H)), jnp.float32)
  mask = Mask()
  fns, grads = {}, {}
  for name, f in (("before", reference_before),
                  ("now", lambda q, k, v, m: reference_attention(q, k, v, m))):
    fwd = jax.jit(lambda q, k, v, f=f: f(q, k, v, mask))
    grad = jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v, mask) * do), argnums=(0, 1, 2)))
    grads[name] = grad(q, k, v)
    fns[f"{name} fwd"] = lambda fwd=fwd: fwd(q, k, v)
    fns[f"{name} fwd+bwd"] = lambda grad=grad: grad(q, k, v)
  for a, b in zip(grads["before"], grads["now"]):
    err = float(jnp.max(jnp.abs(a - b)))
    if err > 1e-4:
      raise AssertionError(f"the gradients differ by {err} ({heads}, T={T})")
  t = interleaved(fns, rounds=rounds)
  ms = {name: 1e3 * float(np.median(ts)) for name, ts in t.items()}
  return (ms["before fwd"], ms["now fwd"], median_ratio(t["before fwd"], t["now fwd"]),
          ms["before fwd+bwd"], ms["now fwd+bwd"],
          median_ratio(t["before fwd+bwd"], t["now fwd+bwd"]))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--heads", default="tiny,small")
  ap.add_argument("--seqs", default="64,128,256")
  ap.add_argument("--rounds", type=int, default=40)
  args = ap.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; float32, "
        f"batch 2, causal, {args.rounds} interleaved rounds; ms per call")
  print(f"{'heads':>6} {'T':>5} | {'before':>7} {'now':>7} {'before/now':>10} | "
        f"{'before':>7} {'now':>7} {'before/now':>10}   (fwd | fwd+bwd)")
  for heads in args.heads.split(","):
    for T in map(int, args.seqs.split(",")):
      bf, nf, rf, bg, ng, rg = bench(heads, T, args.rounds)
      print(f"{heads:>6} {T:>5} | {bf:7.3f} {nf:7.3f} {rf:10.2f} | {bg:7.3f} {ng:7.3f} {rg:10.2f}")


if __name__ == "__main__":
  main()
