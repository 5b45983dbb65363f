"""A model and its tokenizer from a checkpoint directory, for generation, the debugger
and evals.

`--checkpoint` accepts what `cwm_jax.train.checkpoint.load_params` accepts (a
training workdir, its `checkpoints/` directory, one step directory, or a directory
written by `cwm_jax.convert.save_orbax`); `--hf_dir` an HF CWM checkpoint. The
tokenizer is `--tokenizer` when given, else the training config's
`data.tokenizer_path` (DIR/config.json of the workdir the checkpoint belongs to),
else the HF directory's `tokenizer.model`.
"""

from __future__ import annotations

import json
import os

from cwm_jax.model.config import ModelConfig
from cwm_jax.tokenizer import load_tokenizer
from cwm_jax.tokenizer.base import Tokenizer


def load_params_any(checkpoint: str | None, hf_dir: str | None) -> tuple[ModelConfig, dict]:
  """(config, params) from exactly one of `checkpoint` and `hf_dir`."""
  _check_one(checkpoint, hf_dir)
  if hf_dir is not None:
    from cwm_jax.convert import load_hf_params  # pylint: disable=import-outside-toplevel
    return load_hf_params(hf_dir)
  try:
    from cwm_jax.train.checkpoint import load_params  # pylint: disable=import-outside-toplevel
  except ImportError:  # older trees: only save_orbax directories
    from cwm_jax.convert import load_orbax  # pylint: disable=import-outside-toplevel
    return load_orbax(checkpoint)
  return load_params(checkpoint)


def _check_one(checkpoint: str | None, hf_dir: str | None) -> None:
  if (checkpoint is None) == (hf_dir is None):
    raise ValueError("give exactly one of --checkpoint (a training workdir, step directory or "
                     "save_orbax directory) and --hf_dir (an HF CWM checkpoint)")
  for flag, path in (("--checkpoint", checkpoint), ("--hf_dir", hf_dir)):
    if path is not None and not os.path.isdir(path):
      raise FileNotFoundError(f"{flag} {path!r} is not a directory")


def tokenizer_path_for(checkpoint: str | None, hf_dir: str | None) -> str:
  """Where the tokenizer of a checkpoint is, when the user did not say."""
  _check_one(checkpoint, hf_dir)
  if checkpoint is not None:
    here = os.path.abspath(checkpoint)
    for _ in range(3):  # the workdir, or up from checkpoints/ or checkpoints/STEP
      path = _training_tokenizer(os.path.join(here, "config.json"))
      if path is not None:
        return path
      here = os.path.dirname(here)
    raise ValueError(f"cannot tell the tokenizer of --checkpoint {checkpoint!r}: no training "
                     "config.json with data.tokenizer_path in it or above it; pass --tokenizer")
  if hf_dir is not None and os.path.exists(os.path.join(hf_dir, "tokenizer.model")):
    return os.path.join(hf_dir, "tokenizer.model")
  raise ValueError(f"--hf_dir {hf_dir!r} has no tokenizer.model; pass --tokenizer")


def _training_tokenizer(config_file: str) -> str | None:
  if not os.path.isfile(config_file):
    return None
  try:
    with open(config_file, encoding="utf-8") as f:
      config = json.load(f)
  except ValueError as e:
    raise ValueError(f"{config_file}: not valid JSON ({e})") from None
  path = config.get("data", {}).get("tokenizer_path") if isinstance(config, dict) else None
  return path if isinstance(path, str) and path else None


def load_model_and_tokenizer(checkpoint: str | None, hf_dir: str | None, tokenizer: str | None
                       ) -> tuple[ModelConfig, dict, Tokenizer]:
  """(config, params, tokenizer), tokenizer resolved as the module docstring says."""
  _check_one(checkpoint, hf_dir)
  tok = load_tokenizer(tokenizer or tokenizer_path_for(checkpoint, hf_dir))
  config, params = load_params_any(checkpoint, hf_dir)
  return config, params, tok
