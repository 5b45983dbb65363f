"""CPU demo of the foundation, end to end, with no downloads:

    python -m experiments.demo --workdir=/tmp/cwm_demo

1. trains a sentencepiece tokenizer (CWM special tokens, newline-safe) on this
   repository's own Python source;
2. builds the `tiny` CWM model and trains it briefly (AdamW) on packed
   documents of that source, reporting held-out loss before and after;
3. converts the trained weights to an HF transformers checkpoint and to an
   Orbax checkpoint and back, checking that the logits are bit-identical.

The full pretrain -> midtrain -> SFT pipeline is `experiments.main` (and the
toy-scale recipe `experiments.quickstart`); this script exercises the library's
pieces directly: pipeline, train step, conversion.
"""

from __future__ import annotations

import json
import pathlib
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from cwm_jax.convert import load_hf, load_orbax, save_hf, save_orbax
from cwm_jax.model import Cwm, count_params, get_preset
from cwm_jax.sharding import MeshConfig, make_mesh
from cwm_jax.tokenizer import SentencePieceTokenizer, encode_trace_prompt, train_sentencepiece
from cwm_jax.train import (OptimizerConfig, init_train_state, jit_train_step, loss_sums,
                           make_optimizer, make_schedule, mean_loss, train_state_shardings)
from data_pipelines.pipeline import PipelineConfig, SourceConfig, build_train_iterator

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/cwm_demo", "Where the tokenizer and checkpoints go.")
_STEPS = flags.DEFINE_integer("steps", 80, "Training steps.")
_SEQ = flags.DEFINE_integer("seq", 128, "Packed row length.")
_BATCH = flags.DEFINE_integer("batch", 8, "Rows per step.")
_SEED = flags.DEFINE_integer("seed", 0, "Init and data-order seed.")

REPO = pathlib.Path(__file__).resolve().parents[1]


def source_documents() -> tuple[list[str], list[str]]:
  """This repository's library source, split into train and held-out files."""
  files = sorted((REPO / "cwm_jax").rglob("*.py"))
  docs = [f.read_text() for f in files if f.stat().st_size > 200]
  if len(docs) < 4:
    raise SystemExit(f"demo: expected the cwm_jax sources under {REPO}, found {len(docs)} files.")
  return [d for i, d in enumerate(docs) if i % 5], docs[::5]


def write_documents(docs: list[str], path: pathlib.Path) -> str:
  """Documents as a JSONL text source of the grain pipeline."""
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
  return str(path)


def pipeline(path: str, tokenizer_path: str, *, shuffle: bool) -> PipelineConfig:
  """Documents tokenised and packed into rows with segment ids (the library's pipeline)."""
  return PipelineConfig(sources=(SourceConfig("code", (path,), "text"),),
                        tokenizer_path=tokenizer_path, seq_len=_SEQ.value,
                        batch_size=_BATCH.value, seed=_SEED.value, shuffle=shuffle)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save/restore at INFO.
  t_start = time.time()
  workdir = pathlib.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  rows = []

  # 1. Tokenizer.
  train_docs, heldout_docs = source_documents()
  t0 = time.time()
  sp_path = train_sentencepiece(["".join(train_docs)], str(workdir / "tokenizer"), vocab_size=1024)
  tok = SentencePieceTokenizer(sp_path)
  sample = heldout_docs[0]
  assert tok.decode(tok.encode(sample)) == sample, "tokenizer failed to round-trip code"
  trace_prompt = encode_trace_prompt(tok, "def f(x):  # << START_OF_TRACE\n    return x + 1\n")
  rows.append(("tokenizer", f"sentencepiece, vocab {tok.vocab_size}, {len(train_docs)} files, "
               f"{time.time() - t0:.1f}s; exact round trip on held-out code; "
               f"trace prompt of {len(trace_prompt)} tokens"))

  # 2. Model + a short training run on packed documents: the library's grain
  # pipeline (packing, segment ids), optimizer, jitted train step and loss.
  cfg = get_preset("tiny", vocab_size=tok.vocab_size)
  opt_cfg = OptimizerConfig(learning_rate=3e-3, warmup_steps=10, total_steps=_STEPS.value)
  optimizer = make_optimizer(opt_cfg)
  mesh = make_mesh(MeshConfig(data=jax.device_count()))
  shardings = train_state_shardings(mesh, cfg, optimizer)
  state = init_train_state(cfg, optimizer, jax.random.key(_SEED.value), mesh=mesh)
  step_fn = jit_train_step(mesh, cfg, optimizer, shardings, lr_schedule=make_schedule(opt_cfg))
  held_loss = jax.jit(lambda params, batch: mean_loss(loss_sums(params, batch, cfg)))
  train_path = write_documents(train_docs, workdir / "train.jsonl")
  held_path = write_documents(heldout_docs, workdir / "heldout.jsonl")
  with build_train_iterator(pipeline(held_path, sp_path, shuffle=False)) as it:
    held = next(it)
  held_before = float(held_loss(state.params, held))
  t0 = time.time()
  with build_train_iterator(pipeline(train_path, sp_path, shuffle=True)) as batches:
    for step in range(_STEPS.value):
      state, metrics = step_fn(state, next(batches))
      if step % 20 == 0 or step == _STEPS.value - 1:
        print(f"step {step:4d}  train loss {float(metrics['loss']):.3f}")
  train_s = time.time() - t0
  params = jax.device_get(state.params)
  held_after = float(held_loss(params, held))
  model = Cwm(cfg, params=params)
  rows.append(("model", f"tiny: {count_params(cfg):,} params, {cfg.n_layers} layers "
               f"{cfg.layer_types}, window {cfg.window}"))
  rows.append(("training", f"{_STEPS.value} AdamW steps x {_BATCH.value}x{_SEQ.value} tokens in "
               f"{train_s:.1f}s; held-out loss {held_before:.3f} -> {held_after:.3f}"))

  # 3. Conversion both ways; the logits must not change by a single bit.
  probe = jnp.asarray(held["tokens"][:2])
  logits = np.asarray(model(probe))
  hf_dir, orbax_dir = workdir / "hf", workdir / "orbax"
  stats = save_hf(model, cfg, str(hf_dir), overwrite=True)
  _, model_hf = load_hf(str(hf_dir))
  save_orbax(model.params(), cfg, str(orbax_dir), overwrite=True)
  cfg_o, params_o = load_orbax(str(orbax_dir))
  for name, other in (("HF safetensors", np.asarray(model_hf(probe))),
                      ("Orbax", np.asarray(Cwm(cfg_o, params=params_o)(probe)))):
    same = np.array_equal(other, logits)
    rows.append((f"-> {name}", f"logits bit-identical after round trip: {same}"))
    if not same:
      raise SystemExit(f"demo: {name} round trip changed the logits "
                       f"(max diff {np.abs(other - logits).max()}).")
  rows.append(("checkpoints", f"{hf_dir} ({stats['tensors']} tensors, {stats['bytes']:,} bytes), "
               f"{orbax_dir}"))

  width = max(len(r[0]) for r in rows)
  print(f"\ncwm_jax demo on {jax.devices()[0].platform} ({jax.device_count()} devices), "
        f"{time.time() - t_start:.0f}s total")
  for name, what in rows:
    print(f"  {name:<{width}}  {what}")


if __name__ == "__main__":
  app.run(main)
