"""`Sampler`: batched generation with a KV cache, compiled once per shape bucket.

    sampler = Sampler(cfg, params, mesh=None, max_len=4096)
    out = sampler.generate([[1, 2, 3], [4, 5]], max_new_tokens=32,
                           sampling=SamplingConfig(temperature=0.8, top_p=0.95),
                           stop_token_ids=tokenizer.stop_ids, seed=0)
    out.tokens[i], out.logprobs[i], out.finish_reasons[i]

Shapes are bucketed so that thousands of calls with varying prompts reuse a
few compiled programs: the batch is padded to a power of two (and a multiple
of the mesh's batch shards), prompts are right-padded to a power of two
(at least `min_prompt_bucket`), and the cache length is the power of two
that holds the longest prompt plus `max_new_tokens` (capped at `max_len`).
Prefill compiles once per (batch, prompt, cache) bucket and the decode step
once per (batch, cache) bucket; temperature, top-k and top-p are runtime
values (only switching greedy / filtered / plain sampling recompiles). The
jitted functions are module-level, so every Sampler of one config shares them.

Each decode step donates the cache. The next step is dispatched before the
host looks at the previous step's tokens, so checking stop conditions
overlaps device work (at most one step is computed in vain at the end).

Following a learner: `update_weights(params, version)` swaps in new weights of
the same shapes (placed like the old ones, so nothing recompiles), between calls
or, from `on_step` or another thread, between decode steps of a running
generation; every generated token records the weight version of the forward
pass that produced it (`GenerationResult.versions`), next to its behaviour
log-prob (the distribution it was drawn from, after temperature, top-k and
top-p) and its T=1 log-prob.

Reproducibility: the same prompts, seed, sampling config, model and mesh
give the same tokens. With `seed` an int, prompt i draws with key
`fold_in(key(seed), i)`; with one seed per prompt, prompt i uses `key(seed[i])`
and its samples do not depend on the rest of the batch's randomness. Its
logits can still differ in the last float bits when the batch or padding
bucket changes, which can flip a sample only at a near tie.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Sequence
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from cwm_jax.inference.decode import decode_step, prefill
from cwm_jax.inference.sampling import SamplingConfig, filter_logits, sample_tokens
from cwm_jax.inference.stopping import StopCriteria, decode_text
from cwm_jax.model import transformer
from cwm_jax.model.config import ModelConfig
from cwm_jax.model.params import check_params
from cwm_jax.sharding.partition import param_shardings
from cwm_jax.sharding.rules import logical_to_spec
from cwm_jax.tokenizer.base import Tokenizer
from cwm_jax.train.loss import chunked_token_logprobs

GREEDY = SamplingConfig(temperature=0.0)


@dataclasses.dataclass(frozen=True)
class GenerationResult:
  """Per prompt, in input order: generated tokens (without the prompt; including
  the token that stopped it), their log-probs under the distribution each was drawn
  from (see `sampling.py`: temperature-scaled, after top-k/top-p) and T=1 log-probs,
  float32, why it stopped ("stop_token" | "stop_string" | "length"), the decoded
  text when a tokenizer was given (ids past the tokenizer's vocabulary have no
  text), and the weight version that produced each token (int64)."""

  tokens: list[list[int]]
  logprobs: list[np.ndarray]
  raw_logprobs: list[np.ndarray]
  finish_reasons: list[str]
  texts: Optional[list[str]] = None
  versions: Optional[list[np.ndarray]] = None


def _prefill_and_sample(params, tokens_BT, lengths_B, keys_B, temperature, top_k, top_p, *,
                        cfg, cache_len, greedy, filtered):
  logits_BV, cache = prefill(params, tokens_BT, lengths_B, cfg, cache_len)
  return (cache, *sample_tokens(logits_BV, keys_B, 0, temperature, top_k, top_p,
                                greedy=greedy, filtered=filtered))


def _decode_and_sample(params, cache, tokens_B, keys_B, step, temperature, top_k, top_p, *,
                       cfg, greedy, filtered):
  logits_BV, cache = decode_step(params, cache, tokens_B, cfg)
  return (cache, *sample_tokens(logits_BV, keys_B, step, temperature, top_k, top_p,
                                greedy=greedy, filtered=filtered))


def _score(params, tokens_BT, temperature, top_k, top_p, *, cfg, filtered, chunk):
  """Log-probs [B, T] of tokens[t + 1] given tokens[..t] (0 at the last position):
  under the sampling distribution (scaled, truncated when `filtered`) and T=1.
  Chunked over the sequence like the training loss: no [B, T, V] float32 array."""
  x_BTD = transformer.hidden_states(params, tokens_BT, cfg)
  head_DV = params["lm_head"].astype(jnp.dtype(cfg.dtype))
  targets_BT = jnp.concatenate([tokens_BT[:, 1:], jnp.zeros_like(tokens_BT[:, :1])], axis=1)
  truncate = (lambda l: filter_logits(l, top_k, top_p)) if filtered else None
  scaled_BT = chunked_token_logprobs(x_BTD, head_DV, targets_BT, chunk_size=chunk,
                                     temperature=temperature, filter_fn=truncate)
  raw_BT = chunked_token_logprobs(x_BTD, head_DV, targets_BT, chunk_size=chunk)
  return scaled_BT, raw_BT


_PREFILL = jax.jit(_prefill_and_sample, static_argnames=("cfg", "cache_len", "greedy", "filtered"))
_DECODE = jax.jit(_decode_and_sample, static_argnames=("cfg", "greedy", "filtered"),
                  donate_argnames=("cache",))
_SCORE = jax.jit(_score, static_argnames=("cfg", "filtered", "chunk"))


def compile_count() -> int:
  """Programs compiled so far by all Samplers (prefill + decode + score)."""
  return sum(f._cache_size() for f in (_PREFILL, _DECODE, _SCORE))


def bucket(n: int, minimum: int = 1, multiple: int = 1, cap: Optional[int] = None) -> int:
  """The power of two >= max(n, minimum), rounded up to `multiple`, at most `cap`."""
  size = 1 << (max(n, minimum) - 1).bit_length()
  size = -(-size // multiple) * multiple
  return size if cap is None else min(size, cap)


def check_tokenizer(tokenizer: Tokenizer, cfg: ModelConfig) -> None:
  """A clear error when the tokenizer's ids do not all fit the model's vocabulary."""
  top_special = max(tokenizer.special_ids.values())
  if tokenizer.vocab_size > cfg.vocab_size or top_special >= cfg.vocab_size:
    raise ValueError(
        f"tokenizer {tokenizer!r} does not fit the model: it uses ids 0..{tokenizer.vocab_size - 1} "
        f"(special tokens up to {top_special}), but the model's vocab_size is {cfg.vocab_size}. "
        "Use the tokenizer the model was trained with.")


def _as_prompts(prompts, vocab_size: int) -> list[np.ndarray]:
  if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (Sequence, np.ndarray)):
    raise ValueError(f"prompts: expected a sequence of token-id sequences, got "
                     f"{type(prompts).__name__}.")
  if not len(prompts):
    raise ValueError("prompts: expected at least one prompt, got none.")
  out = []
  for i, p in enumerate(prompts):
    if isinstance(p, (str, bytes)):
      raise ValueError(f"prompts[{i}] is text; expected token ids (encode it with a tokenizer).")
    a = np.asarray(p)
    if a.ndim != 1 or not (a.size == 0 or np.issubdtype(a.dtype, np.integer)):
      raise ValueError(f"prompts[{i}]: expected a flat sequence of int token ids, got shape "
                       f"{a.shape} dtype {a.dtype}.")
    if a.size == 0:
      raise ValueError(f"prompts[{i}] is empty; a prompt needs at least one token (e.g. BOS).")
    if a.min() < 0 or a.max() >= vocab_size:
      raise ValueError(f"prompts[{i}]: token ids must lie in [0, {vocab_size}); got min "
                       f"{a.min()}, max {a.max()}.")
    out.append(a.astype(np.int32))
  return out


def _row_keys(seed, n: int, n_rows: int):
  if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(int(seed)),
                                                           jnp.arange(n_rows))
  seeds = list(seed) if isinstance(seed, (Sequence, np.ndarray)) else None
  if seeds is None or len(seeds) != n or not all(
      isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
    raise ValueError(f"seed={seed!r}: expected an int or one int per prompt ({n} prompts).")
  return jax.vmap(jax.random.key)(jnp.asarray(seeds + [0] * (n_rows - n), jnp.uint32))


def batch_shards(mesh: Mesh) -> int:
  """How many ways `mesh` splits the batch axis (decoding needs the length unsplit)."""
  if logical_to_spec(("length",), mesh)[0] is not None:
    raise ValueError("the mesh splits the logical 'length' axis (sequence/context parallelism); "
                     "sampling needs it unsplit. Use a mesh with context=1.")
  n = 1
  spec = logical_to_spec(("batch",), mesh)[0]
  for name in (() if spec is None else (spec,) if isinstance(spec, str) else spec):
    n *= mesh.shape[name]
  return n


def _check_version(version) -> int:
  if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
    raise ValueError(f"version={version!r}: expected an int >= 0 (the learner step of the "
                     "weights).")
  return int(version)


class Sampler:
  """Generation for one model and parameter set; see the module docstring."""

  def __init__(self, model_cfg: ModelConfig, params: dict, *, mesh: Optional[Mesh] = None,
               max_len: Optional[int] = None, min_prompt_bucket: int = 16, version: int = 0,
               score_chunk: int = 1024):
    max_len = model_cfg.max_seq_len if max_len is None else max_len
    if isinstance(max_len, bool) or not isinstance(max_len, int) or not 2 <= max_len <= \
        model_cfg.max_seq_len:
      raise ValueError(f"Sampler: max_len={max_len!r}: expected an int in [2, "
                       f"{model_cfg.max_seq_len}] (the model's max_seq_len).")
    check_params(model_cfg, params)
    self.cfg, self.mesh, self.max_len = model_cfg, mesh, max_len
    self.min_prompt_bucket = min_prompt_bucket
    self._batch_shards = 1
    if mesh is not None:
      self._batch_shards = batch_shards(mesh)
      with jax.set_mesh(mesh):
        self.params = jax.device_put(params, param_shardings(mesh, model_cfg))
    else:
      # Committed to one device, so weights swapped in later (placed the same way)
      # hit the same compiled programs.
      self.params = jax.device_put(params, jax.devices()[0])
    self.version = _check_version(version)
    self.score_chunk = score_chunk
    self._lock = threading.Lock()

  def update_weights(self, params: dict, version: int) -> None:
    """Swaps in new weights (same shapes and dtypes), tagged `version`. They are
    placed like the current ones, so no program recompiles; a running `generate`
    uses them from its next decode step. Safe to call from another thread."""
    check_params(self.cfg, params)
    version = _check_version(version)
    # A copy: the caller may donate its arrays (e.g. the next train step) afterwards.
    placed = jax.device_put(params, jax.tree.map(lambda a: a.sharding, self.params),
                            may_alias=False)
    with self._lock:
      self.params, self.version = placed, version

  def weights(self) -> tuple[dict, int]:
    """(params, version) as one consistent pair."""
    with self._lock:
      return self.params, self.version

  def _context(self):
    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  def _put(self, x, axes):
    if self.mesh is None:
      return jnp.asarray(x)
    return jax.device_put(x, NamedSharding(self.mesh, logical_to_spec(axes, self.mesh)))

  def _pad_batch(self, prompts: list[np.ndarray]):
    """Right-padded [B, T] tokens (zeros) and lengths; padding rows are one token long."""
    n_rows = bucket(len(prompts), multiple=self._batch_shards)
    T = bucket(max(len(p) for p in prompts), self.min_prompt_bucket, cap=self.max_len)
    tokens = np.zeros((n_rows, T), np.int32)
    lengths = np.ones((n_rows,), np.int32)
    for b, p in enumerate(prompts):
      tokens[b, :len(p)] = p
      lengths[b] = len(p)
    return tokens, lengths

  def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
               sampling: SamplingConfig = GREEDY, stop_token_ids: Sequence[int] = (),
               stop_strings: Sequence[str] = (), tokenizer: Optional[Tokenizer] = None,
               seed: Union[int, Sequence[int]] = 0,
               on_step: Optional[Callable[[int], None]] = None) -> GenerationResult:
    """Generates up to `max_new_tokens` tokens after each prompt (token ids).

    A row stops at any of `stop_token_ids`, at any of `stop_strings` in its
    decoded text (needs `tokenizer`), or after `max_new_tokens` tokens.
    `on_step(n)` is called before the forward pass that produces token n (n >= 1;
    token 0 comes from the prefill), e.g. to `update_weights` mid-generation.
    """
    cfg = self.cfg
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
        or max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected an int >= 1.")
    if not isinstance(sampling, SamplingConfig):
      raise ValueError(f"sampling: expected a SamplingConfig, got {type(sampling).__name__}.")
    if isinstance(stop_strings, str):
      raise ValueError(f"stop_strings={stop_strings!r}: expected a sequence of strings, "
                       "not one string.")
    if any(not isinstance(s, str) or not s for s in stop_strings):
      raise ValueError(f"stop_strings={stop_strings!r}: expected non-empty strings.")
    if stop_strings and tokenizer is None:
      raise ValueError("stop_strings need a tokenizer (pass tokenizer=...) to decode the text.")
    if tokenizer is not None:
      check_tokenizer(tokenizer, cfg)
    bad_stop = [t for t in stop_token_ids if not 0 <= int(t) < cfg.vocab_size]
    if bad_stop:
      raise ValueError(f"stop_token_ids {bad_stop} lie outside the model's vocabulary "
                       f"[0, {cfg.vocab_size}).")
    prompts = _as_prompts(prompts, cfg.vocab_size)
    room = self.max_len - max_new_tokens
    for i, p in enumerate(prompts):
      if len(p) > room:
        raise ValueError(
            f"prompts[{i}] has {len(p)} tokens; with max_new_tokens={max_new_tokens} and the "
            f"sampler's max_len={self.max_len} (the KV cache), prompts may have at most "
            f"{max(room, 0)} tokens. Shorten the prompt, lower max_new_tokens or raise max_len.")

    n = len(prompts)
    tokens_BT, lengths_B = self._pad_batch(prompts)
    n_rows = tokens_BT.shape[0]
    # The last sampled token is never fed back, so rows need len + max_new - 1 slots.
    cache_len = bucket(int(lengths_B.max()) + max_new_tokens - 1, tokens_BT.shape[1],
                       cap=self.max_len)
    keys_B = _row_keys(seed, n, n_rows)
    knobs = (jnp.float32(max(sampling.temperature, 1e-6)), jnp.int32(sampling.top_k),
             jnp.float32(sampling.top_p))
    static = dict(cfg=cfg, greedy=sampling.greedy, filtered=sampling.filtered)
    criteria = StopCriteria(max_new_tokens, stop_token_ids, stop_strings, tokenizer)

    out_tokens = [[] for _ in range(n)]
    out_lp = [[] for _ in range(n)]
    out_raw = [[] for _ in range(n)]
    out_version = [[] for _ in range(n)]
    reasons: list[Optional[str]] = [None] * n
    checked = [0] * n

    def consume(tok_B, lp_B, raw_B, version) -> bool:
      """Appends one step's tokens to the live rows; True when every row is done."""
      tok_B, lp_B, raw_B = jax.device_get((tok_B, lp_B, raw_B))
      for b in range(n):
        if reasons[b] is None:
          out_tokens[b].append(int(tok_B[b]))
          out_lp[b].append(lp_B[b])
          out_raw[b].append(raw_B[b])
          out_version[b].append(version)
          reasons[b], checked[b] = criteria.check(out_tokens[b], checked[b])
      return all(r is not None for r in reasons)

    with self._context():
      keys_B = self._put(keys_B, ("batch",))
      params, version = self.weights()
      cache, *pending = _PREFILL(params, self._put(tokens_BT, ("batch", None)),
                                 self._put(lengths_B, ("batch",)), keys_B, *knobs,
                                 cache_len=cache_len, **static)
      pending.append(version)
      for step in range(1, max_new_tokens + 1):
        if step < max_new_tokens:
          if on_step is not None:
            on_step(step)
          params, version = self.weights()
          # Dispatch the next step before reading this one's tokens on the host.
          cache, *following = _DECODE(params, cache, pending[0], keys_B,
                                      jnp.int32(step), *knobs, **static)
          following.append(version)
        if consume(*pending):  # always true at the last step: every row is at its budget
          break
        pending = following

    texts = [decode_text(tokenizer, t) for t in out_tokens] if tokenizer is not None else None
    return GenerationResult(out_tokens, [np.asarray(x, np.float32) for x in out_lp],
                            [np.asarray(x, np.float32) for x in out_raw], list(reasons), texts,
                            [np.asarray(v, np.int64) for v in out_version])

  def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *,
            temperature: float = 1.0, sampling: Optional[SamplingConfig] = None
            ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Teacher-forced log-probs of each continuation given its prompt.

    Returns (logprobs, raw_logprobs): per prompt a float32 array with one entry
    per continuation token, under the sampling distribution (`sampling`, or
    softmax(logits / temperature)) and softmax(logits): the two quantities
    `generate` returns. One forward pass, no cache; the log-probs are computed in
    chunks of `score_chunk` positions, so no [B, T, V] float32 array exists and
    memory grows linearly with the length.
    """
    if sampling is None:
      if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
          or not temperature > 0:
        raise ValueError(f"score: temperature={temperature!r}: expected a float > 0.")
      sampling = SamplingConfig(temperature=float(temperature))
    elif not isinstance(sampling, SamplingConfig) or sampling.greedy:
      raise ValueError(f"score: sampling={sampling!r}: expected a SamplingConfig with "
                       "temperature > 0.")
    if len(continuations) != len(prompts):
      raise ValueError(f"score: {len(prompts)} prompts but {len(continuations)} continuations.")
    prompts = _as_prompts(prompts, self.cfg.vocab_size)
    conts = _as_prompts(continuations, self.cfg.vocab_size)
    seqs = [np.concatenate([p, c]) for p, c in zip(prompts, conts)]
    for i, s in enumerate(seqs):
      if len(s) > self.max_len:
        raise ValueError(f"score: prompts[{i}] + continuations[{i}] have {len(s)} tokens, more "
                         f"than the sampler's max_len={self.max_len}.")
    tokens_BT, _ = self._pad_batch(seqs)
    params, _ = self.weights()
    with self._context():
      lp_BT, raw_BT = jax.device_get(_SCORE(
          params, self._put(tokens_BT, ("batch", None)), jnp.float32(sampling.temperature),
          jnp.int32(sampling.top_k), jnp.float32(sampling.top_p), cfg=self.cfg,
          filtered=sampling.filtered, chunk=self.score_chunk))
    spans = [(len(p) - 1, len(p) - 1 + len(c)) for p, c in zip(prompts, conts)]
    return ([lp_BT[b, s:e].astype(np.float32) for b, (s, e) in enumerate(spans)],
            [raw_BT[b, s:e].astype(np.float32) for b, (s, e) in enumerate(spans)])


def generate(params: dict, model_cfg: ModelConfig, prompts: Sequence[Sequence[int]], *,
             mesh: Optional[Mesh] = None, max_len: Optional[int] = None,
             **kwargs) -> GenerationResult:
  """One-off `Sampler(model_cfg, params, mesh=mesh, max_len=max_len).generate(prompts, **kwargs)`.

  Compiled programs are shared across Samplers, but placing the params is
  repeated per call: hold a Sampler for many calls.
  """
  return Sampler(model_cfg, params, mesh=mesh, max_len=max_len).generate(prompts, **kwargs)
