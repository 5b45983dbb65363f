"""What the evals need from a model: `Completer`, and `SamplerCompleter` on cwm_jax.inference.

Evals never touch a model object. They hand token-id prompts to a `Completer` and
get text back, so the same scorers run on our JAX sampler, on a replay of stored
generations, or on a reference "model" in tests.

Completion contract (every implementation follows it):
- `complete(prompts, n=...)` returns, per prompt, `n` texts: the decoded generated
  tokens with special tokens rendered as their strings (`<|end_of_text|>`), up to
  and *including* the stop token or stop string that ended generation (a text that
  hit `max_new_tokens` ends without one). Scorers cut at stops themselves.
- Generation always stops at the tokenizer's stop tokens (`<|end_of_text|>`,
  `<|eom_id|>`, `<|eot_id|>`) and also at `stop_token_ids` and `stop_strings`.
- temperature 0 is greedy; `seed` makes sampling reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from cwm_jax.tokenizer.base import Tokenizer


@runtime_checkable
class Completer(Protocol):
  """Prompts (token ids) -> n completion texts each; see the module docstring."""

  @property
  def tokenizer(self) -> Tokenizer:
    ...

  def complete(self, prompts: Sequence[Sequence[int]], *, n: int = 1, max_new_tokens: int,
               temperature: float = 0.0, top_p: float = 1.0, stop_strings: Sequence[str] = (),
               stop_token_ids: Sequence[int] = (), seed: int = 0) -> list[list[str]]:
    ...


def check_completions(out: Any, n_prompts: int, n: int) -> list[list[str]]:
  """Validates what a Completer returned (a shape mistake is a clear error, not a zip that
  silently drops samples)."""
  if not isinstance(out, list) or len(out) != n_prompts:
    raise ValueError(f"Completer.complete returned {type(out).__name__} of length "
                     f"{len(out) if hasattr(out, '__len__') else '?'}; expected a list of "
                     f"{n_prompts} lists (one per prompt)")
  for i, texts in enumerate(out):
    if not isinstance(texts, list) or len(texts) != n or not all(isinstance(t, str)
                                                                  for t in texts):
      raise ValueError(f"Completer.complete: prompt {i} got {texts!r:.100}; expected a list "
                       f"of {n} strings")
  return out


def complete_checked(completer: Completer, prompts: Sequence[Sequence[int]], *, n: int = 1,
                     **kwargs) -> list[list[str]]:
  """`completer.complete` with its output validated."""
  prompts = [list(p) for p in prompts]
  if not prompts:
    return []
  return check_completions(completer.complete(prompts, n=n, **kwargs), len(prompts), n)


class SamplerCompleter:
  """A Completer on `cwm_jax.inference.Sampler` (jitted prefill + decode with a KV cache).

  A prompt that leaves fewer than `max_new_tokens` slots of the sampler's max_len
  gets the slots left, and one that leaves none gets "" (counted in
  `prompts_too_long`, which the runner reports), so one long prompt cannot stop a
  benchmark. Prompts are repeated n times and sent in batches of `batch_size`; row j of the
  flattened (prompt, sample) list samples with its own key from (seed, j), so its
  draws do not depend on the batch size or the other rows.
  """

  def __init__(self, sampler: Any, tokenizer: Tokenizer, *, batch_size: int = 8):
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"SamplerCompleter batch_size={batch_size!r}; expected a positive int")
    self.sampler = sampler
    self._tokenizer = tokenizer
    self.batch_size = batch_size
    self.prompts_too_long = 0  # rows answered "" because the prompt filled the KV cache

  @classmethod
  def from_params(cls, model_cfg, params, tokenizer: Tokenizer, *, mesh=None, max_len: int,
                  batch_size: int = 8) -> "SamplerCompleter":
    from cwm_jax.inference import Sampler  # pylint: disable=import-outside-toplevel
    return cls(Sampler(model_cfg, params, mesh=mesh, max_len=max_len), tokenizer,
               batch_size=batch_size)

  @property
  def tokenizer(self) -> Tokenizer:
    return self._tokenizer

  def complete(self, prompts: Sequence[Sequence[int]], *, n: int = 1, max_new_tokens: int,
               temperature: float = 0.0, top_p: float = 1.0, stop_strings: Sequence[str] = (),
               stop_token_ids: Sequence[int] = (), seed: int = 0) -> list[list[str]]:
    from cwm_jax.inference import SamplingConfig  # pylint: disable=import-outside-toplevel
    tok = self._tokenizer
    stops = tuple(dict.fromkeys([*tok.stop_ids, *stop_token_ids]))
    flat = [list(p) for p in prompts for _ in range(n)]
    # A prompt near max_len gets what room is left; one with no room gets "" (counted).
    budgets = [min(max_new_tokens, self.sampler.max_len - len(p)) for p in flat]
    texts = [""] * len(flat)
    rows = [j for j, b in enumerate(budgets) if b >= 1]
    self.prompts_too_long += len(flat) - len(rows)
    groups: dict[int, list[int]] = {}
    for j in rows:
      groups.setdefault(budgets[j], []).append(j)
    for budget, members in sorted(groups.items()):
      for start in range(0, len(members), self.batch_size):
        batch = members[start:start + self.batch_size]
        result = self.sampler.generate(
            [flat[j] for j in batch], max_new_tokens=budget,
            sampling=SamplingConfig(temperature=temperature, top_p=top_p),
            stop_token_ids=stops, stop_strings=tuple(stop_strings), tokenizer=tok,
            seed=[(seed * 1_000_003 + j) % (1 << 31) for j in batch])
        for j, text in zip(batch, result.texts):  # ids past the tokenizer's vocab: no text
          texts[j] = text
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]
