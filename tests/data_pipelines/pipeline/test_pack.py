"""PackIterDataset against a numpy reference, and its exact resume."""

import grain
import numpy as np
import pytest

from data_pipelines.pipeline import stats as st
from data_pipelines.pipeline.pack import PackIterDataset


def _docs(seed, n, max_len):
  rng = np.random.default_rng(seed)
  docs = []
  for _ in range(n):
    length = int(rng.integers(0, max_len + 1))
    stat = st.one_hot("documents") if length else st.one_hot("bad_json")
    docs.append({"tokens": rng.integers(1, 1000, length).astype(np.int32),
                 "loss_mask": rng.integers(0, 2, length).astype(np.int32), "stats": stat})
  return docs


def _reference(docs, t, overflow, open_rows):
  """First-fit packing written plainly: lists of (tokens, mask) per row, in closing order."""
  pieces = []
  for d in docs:
    n = len(d["tokens"])
    if n == 0 or (n > t and overflow == "drop"):
      continue
    pieces += [(d["tokens"][i:i + t], d["loss_mask"][i:i + t]) for i in range(0, n, t)]
  size = lambda row: sum(len(q[0]) for q in row)
  rows, closed = [], []
  for p in pieces:
    fits = [row for row in rows if size(row) + len(p[0]) <= t]
    if fits:
      fits[0].append(p)
    else:
      if len(rows) == open_rows:
        closed.append(rows.pop(0))
      rows.append([p])
    closed += [row for row in rows if size(row) == t]
    rows = [row for row in rows if size(row) < t]
  return closed + rows


def _pack(docs, t, overflow, open_rows=1):
  return list(PackIterDataset(grain.MapDataset.source(docs).to_iter_dataset(), t,
                              overflow=overflow, open_rows=open_rows))


@pytest.mark.parametrize("open_rows", [1, 4])
@pytest.mark.parametrize("overflow", ["split", "drop"])
@pytest.mark.parametrize("seed,max_len", [(0, 10), (1, 40), (2, 16)])
def test_packing_matches_reference(seed, max_len, overflow, open_rows):
  t = 16
  docs = _docs(seed, 60, max_len)
  rows = _pack(docs, t, overflow, open_rows)
  expected = _reference(docs, t, overflow, open_rows)
  assert len(rows) == len(expected)
  for row, pieces in zip(rows, expected):
    assert all(row[k].dtype == np.int32 and row[k].shape == (t,)
               for k in ("tokens", "positions", "segment_ids", "loss_mask"))
    start = 0
    for k, (ids, mask) in enumerate(pieces, start=1):
      sl = slice(start, start + len(ids))
      np.testing.assert_array_equal(row["tokens"][sl], ids)
      np.testing.assert_array_equal(row["loss_mask"][sl], mask)
      np.testing.assert_array_equal(row["positions"][sl], np.arange(len(ids)))
      assert (row["segment_ids"][sl] == k).all()
      start += len(ids)
    assert (row["segment_ids"][start:] == 0).all() and (row["loss_mask"][start:] == 0).all()
  # Every token of every kept document appears exactly once (in order when open_rows=1).
  kept = [d for d in docs if len(d["tokens"]) and (overflow == "split" or len(d["tokens"]) <= t)]
  flat = np.concatenate([r["tokens"][r["segment_ids"] > 0] for r in rows])
  all_tokens = np.concatenate([d["tokens"] for d in kept])
  if open_rows == 1:
    np.testing.assert_array_equal(flat, all_tokens)
  else:
    np.testing.assert_array_equal(np.sort(flat), np.sort(all_tokens))
  totals = sum(r["stats"] for r in rows)
  long = sum(len(d["tokens"]) > t for d in docs)
  assert totals[st.INDEX["bad_json"]] == sum(len(d["tokens"]) == 0 for d in docs)
  assert totals[st.INDEX["split" if overflow == "split" else "too_long"]] == long


@pytest.mark.parametrize("open_rows", [1, 4])
def test_resume_from_every_row_continues_exactly(open_rows):
  docs = _docs(3, 40, 24)
  ds = PackIterDataset(grain.MapDataset.source(docs).to_iter_dataset(), 16, open_rows=open_rows)
  it, rows, states = iter(ds), [], []
  while True:
    states.append(it.get_state())
    try:
      rows.append(next(it))
    except StopIteration:
      break
  # Some saves are inside open rows, some inside a split document.
  assert any(s["rows"] for s in states) and any(s["queue"] for s in states)
  for n, state in enumerate(states):
    it2 = iter(ds)
    it2.set_state(state)
    rest = list(it2)
    assert len(rest) == len(rows) - n
    for a, b in zip(rows[n:], rest):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_bad_overflow_is_rejected():
  with pytest.raises(ValueError, match="overflow"):
    PackIterDataset(grain.MapDataset.source([]).to_iter_dataset(), 8, overflow="truncate")
