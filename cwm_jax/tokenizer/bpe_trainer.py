"""A small byte-level BPE trainer that writes tiktoken rank files.

For toy experiments and tests that want the CWM tokenizer's exact behaviour
(Llama-3 pre-tokenisation, byte-level BPE, specials after the ranks) without the
released 128k-rank file. Ranks 0..255 are the single bytes in byte order; each
merge adds the most frequent adjacent pair (ties: the smallest pair of byte
strings), so the result is deterministic. Pure Python: meant for small corpora.
"""

from __future__ import annotations

import base64
import collections
import os
from collections.abc import Iterable

import regex  # tiktoken's own dependency; needed for \p{L} classes.

from cwm_jax.tokenizer.cwm_tiktoken import PRETOKENIZE_PATTERN


def train_bpe_ranks(texts: Iterable[str], num_merges: int, *,
                    pattern: str = PRETOKENIZE_PATTERN) -> dict[bytes, int]:
  """Learns up to `num_merges` merges; returns token bytes -> rank."""
  pretokenize = regex.compile(pattern)
  word_counts = collections.Counter()
  for text in texts:
    word_counts.update(w.encode("utf-8") for w in pretokenize.findall(text))

  words = [[bytes([b]) for b in w] for w in word_counts]
  freqs = list(word_counts.values())
  pair_counts = collections.Counter()
  pair_words = collections.defaultdict(set)
  for i, w in enumerate(words):
    for pair in zip(w, w[1:]):
      pair_counts[pair] += freqs[i]
      pair_words[pair].add(i)

  ranks = {bytes([b]): b for b in range(256)}
  for _ in range(num_merges):
    if not pair_counts:
      break
    best = min(pair_counts, key=lambda p: (-pair_counts[p], p))
    merged = best[0] + best[1]
    if merged not in ranks:
      ranks[merged] = len(ranks)
    for i in sorted(pair_words.pop(best)):
      w = words[i]
      for pair in zip(w, w[1:]):
        pair_counts[pair] -= freqs[i]
        if pair_counts[pair] <= 0:
          del pair_counts[pair]
      words[i] = w = _merge(w, best, merged)
      for pair in zip(w, w[1:]):
        pair_counts[pair] += freqs[i]
        pair_words[pair].add(i)
    pair_counts.pop(best, None)
  return ranks


def _merge(word: list[bytes], pair: tuple[bytes, bytes], merged: bytes) -> list[bytes]:
  out, i = [], 0
  while i < len(word):
    if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
      out.append(merged)
      i += 2
    else:
      out.append(word[i])
      i += 1
  return out


def write_rank_file(ranks: dict[bytes, int], path: str | os.PathLike) -> None:
  """Writes ranks as "BASE64_TOKEN RANK" lines in rank order (tiktoken format)."""
  with open(path, "wb") as f:
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
      f.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
