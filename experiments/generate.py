"""Prints completions of a prompt by a CWM checkpoint.

    python -m experiments.generate --hf_dir /ckpt/cwm --prompt "def fib(n):" --max_new_tokens 64
    python -m experiments.generate --checkpoint /runs/sft --chat --reasoning \\
        --prompt "Is 1001 prime?" --temperature 0.7 --top_p 0.95 --num_samples 4

`--checkpoint` takes a training workdir, its `checkpoints/` directory, one step
directory, or a `cwm_jax.convert.save_orbax` directory (`load_params`);
`--hf_dir` an HF CWM checkpoint. The tokenizer is `--tokenizer`, else the
training config's `data.tokenizer_path` (DIR/config.json of the run), else the
HF directory's `tokenizer.model`. Without `--chat` the prompt is raw text after
BOS; with it, a user message in CWM's chat format (`--reasoning`: the released
model's reasoning system prompt and `<think>` prefill). Generation stops at the
tokenizer's stop tokens or `--max_new_tokens`. Temperature 0 is greedy.
"""

from __future__ import annotations

import sys

from absl import app, flags

from cwm_jax.host_memory import use_tcmalloc

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir, step or save_orbax directory.")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "HF CWM checkpoint directory (instead of --checkpoint).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer file (default: see the docstring).")
_PROMPT = flags.DEFINE_string("prompt", None, "The prompt text.")
_CHAT = flags.DEFINE_bool("chat", False, "Send the prompt as a user message in chat format.")
_REASONING = flags.DEFINE_bool("reasoning", False, "Chat in reasoning mode (needs --chat).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Tokens to generate at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 = greedy.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass; 1 = off.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens; 0 = off.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (sample i draws with fold_in(seed, i)).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Completions of the prompt.")
_MAX_LEN = flags.DEFINE_integer("max_len", None, "KV cache length (default: the model's max_seq_len).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                           "Load the weights (and compute) in this dtype; default: as stored.")


def _load(checkpoint, hf_dir, dtype):
  """(ModelConfig, params) from exactly one of the two directories."""
  if hf_dir is not None:
    from cwm_jax.convert import load_hf_params  # pylint: disable=import-outside-toplevel
    return load_hf_params(hf_dir, dtype=dtype)
  from cwm_jax.train.checkpoint import load_params  # pylint: disable=import-outside-toplevel
  return load_params(checkpoint, dtype=dtype)


def _print_sample(i: int, n: int, reason: str, n_tokens: int, body: str) -> None:
  print(f"=== sample {i + 1}/{n} (finish: {reason}, {n_tokens} tokens) ===")
  print(body)


def run() -> None:
  from cwm_jax.inference.loading import tokenizer_path_for  # pylint: disable=import-outside-toplevel
  from cwm_jax.inference import Sampler, SamplingConfig, check_tokenizer  # pylint: disable=import-outside-toplevel
  from cwm_jax.inference.chat import chat_batch  # pylint: disable=import-outside-toplevel
  from cwm_jax.tokenizer import load_tokenizer  # pylint: disable=import-outside-toplevel

  checkpoint, hf_dir = _CHECKPOINT.value, _HF_DIR.value
  if (checkpoint is None) == (hf_dir is None):
    raise app.UsageError("give exactly one of --checkpoint and --hf_dir.")
  if not _PROMPT.value:
    raise app.UsageError("--prompt is required (the text to complete or the user message).")
  if _REASONING.value and not _CHAT.value:
    raise app.UsageError("--reasoning needs --chat (it is a chat format).")
  if _NUM_SAMPLES.value < 1:
    raise app.UsageError(f"--num_samples={_NUM_SAMPLES.value}: expected >= 1.")
  sampling = SamplingConfig(temperature=_TEMPERATURE.value, top_p=_TOP_P.value, top_k=_TOP_K.value)

  tokenizer = load_tokenizer(_TOKENIZER.value or tokenizer_path_for(checkpoint, hf_dir))
  cfg, params = _load(checkpoint, hf_dir, _DTYPE.value)
  check_tokenizer(tokenizer, cfg)
  sampler = Sampler(cfg, params, max_len=_MAX_LEN.value)
  n = _NUM_SAMPLES.value
  if _CHAT.value:
    messages = [{"role": "user", "content": _PROMPT.value}]
    results = chat_batch(sampler, tokenizer, [messages] * n, reasoning=_REASONING.value,
                         max_new_tokens=_MAX_NEW.value, sampling=sampling, seed=_SEED.value)
    for i, r in enumerate(results):
      body = r.text
      if _REASONING.value:
        body = f"[reasoning]\n{r.reasoning}\n[answer]\n{r.answer}"
      body += "".join(f"\n[tool call: {c.name}]\n{c.arguments}" for c in r.tool_calls)
      _print_sample(i, n, r.finish_reason, len(r.tokens), body)
  else:
    ids = tokenizer.encode(_PROMPT.value, bos=True)
    out = sampler.generate([ids] * n, max_new_tokens=_MAX_NEW.value, sampling=sampling,
                           stop_token_ids=tokenizer.stop_ids, tokenizer=tokenizer,
                           seed=_SEED.value)
    for i, (text, tokens, reason) in enumerate(zip(out.texts, out.tokens, out.finish_reasons)):
      _print_sample(i, n, reason, len(tokens), text)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; the prompt goes in --prompt.")
  use_tcmalloc()  # may re-execute this command, so first (cwm_jax/host_memory.py)
  from cwm_jax.train.logs import quiet_library_logs  # pylint: disable=import-outside-toplevel
  quiet_library_logs()  # Orbax logs every restore at INFO
  try:
    run()
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
