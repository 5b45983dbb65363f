"""The neural debugger's command line (`python -m experiments.debugger`).

    python -m experiments.debugger --checkpoint DIR --source prog.py --call "f(1, 2)"
    python -m experiments.debugger --hf_dir /ckpt/cwm --source context.py

`--source` is a Python file; with `--call` the trace starts at that call (CruxEval
layout), without it the file must mark its entry function with
`  # << START_OF_TRACE`. Commands are read from stdin (a terminal, or a script
piped in, which is then echoed). Exit status: 0 after a session, 2 when the
source, the flags, the checkpoint or the tokenizer cannot be used (one `error:` line
on stderr says which and why).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from absl import logging

from cwm_jax.debugger.context import SourceError, make_context
from cwm_jax.inference.loading import load_model_and_tokenizer
from cwm_jax.debugger.sampler_model import (DEFAULT_MAX_FRAME_TOKENS, DEFAULT_MAX_LEN,
                                            SamplerTraceModel)
from cwm_jax.debugger.session import NeuralDebugger
from cwm_jax.debugger.shell import run_shell


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(prog="python -m experiments.debugger",
                               description="pdb-style stepping through a trace predicted by a "
                               "CWM model (nothing is executed).")
  ap.add_argument("--source", required=True, help="the Python file to debug")
  ap.add_argument("--call", help="the call to trace, e.g. 'f(1, 2)' (else the file marks its "
                  "entry function with '  # << START_OF_TRACE')")
  ap.add_argument("--checkpoint", help="training workdir, step directory or save_orbax "
                  "directory")
  ap.add_argument("--hf_dir", help="an HF CWM checkpoint directory (instead of --checkpoint)")
  ap.add_argument("--tokenizer", help="tokenizer file (default: the training config's "
                  "data.tokenizer_path, or the HF directory's tokenizer.model)")
  ap.add_argument("--max_len", type=int, default=None,
                  help=f"longest trace in tokens (default: min(model max_seq_len, "
                  f"{DEFAULT_MAX_LEN}))")
  ap.add_argument("--max_frame_tokens", type=int, default=DEFAULT_MAX_FRAME_TOKENS,
                  help="most tokens generated for one frame")
  return ap.parse_args(argv)


def read_source(path: str) -> str:
  if not os.path.exists(path):
    raise SourceError(f"source file {path!r} does not exist")
  if not os.path.isfile(path):
    raise SourceError(f"source {path!r} is not a file")
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise SourceError(f"source file {path!r} is not UTF-8 text ({e.reason})") from None


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None,
         stdout: TextIO | None = None) -> int:
  absl_logger = logging.get_absl_logger()
  previous = absl_logger.level  # the logger's own level (often NOTSET), not the effective one
  logging.set_verbosity(logging.ERROR)  # Orbax reports every restore at INFO/WARNING
  try:
    return _main(parse_args(argv), stdin, stdout)
  finally:
    absl_logger.setLevel(previous)  # callers in the same process keep their logging


def _main(args, stdin: TextIO | None, stdout: TextIO | None) -> int:
  stdout = stdout or sys.stdout
  stdin = stdin if stdin is not None else (None if sys.stdin.isatty() else sys.stdin)
  name = os.path.basename(args.source)
  try:
    source = read_source(args.source)
    make_context(source, args.call, name=name)  # bad source: say so before loading a model
  except SourceError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    config, params, tokenizer = load_model_and_tokenizer(args.checkpoint, args.hf_dir, args.tokenizer)
    model = SamplerTraceModel.from_params(config, params, tokenizer, max_len=args.max_len,
                                          max_frame_tokens=args.max_frame_tokens)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  debugger = NeuralDebugger(model, tokenizer, source, args.call, name=name)
  run_shell(debugger, stdin=stdin, stdout=stdout)
  return 0
