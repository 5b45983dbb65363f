"""GPU attention backends: correctness against the f32 einsum reference, then
forward and forward+backward timings, in one prepared run (about 5 minutes).

    JAX_PLATFORMS=cuda python -m benchmarks.gpu_attention_check         # on a GPU host
    python -m benchmarks.gpu_attention_check --cpu_smoke                 # tiny, on CPU

1. Correctness (B=2, T=--check_T): every backend on every mask it serves, bf16
   inputs; relative errors ||x - ref|| / ||ref|| of the output and of dq, dk, dv
   (cotangent random), the reference computed in float32 from the same bf16 inputs.
2. Timings (B=1, each T of --seqs): median of --repeats calls after a warm-up
   (the warm-up's compile time is printed too). The reference runs only while
   T <= --ref_max_T (it materialises [B, N, T, T] float32 scores).
   TFLOP/s use the useful work only: P = number of (query, key) pairs the mask
   allows (causal: T(T+1)/2, window W: sum_i min(i+1, W), packed: summed per
   document), forward = 4*B*N*H*P FLOPs (QK^T and PV), forward+backward = 3.5x
   forward (backward = 5 matmuls; recomputation not counted).

Masks: causal (global layers), window (causal, W = min(8192, T/4); local layers),
packed (causal + segment ids of random-length documents), packed_window (both).
Backends: cudnn, pallas_gpu (ours), chunked, reference, and jax_mha (JAX's shipped,
deprecated Triton kernel: causal/packed only, K/V repeated to N heads; a yardstick
for pallas_gpu, not a backend). `pallas_gpu@128x64x64x64x4x4x2` times other tiles
(block_q x block_k x block_q_bwd x block_k_bwd x num_warps x num_warps_bwd x
num_stages). A failing backend prints its error and the run goes on.
--cpu_smoke shrinks everything and runs the Pallas kernels in interpret mode and
cudnn's call through XLA, to check the script itself.
"""

from __future__ import annotations

import argparse
import functools
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import first_and_median
from cwm_jax.model.attention import BACKENDS, attention, platform_of
from cwm_jax.model.attention.cudnn import cudnn_attention
from cwm_jax.model.attention.mask import Mask
from cwm_jax.model.attention.pallas_gpu import BlockSizes, pallas_gpu_attention
from cwm_jax.model.attention.reference import reference_attention

MASKS = ("causal", "window", "packed", "packed_window")


def window_of(T: int) -> int:
  return max(1, min(8192, T // 4))


def doc_lengths(T: int, rng) -> np.ndarray:
  """Random document lengths (mean about T/6, at least 16) that fill T exactly."""
  lengths = []
  while sum(lengths) < T:
    lengths.append(int(max(16, rng.exponential(T / 6))))
  lengths[-1] -= sum(lengths) - T
  return np.asarray([n for n in lengths if n > 0])


def make_mask(name: str, B: int, T: int, rng):
  """(Mask, allowed pairs P per batch row)."""
  W = window_of(T) if "window" in name else None
  if name.startswith("packed"):
    segs, pairs = [], 0
    for _ in range(B):
      lengths = doc_lengths(T, rng)
      segs.append(np.repeat(np.arange(len(lengths)), lengths))
      pairs += sum(causal_pairs(n, W) for n in lengths)
    seg = jnp.asarray(np.stack(segs), jnp.int32)
    return Mask(window=W, q_segment_ids=seg, kv_segment_ids=seg), pairs / B
  return Mask(window=W), causal_pairs(T, W)


def causal_pairs(n: int, W) -> int:
  """Pairs (i, j) with j <= i < n and i - j < W."""
  if W is None or W >= n:
    return n * (n + 1) // 2
  return W * (W + 1) // 2 + (n - W) * W


def mask_label(name: str, T: int) -> str:
  return f"{name}(W={window_of(T)})" if "window" in name else name


def jax_mha(q, k, v, mask: Mask, interpret: bool):
  """JAX's shipped Triton kernel (no window, no GQA, no offset): the yardstick."""
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention
  if mask.window is not None or mask.q_offset:
    raise ValueError("jax_mha does not support a window or a q_offset")
  G = q.shape[2] // k.shape[2]
  k, v = jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2)
  return gpu_attention.mha(q, k, v, mask.kv_segment_ids, sm_scale=q.shape[-1] ** -0.5,
                           causal=mask.causal, interpret=interpret)


def backend_fn(name: str, smoke: bool):
  """(q, k, v, mask) -> out for a backend name; the smoke run swaps in CPU-runnable forms."""
  if name == "jax_mha":
    return functools.partial(jax_mha, interpret=smoke)
  if name.startswith("pallas_gpu"):  # "pallas_gpu@" + BlockSizes fields joined by "x"
    blocks = None
    if "@" in name:
      blocks = BlockSizes(*(int(x) for x in name.split("@")[1].split("x")))
    if smoke or blocks is not None:
      return functools.partial(pallas_gpu_attention, block_sizes=blocks, interpret=smoke)
  if smoke and name == "cudnn":
    def cudnn_xla(q, k, v, mask):
      reason = BACKENDS["cudnn"].check(mask, jnp.dtype(jnp.bfloat16), q.shape, k.shape)
      if reason:
        raise ValueError(f"impl='cudnn' does not support {reason}")
      return cudnn_attention(q, k, v, mask, implementation="xla")
    return cudnn_xla
  return lambda q, k, v, mask: attention(q, k, v, mask, impl=name)


def inputs(B, T, N, K, H, dtype, rng):
  def normal(*shape):
    return jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype)
  return normal(B, T, N, H), normal(B, T, K, H), normal(B, T, K, H), normal(B, T, N, H)


def fwd_bwd(fn):
  def run(q, k, v, do):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(do)
  return run


def rel_err(x, ref) -> float:
  x, ref = np.asarray(x, np.float32), np.asarray(ref, np.float32)
  return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def short(e: Exception) -> str:
  msg = str(e).strip().splitlines()
  return f"{type(e).__name__}: {msg[0][:150] if msg else ''}"


def check_correctness(args, backends, dtype, smoke):
  B, T = 2, args.check_T
  print(f"\n== correctness: B={B} T={T} N={args.N} K={args.K} H={args.H} {dtype.name} vs "
        f"f32 reference; rel err = ||x-ref||/||ref||, pass < {args.tol}")
  print(f"{'backend':<14} {'mask':<24} {'out':>9} {'dq':>9} {'dk':>9} {'dv':>9}  status")
  rng = np.random.default_rng(0)
  q, k, v, do = inputs(B, T, args.N, args.K, args.H, dtype, rng)
  f32 = [x.astype(jnp.float32) for x in (q, k, v, do)]
  failures = 0
  for mask_name in args.masks:
    mask, _ = make_mask(mask_name, B, T, rng)
    with jax.default_matmul_precision("highest"):
      ref = jax.jit(fwd_bwd(lambda q, k, v: reference_attention(q, k, v, mask)))(*f32)
      ref = jax.block_until_ready(ref)
    for name in backends:
      if name == "reference":
        continue
      label = f"{name:<14} {mask_label(mask_name, T):<24}"
      try:
        out, grads = jax.jit(fwd_bwd(functools.partial(backend_fn(name, smoke), mask=mask)))(
            q, k, v, do)
        errs = [rel_err(out, ref[0])] + [rel_err(g, r) for g, r in zip(grads, ref[1])]
        ok = max(errs) < args.tol and all(np.isfinite(errs))
        failures += not ok
        print(f"{label} " + " ".join(f"{e:9.2e}" for e in errs) + ("  ok" if ok else "  FAIL"))
      except Exception as e:  # noqa: BLE001  (report and go on)
        unsupported = "does not support" in str(e)
        failures += not unsupported
        print(f"{label} {'-':>9} {'-':>9} {'-':>9} {'-':>9}  "
              f"{'skip' if unsupported else 'ERROR'} {short(e)}")
        if not unsupported and args.verbose:
          traceback.print_exc()
  return failures


def time_backends(args, backends, dtype, smoke, deadline):
  B = 1
  print(f"\n== timings: B={B} N={args.N} K={args.K} H={args.H} {dtype.name}; median of "
        f"{args.repeats}; TFLOP/s = 4*B*N*H*P (fwd), x3.5 (fwd+bwd), P = allowed pairs")
  print(f"{'backend':<14} {'mask':<24} {'T':>6} {'fwd ms':>9} {'TF/s':>6} "
        f"{'fwd+bwd ms':>11} {'TF/s':>6} {'compile s':>10}")
  rng = np.random.default_rng(1)
  for T in args.seqs:
    q, k, v, do = inputs(B, T, args.N, args.K, args.H, dtype, rng)
    for mask_name in args.masks:
      mask, pairs = make_mask(mask_name, B, T, rng)
      flops = 4 * B * args.N * args.H * pairs
      for name in backends:
        label = f"{name:<14} {mask_label(mask_name, T):<24} {T:>6}"
        if name == "reference" and T > args.ref_max_T:
          continue
        if time.perf_counter() > deadline:
          print(f"{label}  skipped: over --budget_s")
          continue
        fn = functools.partial(backend_fn(name, smoke), mask=mask)
        try:
          c1, fwd_s = first_and_median(jax.jit(fn), q, k, v, repeats=args.repeats)
          c2, fb_s = first_and_median(jax.jit(fwd_bwd(fn)), q, k, v, do, repeats=args.repeats)
          fwd_ms, fb_ms = fwd_s * 1e3, fb_s * 1e3
          print(f"{label} {fwd_ms:9.2f} {flops / fwd_ms / 1e9:6.1f} {fb_ms:11.2f} "
                f"{3.5 * flops / fb_ms / 1e9:6.1f} {c1 + c2:10.1f}")
        except Exception as e:  # noqa: BLE001
          print(f"{label}  {'skip' if 'does not support' in str(e) else 'ERROR'} {short(e)}")
          if args.verbose and "does not support" not in str(e):
            traceback.print_exc()


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--cpu_smoke", action="store_true", help="tiny sizes, interpret mode, on CPU")
  ap.add_argument("--backends", default="cudnn,pallas_gpu,jax_mha,chunked,reference")
  ap.add_argument("--masks", default=",".join(MASKS))
  ap.add_argument("--check_T", type=int, default=2048)
  ap.add_argument("--seqs", default="4096,16384,32768")
  ap.add_argument("--N", type=int, default=16)
  ap.add_argument("--K", type=int, default=4)
  ap.add_argument("--H", type=int, default=128)
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--ref_max_T", type=int, default=8192)
  ap.add_argument("--tol", type=float, default=2e-2)
  ap.add_argument("--budget_s", type=float, default=270.0, help="stop starting timings after this")
  ap.add_argument("--skip_correctness", action="store_true")
  ap.add_argument("--skip_timings", action="store_true")
  ap.add_argument("--verbose", action="store_true", help="print tracebacks")
  args = ap.parse_args()
  start = time.perf_counter()
  if args.cpu_smoke:
    args.check_T, args.seqs, args.N, args.K, args.H, args.repeats = 256, "256,512", 4, 2, 32, 2
  args.seqs = [int(t) for t in args.seqs.split(",")]
  args.masks = args.masks.split(",")
  backends = args.backends.split(",")
  dtype = jnp.dtype(args.dtype)
  dev = jax.devices()[0]
  print(f"jax {jax.__version__}; device {dev.device_kind} ({platform_of(jnp.zeros(1))}); "
        f"backends {backends}")
  if not args.cpu_smoke and platform_of(jnp.zeros(1)) != "gpu":
    print("WARNING: no GPU; cudnn and pallas_gpu will refuse (use --cpu_smoke on CPU)")
  if not args.skip_correctness:
    failures = check_correctness(args, backends, dtype, args.cpu_smoke)
    print(f"correctness: {'all ok' if not failures else f'{failures} FAILED'} "
          f"({time.perf_counter() - start:.0f} s)")
  if not args.skip_timings:
    time_backends(args, backends, dtype, args.cpu_smoke, start + args.budget_s)
  print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()
