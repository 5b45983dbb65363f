"""Forward and forward+backward throughput of our jitted model vs HF transformers
(torch) on the same config and weights, printed side by side with the ratio.

    python -m benchmarks.forward_vs_hf                      # CPU, tiny + small
    python -m benchmarks.forward_vs_hf --configs=small --seq=1024 --batch=2
    python -m benchmarks.forward_vs_hf --torch_device=cuda --configs=cwm_1b --dtype=bfloat16

Absolute numbers on shared CPUs are noise; the ratio (same process, same
weights, same tokens, ours and HF called in turn round after round, the median
of the per-round ratios) is what to read. `--unfolded` adds our program traced
without the CPU token folding of `cwm_jax/model/dense.py` (the column
fold/unfolded is its speed-up). torch/transformers are benchmark-only references
here, as in the tests. The process runs on the allocator our commands choose
(tcmalloc, `cwm_jax/host_memory.py`; `CWM_JAX_TCMALLOC=0` for glibc), and torch
allocates through the same malloc.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import interleaved, median_ratio
from cwm_jax.convert import load_hf
from cwm_jax.host_memory import use_tcmalloc
from cwm_jax.model import transformer
from cwm_jax.model.dense import forced_folding

# name -> HF CwmConfig kwargs (window shorter than the longer benchmark sequences).
CONFIGS = {
    "tiny": dict(vocab_size=1024, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=16),
    "small": dict(vocab_size=8192, hidden_size=256, intermediate_size=704, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=32, sliding_window=128),
    "cwm_1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=64, sliding_window=8192),
}


def bench_config(name, seq, batch, repeats, torch_device, dtype, impl, unfolded=False):
  import torch
  from transformers import CwmConfig, CwmForCausalLM

  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  hf_cfg = CwmConfig(**CONFIGS[name], max_position_embeddings=max(seq, 8192),
                     rope_parameters={"rope_theta": 1e6, "rope_type": "default"})
  torch.manual_seed(0)
  hf = CwmForCausalLM(hf_cfg).to(torch_dtype)
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    cfg, model = load_hf(d)
  hf = hf.to(torch_device)
  cfg = cfg.replace(dtype=dtype, param_dtype=dtype, attention_impl=impl)
  params = jax.tree.map(lambda a: a.astype(dtype), model.params())

  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (batch, seq))
  tok_j = jnp.asarray(tokens)
  tok_t = torch.tensor(tokens, device=torch_device)

  def fwd(p, t):
    return transformer.forward(p, t, cfg)

  def ce(p, t):
    logits = transformer.forward(p, t[:, :-1], cfg)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, t[:, 1:, None], axis=-1))

  def compiled(fn, fold):
    """fn jitted and compiled now (folding is decided at trace time; a fresh
    function, or jit would reuse the trace of the other variant)."""
    with forced_folding(fold) if fold is not None else contextlib.nullcontext():
      return jax.jit(lambda p, t: fn(p, t)).lower(params, tok_j).compile()

  def sync():
    if torch_device == "cuda":
      torch.cuda.synchronize()

  def hf_fwd():
    with torch.no_grad():
      hf(tok_t).logits
    sync()

  def hf_grad():
    hf.zero_grad(set_to_none=True)
    logits = hf(tok_t[:, :-1]).logits.float()
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                      tok_t[:, 1:].reshape(-1)).backward()
    sync()

  rows = []
  n_tokens = batch * seq
  for mode, fn, theirs in (("forward", fwd, hf_fwd), ("fwd+bwd", jax.value_and_grad(ce), hf_grad)):
    ours = compiled(fn, None)
    fns = {"ours": lambda: ours(params, tok_j), "hf": theirs}
    if unfolded:
      plain = compiled(fn, False)
      fns["unfolded"] = lambda: plain(params, tok_j)
    times = interleaved(fns, rounds=repeats)
    med = {k: np.median(v) for k, v in times.items()}
    fold_gain = median_ratio(times["unfolded"], times["ours"]) if unfolded else float("nan")
    rows.append((name, seq, batch, mode, n_tokens / med["ours"], n_tokens / med["hf"],
                 median_ratio(times["hf"], times["ours"]), fold_gain))
  return rows


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--configs", default="tiny,small")
  ap.add_argument("--seq", default="256,1024", help="comma-separated sequence lengths")
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--torch_device", default="cpu")
  ap.add_argument("--attention_impl", default="auto", help="our attention backend (auto, reference, chunked, ...)")
  ap.add_argument("--unfolded", action="store_true",
                  help="also time our program without the CPU token folding (cwm_jax/model/dense.py)")
  args = ap.parse_args()

  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; torch device {args.torch_device}; "
        f"dtype {args.dtype}; attention {args.attention_impl}; {args.repeats} interleaved rounds")
  header = (f"{'config':8} {'seq':>6} {'batch':>5} {'mode':8} {'ours tok/s':>12} {'HF tok/s':>12} "
            f"{'ours/HF':>8}" + (f" {'fold/unfolded':>14}" if args.unfolded else ""))
  print(header)
  print("-" * len(header))
  for name in args.configs.split(","):
    for seq in (int(s) for s in args.seq.split(",")):
      for r in bench_config(name, seq, args.batch, args.repeats, args.torch_device, args.dtype,
                            args.attention_impl, args.unfolded):
        print(f"{r[0]:8} {r[1]:>6} {r[2]:>5} {r[3]:8} {r[4]:>12.0f} {r[5]:>12.0f} {r[6]:>8.2f}"
              + (f" {r[7]:>14.2f}" if args.unfolded else ""))


if __name__ == "__main__":
  use_tcmalloc()  # re-executes this script once, before any measurement
  main()
