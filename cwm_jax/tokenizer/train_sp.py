"""Trains a sentencepiece tokenizer with the CWM special tokens.

  python -m cwm_jax.tokenizer.train_sp --input=a.py,b.txt --model_prefix=/tmp/sp \
      --vocab_size=8000 [--model_type=bpe]
"""

from __future__ import annotations

import pathlib

from absl import app, flags

from cwm_jax.tokenizer.sentencepiece_tokenizer import train_sentencepiece

_INPUT = flags.DEFINE_list("input", None, "Comma-separated UTF-8 text files.", required=True)
_MODEL_PREFIX = flags.DEFINE_string("model_prefix", None, "Writes PREFIX.model and PREFIX.vocab.",
                                    required=True)
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", None, "Total pieces, specials included.",
                                   required=True)
_MODEL_TYPE = flags.DEFINE_enum("model_type", "bpe", ["bpe", "unigram"], "Sentencepiece algorithm.")
_NUM_THREADS = flags.DEFINE_integer("num_threads", 1, "Trainer threads.")


def main(argv):
  del argv
  files = [pathlib.Path(p) for p in _INPUT.value]
  for f in files:
    if not f.is_file():
      raise app.UsageError(f"--input file {str(f)!r} does not exist.")
  try:
    path = train_sentencepiece(files, _MODEL_PREFIX.value, _VOCAB_SIZE.value,
                               model_type=_MODEL_TYPE.value, num_threads=_NUM_THREADS.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
