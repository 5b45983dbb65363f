"""Python code out of a completion: a fenced block, a whole function, or a raw continuation.

Only text manipulation happens here; the code runs in the sandbox (execution.py).
"""

from __future__ import annotations

import re

from cwm_jax.evals.prompting import cut_at

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = ("", "python", "py", "python3")

# Codex's stop sequences for a raw HumanEval continuation (Chen et al. 2021): the
# function body ends where a new top-level statement starts.
CONTINUATION_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
# After a whole function written without a fence: the model's own demo or tests.
TRAILER_STOPS = ("\nif __name__", "\nprint(", "\nassert ")


def fenced_code(text: str) -> str | None:
  """The first ``` block tagged python (or untagged); an unclosed one runs to the end."""
  for m in _FENCE_RE.finditer(text):
    if m.group(1).lower() in _PYTHON_TAGS:
      return m.group(2)
  return None


def defines(code: str, name: str) -> bool:
  """Whether `code` has a `def name(` line (at any indentation)."""
  return re.search(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code,
                   re.MULTILINE) is not None


def function_completion_code(prompt: str, entry_point: str, completion: str) -> str:
  """Program text for a HumanEval-style completion of `prompt` (signature + docstring).

  - A fenced block that defines `entry_point` replaces the function: prompt (whose
    function has a docstring body, so it is valid) + block, keeping the prompt's
    imports and helpers; a fenced block without it is the body: prompt + block.
  - Unfenced text defining `entry_point` at top level is a whole function
    (cut before a `__main__` guard, print or assert that follows it).
  - Otherwise a raw continuation, cut at Codex's stop sequences.
  """
  block = fenced_code(completion)
  if block is not None:
    return prompt + ("\n" + block if defines(block, entry_point) else block)
  if re.search(rf"^def[ \t]+{re.escape(entry_point)}[ \t]*\(", completion, re.MULTILINE):
    return prompt + "\n" + cut_at(completion, TRAILER_STOPS)
  return prompt + cut_at(completion, CONTINUATION_STOPS)


def program_code(completion: str, stops: tuple[str, ...] = ()) -> str:
  """Whole-program answers (MBPP): the first python fenced block, else the text cut at
  `stops`."""
  block = fenced_code(completion)
  return block if block is not None else cut_at(completion, stops)
