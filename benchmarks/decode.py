"""Batched greedy generation: our `Sampler` vs HF transformers `generate` (torch),
same config, weights and prompts, prefill and decode reported separately.

    python -m benchmarks.decode                                 # CPU: tiny + small
    python -m benchmarks.decode --configs=small --batch=8 --prompt_len=512 --new_tokens=128

Prefill time is that of a whole `generate` call for 1 token (per-call
overhead, prompt forward, first sample); decode time is that of generating
`new_tokens` minus it, per generated token after the first. Both sides are
warmed up first, so compile time (ours) and allocator warm-up (both) are
excluded; each time is the fastest of `--repeats` runs, ours and HF's runs
interleaved (the fastest run is the least disturbed one on a shared machine).
Absolute numbers on shared CPUs are noise; read the ratio. torch and
transformers are benchmark-only references here, as in the tests.

By default both libraries run single-threaded (`--single_thread`): on a
2-core machine shared with other jobs, torch's OpenMP kernels at these small
shapes ran ~100x slower with 2 threads than with 1 (measured: a tiny-config
128-token forward took 0.5 s vs 4 ms), which would make the comparison
meaningless. `--nosingle_thread` keeps each library's default thread pool.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _best_seconds(fns: dict, repeats: int) -> dict:
  """name -> fastest wall time of fns[name](), the functions run in turn."""
  for fn in fns.values():
    fn()  # warm-up: compilation, caches
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  return {k: min(v) for k, v in times.items()}


def bench_config(name, batch, prompt_len, new_tokens, repeats):
  import torch
  from transformers import CwmConfig, CwmForCausalLM

  from benchmarks.forward_vs_hf import CONFIGS
  from cwm_jax.convert import load_hf_params
  from cwm_jax.inference import Sampler

  hf_cfg = CwmConfig(**CONFIGS[name], max_position_embeddings=8192, bos_token_id=1,
                     eos_token_id=2, rope_parameters={"rope_theta": 1e6, "rope_type": "default"})
  torch.manual_seed(0)
  hf = CwmForCausalLM(hf_cfg).eval()
  hf.generation_config.eos_token_id = None  # always generate the full length, as ours does
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    cfg, params = load_hf_params(d)
  sampler = Sampler(cfg, params, max_len=prompt_len + new_tokens)
  prompts = np.random.RandomState(0).randint(0, cfg.vocab_size, (batch, prompt_len))
  prompts_t = torch.tensor(prompts)

  def ours(n):
    return lambda: sampler.generate(prompts.tolist(), max_new_tokens=n)

  def theirs(n):
    def run():
      with torch.no_grad():
        return hf.generate(prompts_t, attention_mask=torch.ones_like(prompts_t),
                           max_new_tokens=n, do_sample=False, pad_token_id=0)
    return run

  # Same tokens on both sides (greedy), so both do the same work.
  same = ours(new_tokens)().tokens == theirs(new_tokens)()[:, prompt_len:].tolist()
  best = _best_seconds({("ours", 1): ours(1), ("hf", 1): theirs(1),
                        ("ours", new_tokens): ours(new_tokens),
                        ("hf", new_tokens): theirs(new_tokens)}, repeats)
  times = {side: (best[side, 1], best[side, new_tokens] - best[side, 1]) for side in ("ours", "hf")}
  rows = []
  for i, (phase, n_tok) in enumerate((("prefill", batch * prompt_len),
                                      ("decode", batch * (new_tokens - 1)))):
    ours_tps, hf_tps = n_tok / times["ours"][i], n_tok / times["hf"][i]
    rows.append((name, batch, prompt_len, new_tokens, phase, ours_tps, hf_tps, ours_tps / hf_tps,
                 same))
  return rows


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--configs", default="tiny,small")
  ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
  ap.add_argument("--prompt_len", type=int, default=128)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--single_thread", action=argparse.BooleanOptionalAction, default=True,
                  help="run torch and XLA on one thread each (see the module docstring)")
  args = ap.parse_args()
  if args.single_thread:  # before jax is imported
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA).strip()
  import jax
  import torch
  if args.single_thread:
    torch.set_num_threads(1)
  from transformers.utils import logging as hf_logging
  hf_logging.disable_progress_bar()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} (XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r}); torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); float32; greedy; compile/warm-up excluded; "
        f"best of {args.repeats}")
  header = (f"{'config':7} {'batch':>5} {'prompt':>6} {'new':>4} {'phase':8} {'ours tok/s':>11} "
            f"{'HF tok/s':>10} {'ours/HF':>8} {'same tokens':>11}")
  print(header)
  print("-" * len(header))
  for name in args.configs.split(","):
    for batch in (int(b) for b in args.batch.split(",")):
      for r in bench_config(name, batch, args.prompt_len, args.new_tokens, args.repeats):
        print(f"{r[0]:7} {r[1]:>5} {r[2]:>6} {r[3]:>4} {r[4]:8} {r[5]:>11.0f} {r[6]:>10.0f} "
              f"{r[7]:>8.2f} {str(r[8]):>11}")


if __name__ == "__main__":
  main()
