"""First-fit packing of documents into fixed-length rows (a grain IterDataset).

Strategy (deterministic): up to `open_rows` rows are open at once. Each document goes
into the first (oldest) open row with room for it; if none has room, a new row is
opened, and if `open_rows` are already open the oldest is closed first (the rest of
it is padding). A row that becomes exactly full is closed at once; at the end of the
input the open rows are closed oldest first. `open_rows=1` is plain greedy in-order
packing. A document longer than `seq_len` is either split into consecutive pieces of
`seq_len` tokens (the last one shorter), each packed as its own segment with
positions restarting at 0 (overflow="split"; the first token of each piece is then
never a target), or dropped and counted (overflow="drop").

Rows are {"tokens", "positions", "segment_ids", "loss_mask"} of int32 [T], segment
ids 1..k in a row and 0 on padding, plus `stats` (stats.py): the counts of the
records consumed since the previous row was closed.

We pack ourselves instead of with grain's FirstFitPack/ConcatThenSplit because rows
must carry the skip counts and split long documents at document granularity; the
iterator state holds the open rows, so a restore continues exactly.
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

from data_pipelines.pipeline import stats as st

OVERFLOW = ("split", "drop")


def make_row(pieces: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int = 0
             ) -> dict[str, np.ndarray]:
  """Pieces (tokens, loss_mask) with total length <= seq_len -> one padded row."""
  tokens = np.full(seq_len, pad_id, np.int32)
  positions = np.zeros(seq_len, np.int32)
  segment_ids = np.zeros(seq_len, np.int32)
  loss_mask = np.zeros(seq_len, np.int32)
  start = 0
  for k, (ids, mask) in enumerate(pieces, start=1):
    end = start + len(ids)
    tokens[start:end] = ids
    positions[start:end] = np.arange(len(ids), dtype=np.int32)
    segment_ids[start:end] = k
    loss_mask[start:end] = mask
    start = end
  return {"tokens": tokens, "positions": positions, "segment_ids": segment_ids,
          "loss_mask": loss_mask}


class _PackIterator(grain.DatasetIterator):

  def __init__(self, parent, seq_len: int, overflow: str, pad_id: int, open_rows: int):
    super().__init__(parent)
    self._seq_len, self._overflow, self._pad_id = seq_len, overflow, pad_id
    self._open_rows = open_rows
    self._rows: list[list[tuple[np.ndarray, np.ndarray]]] = []  # open rows, oldest first
    self._queue: list[tuple[np.ndarray, np.ndarray]] = []  # pieces of a split document
    self._closed: list[list[tuple[np.ndarray, np.ndarray]]] = []  # rows ready to return
    self._counts = st.zeros()
    self._done = False

  def _next_piece(self):
    """The next piece of at most seq_len tokens, or None at the end of the input."""
    while True:
      if self._queue:
        return self._queue.pop(0)
      try:
        doc = next(self._parent)
      except StopIteration:
        return None
      self._counts = self._counts + doc["stats"]
      ids, mask = np.asarray(doc["tokens"], np.int32), np.asarray(doc["loss_mask"], np.int32)
      n, t = len(ids), self._seq_len
      if n == 0:
        if doc["stats"][st.INDEX["documents"]]:
          self._counts[st.INDEX["empty"]] += 1
        continue
      if n <= t:
        return ids, mask
      if self._overflow == "drop":
        self._counts[st.INDEX["too_long"]] += 1
        continue
      self._counts[st.INDEX["split"]] += 1
      self._queue = [(ids[i:i + t], mask[i:i + t]) for i in range(0, n, t)]

  def _place(self, piece) -> None:
    n = len(piece[0])
    for i, row in enumerate(self._rows):
      used = sum(len(p[0]) for p in row)
      if used + n <= self._seq_len:
        row.append(piece)
        if used + n == self._seq_len:
          self._closed.append(self._rows.pop(i))
        return
    if len(self._rows) == self._open_rows:
      self._closed.append(self._rows.pop(0))
    if n == self._seq_len:
      self._closed.append([piece])
    else:
      self._rows.append([piece])

  def __next__(self):
    while not self._closed:
      piece = None if self._done else self._next_piece()
      if piece is None:
        self._done = True
        if not self._rows:
          raise StopIteration
        self._closed.append(self._rows.pop(0))
      else:
        self._place(piece)
    row = make_row(self._closed.pop(0), self._seq_len, self._pad_id)
    row["stats"], self._counts = self._counts, st.zeros()
    return row

  def get_state(self):
    as_lists = lambda pieces: [[p[0].tolist(), p[1].tolist()] for p in pieces]
    return {"parent": self._parent.get_state(), "rows": [as_lists(r) for r in self._rows],
            "closed": [as_lists(r) for r in self._closed], "queue": as_lists(self._queue),
            "stats": self._counts.tolist(), "done": self._done}

  def set_state(self, state):
    self._parent.set_state(state["parent"])
    as_arrays = lambda pieces: [(np.asarray(a, np.int32), np.asarray(b, np.int32))
                                for a, b in pieces]
    self._rows = [as_arrays(r) for r in state["rows"]]
    self._closed = [as_arrays(r) for r in state["closed"]]
    self._queue = as_arrays(state["queue"])
    self._counts = np.asarray(state["stats"], np.int64)
    self._done = state["done"]


class PackIterDataset(grain.IterDataset):
  """Documents {"tokens", "loss_mask", "stats"} -> packed rows of length seq_len."""

  def __init__(self, parent: grain.IterDataset, seq_len: int, *, overflow: str = "split",
               pad_id: int = 0, open_rows: int = 8):
    if overflow not in OVERFLOW:
      raise ValueError(f"overflow must be one of {OVERFLOW}, got {overflow!r}.")
    if seq_len < 2:
      raise ValueError(f"seq_len must be >= 2, got {seq_len}.")
    if not isinstance(open_rows, int) or open_rows < 1:
      raise ValueError(f"open_rows must be an int >= 1, got {open_rows!r}.")
    super().__init__(parent)
    self._seq_len, self._overflow, self._pad_id = seq_len, overflow, pad_id
    self._open_rows = open_rows

  def __iter__(self):
    return _PackIterator(self._parent.__iter__(), self._seq_len, self._overflow, self._pad_id,
                         self._open_rows)

  def __str__(self) -> str:
    return (f"PackIterDataset(seq_len={self._seq_len}, overflow={self._overflow}, "
            f"open_rows={self._open_rows})")
