"""Record bytes -> one document {"tokens", "loss_mask", "stats"} (a picklable grain map).

Canonical record schemas (one JSON object per record; other keys are ignored):
  kind "text":  {"text": str}                 BOS + text + EOS; loss on every token after BOS
  kind "trace": {"trace_text": str}           the canonical trace text (FORMATS.md, as
                written by `format_trace`); loss on the frames and <|end_of_text|>, and on
                the context too when `train_on_context`
  kind "chat":  {"messages": [{"role", "content", ["name"], ["train"]}, ...]}
                loss on the bodies + <|eot_id|> of assistant messages (or of messages
                whose "train" key is true)
  kind "trajectory": {"messages": [...]} an agentic trajectory (FORMATS.md): every
                message body is trained on except that each observation (role "tool")
                is loss-masked with probability 0.5, drawn from a hash of (seed,
                record bytes): reproducible, independent of order, sharding, workers
Trace records written by data_pipelines.generate also carry "status"; one whose
status is not "ok" (a dropped request, empty trace_text) is counted as trace_not_ok.
A record that fails to decode or validate becomes an empty document whose `stats`
names the reason; the packer counts and skips it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import grain
import numpy as np

from cwm_jax.tokenizer import load_tokenizer
from cwm_jax.tokenizer.formats import ROLES, encode_dialog_with_mask
from data_pipelines.pipeline import stats as st
from data_pipelines.traces.format import encode_trace_with_mask
from data_pipelines.traces.parse import parse_trace

KINDS = ("text", "trace", "chat", "trajectory")
OBSERVATION_MASK_PROB = 0.5
_TOKENIZERS: dict[str, Any] = {}  # per process: grain workers load their own copy


def _tokenizer(path: str):
  if path not in _TOKENIZERS:
    _TOKENIZERS[path] = load_tokenizer(path)
  return _TOKENIZERS[path]


def _document(ids, mask, stat: str = "documents") -> dict[str, np.ndarray]:
  return {"tokens": np.asarray(ids, np.int32), "loss_mask": np.asarray(mask, np.int32),
          "stats": st.one_hot(stat)}


def skipped(reason: str) -> dict[str, np.ndarray]:
  return _document([], [], reason)


def _observation_rng(raw, seed: int) -> np.random.Generator:
  raw = raw if isinstance(raw, (bytes, bytearray)) else str(raw).encode("utf-8", "replace")
  digest = hashlib.blake2b(bytes(raw), digest_size=8, key=seed.to_bytes(8, "little", signed=True))
  return np.random.default_rng(int.from_bytes(digest.digest(), "little"))


def encode_record(raw: bytes, kind: str, tokenizer, *, train_on_context: bool = False,
                  seed: int = 0) -> dict[str, np.ndarray]:
  """Decodes, validates and tokenizes one record; malformed records -> `skipped(reason)`."""
  try:
    text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
  except UnicodeDecodeError:
    return skipped("bad_utf8")
  try:
    record = json.loads(text)
  except ValueError:
    return skipped("bad_json")
  if not isinstance(record, dict):
    return skipped("bad_json")
  if kind == "text":
    body = record.get("text")
    if not isinstance(body, str):
      return skipped("bad_fields")
    ids = tokenizer.encode(body, bos=True, eos=True)
    return _document(ids, [0] + [1] * (len(ids) - 1))
  if kind == "trace":
    if record.get("status", "ok") != "ok":
      return skipped("trace_not_ok")
    body = record.get("trace_text")
    if not isinstance(body, str):
      return skipped("bad_fields")
    try:
      trace = parse_trace(body)
    except ValueError:
      return skipped("bad_trace")
    return _document(*encode_trace_with_mask(tokenizer, trace, train_on_context=train_on_context))
  if kind in ("chat", "trajectory"):
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
      return skipped("bad_fields")
    train_roles = ("assistant",)
    if kind == "trajectory":
      if not all(isinstance(m, dict) for m in messages):
        return skipped("bad_fields")
      train_roles, rng = ROLES, _observation_rng(raw, seed)
      messages = [{**m, "train": bool(rng.random() >= OBSERVATION_MASK_PROB)}
                  if m.get("role") == "tool" and "train" not in m else m for m in messages]
    try:
      return _document(*encode_dialog_with_mask(tokenizer, messages, train_roles=train_roles))
    except (ValueError, TypeError, AttributeError):
      return skipped("bad_fields")
  raise ValueError(f"unknown record kind {kind!r}: expected one of {KINDS}.")


class TokenizeRecord(grain.transforms.Map):
  """grain map: record bytes -> document; loads the tokenizer lazily in each process."""

  def __init__(self, kind: str, tokenizer_path: str, train_on_context: bool = False,
               seed: int = 0):
    if kind not in KINDS:
      raise ValueError(f"unknown record kind {kind!r}: expected one of {KINDS}.")
    self.kind, self.tokenizer_path, self.train_on_context = kind, tokenizer_path, train_on_context
    self.seed = seed

  def map(self, raw: bytes) -> dict[str, np.ndarray]:
    return encode_record(raw, self.kind, _tokenizer(self.tokenizer_path),
                         train_on_context=self.train_on_context, seed=self.seed)
