"""Where the Llama-3 rank file lies when the `llama-models` package is installed.

CWM's BPE is Llama 3's, and Meta's PyPI package `llama-models` ships its rank file
(`llama_models/llama3/tokenizer.model`). Finding it lets a user tokenise with the
real 128k vocabulary without downloading the CWM checkpoint. `llama-models` is a
test dependency, not the library's: its directory is located by import spec and
none of its Python modules is ever imported here.
"""

from __future__ import annotations

import importlib.util
import os

# The name `load_tokenizer` accepts for this file.
LLAMA3 = "llama3"
# The release the tests check against (keep equal to requirements-test.txt).
LLAMA_MODELS_REQUIREMENT = "llama-models==0.3.0"

_PACKAGE = "llama_models"
# Inside the package: the layout since 0.2.0, then the one of 0.1.x.
_RELATIVE_PATHS = ("llama3/tokenizer.model", "llama3/api/tokenizer.model")


def llama3_rank_file() -> str:
  """The path of the Llama-3 `tokenizer.model` installed with `llama-models`.

  Raises ModuleNotFoundError saying what to install when the package is missing,
  FileNotFoundError when it is installed but holds no rank file.
  """
  try:
    spec = importlib.util.find_spec(_PACKAGE)
  except (ImportError, ValueError):
    spec = None
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
        f"Tokenizer {LLAMA3!r} is the Llama-3 rank file shipped by the Python package "
        f"{_PACKAGE!r}, which is not installed: run `pip install {LLAMA_MODELS_REQUIREMENT}`, "
        f"or pass the path of a tiktoken `tokenizer.model` (e.g. a CWM checkpoint's) instead.",
        name=_PACKAGE)
  candidates = [os.path.join(d, rel) for d in spec.submodule_search_locations
                for rel in _RELATIVE_PATHS]
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(
      f"Tokenizer {LLAMA3!r}: the installed package {_PACKAGE!r} has no rank file; looked for "
      f"{', '.join(map(repr, candidates))}. Install `{LLAMA_MODELS_REQUIREMENT}` or pass the "
      f"path of a tiktoken `tokenizer.model` instead.")
