"""CPU demo of the foundation, end to end, with no downloads:

    python -m experiments.demo --workdir=/tmp/cwm_demo

1. trains a sentencepiece tokenizer (CWM special tokens, newline-safe) on this
   repository's own Python source;
2. builds the `tiny` CWM model and trains it briefly (AdamW) on packed
   documents of that source, reporting held-out loss before and after;
3. converts the trained weights to an HF transformers checkpoint and to an
   Orbax checkpoint and back, checking that the logits are bit-identical.

The full pretrain -> midtrain -> SFT pipeline lives in `experiments.main`
once the training stack lands; this script exercises the pieces below it.
"""

from __future__ import annotations

import functools
import os
import pathlib
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cwm_jax.convert import load_hf, load_orbax, save_hf, save_orbax
from cwm_jax.model import Cwm, count_params, get_preset, transformer
from cwm_jax.tokenizer import SentencePieceTokenizer, encode_trace_prompt, train_sentencepiece

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


def pack(token_docs: list[list[int]], seq: int, eos: int):
  """Concatenates documents (each + EOS) into rows of `seq` tokens with segment ids."""
  tokens, segments = [], []
  for i, doc in enumerate(token_docs):
    tokens += doc + [eos]
    segments += [i + 1] * (len(doc) + 1)
  n_rows = len(tokens) // seq
  shape = (n_rows, seq)
  return (np.asarray(tokens[:n_rows * seq], np.int32).reshape(shape),
          np.asarray(segments[:n_rows * seq], np.int32).reshape(shape))


@functools.partial(jax.jit, static_argnames="cfg")
def batch_loss(params, tokens_BT, segment_ids_BT, cfg):
  """Mean next-token cross-entropy within documents (no loss across a boundary)."""
  logits_BTV = transformer.forward(params, tokens_BT[:, :-1], cfg,
                                   segment_ids_BT=segment_ids_BT[:, :-1])
  same_doc_BT = segment_ids_BT[:, 1:] == segment_ids_BT[:, :-1]
  nll_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, tokens_BT[:, 1:])
  return jnp.sum(nll_BT * same_doc_BT) / jnp.maximum(jnp.sum(same_doc_BT), 1)


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

  # 2. Model + a short training run on packed documents.
  cfg = get_preset("tiny", vocab_size=tok.vocab_size)
  model = Cwm(cfg, rngs=nnx.Rngs(_SEED.value))
  train_tokens, train_segs = pack([tok.encode(d) for d in train_docs], _SEQ.value, tok.eos_id)
  held_tokens, held_segs = pack([tok.encode(d) for d in heldout_docs], _SEQ.value, tok.eos_id)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 10, _STEPS.value),
                               b1=0.9, b2=0.95, weight_decay=0.1))
  params = model.params()
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, tokens, segs):
    loss, grads = jax.value_and_grad(batch_loss)(params, tokens, segs, cfg)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  held = (jnp.asarray(held_tokens[:16]), jnp.asarray(held_segs[:16]))
  held_before = float(batch_loss(params, *held, cfg))
  rng = np.random.default_rng(_SEED.value)
  t0 = time.time()
  for step in range(_STEPS.value):
    idx = rng.choice(len(train_tokens), _BATCH.value, replace=False)
    params, opt_state, loss = train_step(params, opt_state, jnp.asarray(train_tokens[idx]),
                                         jnp.asarray(train_segs[idx]))
    if step % 20 == 0 or step == _STEPS.value - 1:
      print(f"step {step:4d}  train loss {float(loss):.3f}")
  train_s = time.time() - t0
  held_after = float(batch_loss(params, *held, cfg))
  model = Cwm(cfg, params=params)
  rows.append(("model", f"tiny: {count_params(cfg):,} params, {cfg.n_layers} layers "
               f"{cfg.layer_types}, window {cfg.window}"))
  rows.append(("training", f"{_STEPS.value} AdamW steps x {_BATCH.value}x{_SEQ.value} tokens in "
               f"{train_s:.1f}s; held-out loss {held_before:.3f} -> {held_after:.3f}"))

  # 3. Conversion both ways; the logits must not change by a single bit.
  probe = jnp.asarray(held_tokens[:2])
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
