"""Memory of `Sampler.score` vs sequence length: the chunked log-prob path against
full [B, T, V] float32 logits (what `score` did before), on a tiny-width model with
CWM's vocabulary.

    python -m benchmarks.score_memory                     # 1k .. 32k tokens, CPU
    python -m benchmarks.score_memory --seqs=1024,4096 --vocab=32000

Memory is XLA's `temp_size_in_bytes` of the compiled scoring function (buffers
besides inputs and outputs; read from the compiled executable, so nothing is
allocated). Both functions compute the same two per-token log-probs (sampling
distribution and T=1) from the same hidden states; the chunked one holds one
[B, T / n, V] chunk at a time, so its memory grows linearly in T, while the
dense one's [B, T, V] logits dominate. Top-k/top-p truncation (a sort over V per
position) adds a constant per-chunk working set.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from cwm_jax.inference import sampler as sampler_lib
from cwm_jax.model import get_preset, transformer
from cwm_jax.model.params import abstract_params


def dense_score(params, tokens_BT, temperature, *, cfg):
  """The reference: every position's full logits at once."""
  logits_BTV = transformer.forward(params, tokens_BT, cfg)[:, :-1]
  target_BT1 = tokens_BT[:, 1:, None]
  pick = lambda lp: jnp.take_along_axis(lp, target_BT1, axis=-1)[..., 0]
  return (pick(jax.nn.log_softmax(logits_BTV / temperature, axis=-1)),
          pick(jax.nn.log_softmax(logits_BTV, axis=-1)))


def temp_bytes(fn, *args, **static) -> int:
  compiled = jax.jit(fn, static_argnames=tuple(static)).lower(*args, **static).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seqs", default="1024,2048,4096,8192,16384,32768")
  ap.add_argument("--vocab", type=int, default=128256)
  ap.add_argument("--chunk", type=int, default=1024)
  args = ap.parse_args(argv)
  cfg = get_preset("tiny", vocab_size=args.vocab, max_seq_len=131072, attention_impl="chunked",
                   attention_chunk=512)
  params = abstract_params(cfg)
  f32 = jax.ShapeDtypeStruct((), jnp.float32)
  print(f"score() compiled temp memory, B=1, model `tiny` (d_model {cfg.d_model}, "
        f"{cfg.n_layers} layers), V={args.vocab}, chunk {args.chunk}, on "
        f"{jax.devices()[0].platform}")
  header = (f"{'T':>7} | {'chunked MiB':>12} {'+MiB/1k tok':>11} | {'dense MiB':>12} | "
            f"dense/chunked | {'chunked top-k/p MiB':>19}")
  print(header)
  print("-" * len(header))
  prev = None
  i32 = jax.ShapeDtypeStruct((), jnp.int32)
  for T in [int(s) for s in args.seqs.split(",")]:
    tokens = jax.ShapeDtypeStruct((1, T), jnp.int32)
    score = sampler_lib._score  # pylint: disable=protected-access
    chunked = temp_bytes(score, params, tokens, f32, i32, f32, cfg=cfg, filtered=False,
                         chunk=args.chunk)
    filtered = temp_bytes(score, params, tokens, f32, i32, f32, cfg=cfg, filtered=True,
                          chunk=args.chunk)
    dense = temp_bytes(dense_score, params, tokens, f32, cfg=cfg)
    growth = f"{(chunked - prev[1]) / 2**20 / ((T - prev[0]) / 1024):.2f}" if prev else "-"
    print(f"{T:>7} | {chunked / 2**20:>12,.1f} {growth:>11} | {dense / 2**20:>12,.1f} | "
          f"{dense / chunked:>12.1f}x | {filtered / 2**20:>19,.1f}", flush=True)
    prev = (T, chunked)


if __name__ == "__main__":
  main()
