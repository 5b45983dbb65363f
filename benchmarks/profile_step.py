"""Where the time of a CPU forward+backward goes: a per-op breakdown from a
`jax.profiler` trace of the compiled step, and the step time of model variants
that each switch off one suspect, side by side in one run.

    python -m benchmarks.profile_step                                  # tiny + small, T 256, 1024
    python -m benchmarks.profile_step --configs=small --seq=1024 --top=25
    python -m benchmarks.profile_step --variants=base,unscanned --no-profile
    python -m benchmarks.profile_step --configs=preset:tiny --seq=1024   # the quickstart's model

The step is the one `benchmarks/forward_vs_hf.py` times (mean next-token
cross-entropy of dense logits, `jax.value_and_grad`, float32, batch 1), on the
same configs (`forward_vs_hf.CONFIGS`, or a model preset), with random weights.

Variants (`--variants`), each the base config with one field changed:
  base        the library's defaults (attention `auto`, layers scanned in groups)
  unscanned   scan_layers=False: every layer inlined (no while loop, no stacked
              residuals or dynamic-update-slices in the backward)
  reference   attention_impl=reference: einsum attention, [T, S] scores
  chunked     attention_impl=chunked: online softmax over key chunks (custom VJP)

Profile: the base step runs `--profile_steps` times under `jax.profiler.trace`;
the self time (less nested events) of the trace's op events on the XLA CPU
threads is summed by op name (fusion
names are grouped by kind: `fusion`, `dot`, `while`, ...) and printed as a share
of the summed op time, with the top `--top` single ops. Absolute numbers on a
shared CPU are noise; read shares and ratios.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.forward_vs_hf import CONFIGS
from benchmarks.timing import first_and_median
from cwm_jax.model import transformer
from cwm_jax.model.config import ModelConfig, cwm_layer_types, get_preset
from cwm_jax.model.params import init_params

VARIANTS = {
    "base": {},
    "unscanned": {"scan_layers": False},
    "reference": {"attention_impl": "reference"},
    "chunked": {"attention_impl": "chunked"},
    "unscanned_chunked": {"scan_layers": False, "attention_impl": "chunked"},
}


def model_config(name: str, seq: int, **overrides) -> ModelConfig:
  """Our ModelConfig of `forward_vs_hf.CONFIGS[name]` (CWM's 3:1 local/global), or
  of the model preset `preset:<name>` (e.g. `preset:tiny`, the quickstart's model)."""
  if name.startswith("preset:"):
    return get_preset(name.split(":", 1)[1], max_seq_len=max(seq, 4096), **overrides)
  c = CONFIGS[name]
  n_layers = c["num_hidden_layers"]
  base = dict(vocab_size=c["vocab_size"], d_model=c["hidden_size"], n_layers=n_layers,
              n_heads=c["num_attention_heads"], n_kv_heads=c["num_key_value_heads"],
              head_dim=c["head_dim"], mlp_dim=c["intermediate_size"], window=c["sliding_window"],
              layer_types=cwm_layer_types(n_layers), max_seq_len=max(seq, 8192),
              rope_theta=1e6, dtype="float32", param_dtype="float32")
  base.update(overrides)
  return ModelConfig(**base)


def loss_fn(cfg):
  def ce(params, tokens_BT):
    logits = transformer.forward(params, tokens_BT[:, :-1], cfg)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, tokens_BT[:, 1:, None], axis=-1))
  return jax.jit(jax.value_and_grad(ce))


_KIND = re.compile(r"^([a-z_\-]+?)(?:[._]\d+)*$")


def op_kind(name: str) -> str:
  """'loop_add_fusion.3' -> 'loop_add_fusion', 'dot.12' -> 'dot'."""
  m = _KIND.match(name)
  return m.group(1) if m else name


def profile_ops(fn, args, steps: int) -> list[tuple[str, float, int]]:
  """[(op name, total microseconds, calls)] of the XLA CPU op events of `steps`
  calls of `fn`, from a perfetto trace written by `jax.profiler.trace`."""
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(steps):
        jax.block_until_ready(fn(*args))
    paths = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)
    if not paths:
      raise RuntimeError(f"profile_step: jax.profiler wrote no perfetto trace under {d}")
    with gzip.open(paths[0]) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  threads = {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "thread_name":
      threads[(e["pid"], e["tid"])] = e["args"]["name"]
  # Per thread, an event's self time is its duration less that of the events
  # nested in it (a `while` op holds its body's ops; executors hold whole steps).
  by_thread = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and "dur" in e:
      by_thread[(e.get("pid"), e.get("tid"))].append(e)
  totals = collections.defaultdict(lambda: [0.0, 0])
  for key, evs in by_thread.items():
    thread = threads.get(key, "")
    evs.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack = []  # [event, child time]
    def close(item):
      e, child = item
      name = e["name"]
      # The Python thread's own events (PjitFunction, ...) and the executor /
      # thread-pool frames are not ops.
      if not (thread.startswith("python") or name.startswith(
          ("Pjit", "pjit", "$", "jit_", "ThunkExecutor", "SlinkyThreadPool"))):
        totals[name][0] += e["dur"] - child
        totals[name][1] += 1
    for e in evs:
      while stack and e["ts"] >= stack[-1][0]["ts"] + stack[-1][0]["dur"]:
        close(stack.pop())
      if stack:
        stack[-1][1] += e["dur"]
      stack.append([e, 0.0])
    while stack:
      close(stack.pop())
  return sorted(((n, t, c) for n, (t, c) in totals.items()), key=lambda r: -r[1])


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--configs", default="tiny,small")
  ap.add_argument("--seq", default="256,1024")
  ap.add_argument("--variants", default="base,unscanned,reference,chunked")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
  ap.add_argument("--profile_steps", type=int, default=3)
  ap.add_argument("--top", type=int, default=15)
  args = ap.parse_args()

  print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{os.cpu_count()} cores; float32, batch 1, median of {args.repeats}")
  for name in args.configs.split(","):
    for seq in (int(s) for s in args.seq.split(",")):
      vocab = model_config(name, seq).vocab_size
      tokens = jnp.asarray(np.random.RandomState(0).randint(0, vocab, (1, seq + 1)))
      base_ms = None
      print(f"\n== {name}, T={seq}: fwd+bwd step by variant")
      print(f"{'variant':18} {'compile s':>9} {'step ms':>9} {'tok/s':>9} {'vs base':>8}")
      for variant in args.variants.split(","):
        cfg = model_config(name, seq, **VARIANTS[variant])
        params = init_params(cfg, jax.random.key(0))
        fn = loss_fn(cfg)
        first, sec = first_and_median(fn, params, tokens, repeats=args.repeats)
        base_ms = base_ms or sec * 1e3
        print(f"{variant:18} {first:>9.2f} {sec * 1e3:>9.1f} {seq / sec:>9.0f} "
              f"{base_ms / (sec * 1e3):>8.2f}")
      if not args.profile:
        continue
      cfg = model_config(name, seq)
      params = init_params(cfg, jax.random.key(0))
      fn = loss_fn(cfg)
      jax.block_until_ready(fn(params, tokens))
      ops = profile_ops(fn, (params, tokens), args.profile_steps)
      total = sum(t for _, t, _ in ops) or 1.0
      kinds = collections.defaultdict(float)
      for n, t, _ in ops:
        kinds[op_kind(n)] += t
      print(f"-- base profile: {total / 1e3 / args.profile_steps:.1f} ms of op events per step")
      print(f"{'op kind':40} {'share':>7}")
      for k, t in sorted(kinds.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{k[:40]:40} {100 * t / total:>6.1f}%")
      print(f"{'top ops':40} {'share':>7} {'calls/step':>10}")
      for n, t, c in ops[:args.top]:
        print(f"{n[:40]:40} {100 * t / total:>6.1f}% {c / args.profile_steps:>10.0f}")


if __name__ == "__main__":
  main()
