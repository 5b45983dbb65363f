"""Random-access record sources: each record is the raw bytes of one JSON object.

Formats, picked from the file name:
  *.array_record / *.arrayrecord   ArrayRecord, one JSON object (UTF-8 bytes) per record
  *.jsonl / *.json                 JSON Lines, one object per non-blank line
  *.parquet                        Parquet, one row per record (columns -> JSON keys)

A file that is not what its name claims stops the pipeline with an error naming it;
a bad *record* inside a good file is counted and skipped later (records.py).
"""

from __future__ import annotations

import glob
import json
import mmap
import os
import threading
from typing import Sequence

import grain
import numpy as np

ARRAY_RECORD_SUFFIXES = (".array_record", ".arrayrecord")
JSONL_SUFFIXES = (".jsonl", ".json")
_JSONL_PROBE_LINES = 20


class _LazyFileSource(grain.sources.RandomAccessDataSource):
  """Pickling for sources that open their file lazily: the open handle (fields in
  `_TRANSIENT`, reset to their values there) and the lock stay behind, so a source
  can be sent to grain worker processes."""

  _TRANSIENT: dict = {}

  def __getstate__(self):
    state = dict(self.__dict__)
    state.update(self._TRANSIENT)
    del state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()


class JsonlSource(_LazyFileSource):
  """Lines of a JSON Lines file by index (blank lines are not records); picklable."""

  _TRANSIENT = {"_map": None}

  def __init__(self, path: str):
    self._path = os.fspath(path)
    with open(self._path, "rb") as f:
      data = f.read()
    if b"\x00" in data:
      raise ValueError(f"{self._path}: not a JSON Lines file (it contains NUL bytes: binary data).")
    starts, ends, pos = [], [], 0
    while pos < len(data):
      end = data.find(b"\n", pos)
      end = len(data) if end < 0 else end
      if data[pos:end].strip():
        starts.append(pos)
        ends.append(end)
      pos = end + 1
    self._starts = np.asarray(starts, np.int64)
    self._ends = np.asarray(ends, np.int64)
    probe = [data[s:e] for s, e in zip(starts[:_JSONL_PROBE_LINES], ends)]
    if probe and not any(_is_json_object(line) for line in probe):
      raise ValueError(f"{self._path}: not a JSON Lines file: none of its first {len(probe)} "
                       f"lines is a JSON object (first line starts {probe[0][:40]!r}).")
    self._map = None
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self._starts)

  def __getitem__(self, index: int) -> bytes:
    if self._map is None:
      with self._lock:  # grain reads from several threads
        if self._map is None:
          with open(self._path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return bytes(self._map[self._starts[index]:self._ends[index]])

  def __repr__(self) -> str:
    return f"JsonlSource({self._path!r}, {len(self)} records)"


class ParquetSource(_LazyFileSource):
  """Rows of a Parquet file by index, each as the UTF-8 JSON of {column: value}.

  Random access goes through the row-group index; the last row group read is
  cached (readers walk mostly in order within a shuffle window). Picklable.
  """

  _TRANSIENT = {"_file": None, "_cache": (None, None)}

  def __init__(self, path: str):
    import pyarrow.parquet as pq  # a dependency of apache-beam; imported only for Parquet
    self._path = os.fspath(path)
    try:
      meta = pq.ParquetFile(self._path).metadata
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError variously
      raise ValueError(f"{self._path}: not a readable Parquet file ({type(e).__name__}: {e}).") from e
    counts = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    self._group_starts = np.cumsum([0] + counts)
    self._file = None
    self._cache = (None, None)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return int(self._group_starts[-1])

  def __getitem__(self, index: int) -> bytes:
    if not 0 <= index < len(self):
      raise IndexError(f"{self._path}: row {index} out of range [0, {len(self)}).")
    group = int(np.searchsorted(self._group_starts, index, side="right") - 1)
    with self._lock:  # grain reads from several threads; pyarrow files are not thread-safe
      if self._cache[0] != group:
        if self._file is None:
          import pyarrow.parquet as pq
          self._file = pq.ParquetFile(self._path)
        self._cache = (group, self._file.read_row_group(group).to_pylist())
      row = self._cache[1][index - int(self._group_starts[group])]
    return json.dumps(row, ensure_ascii=False, default=str).encode("utf-8")

  def __repr__(self) -> str:
    return f"ParquetSource({self._path!r}, {len(self)} records)"


def _is_json_object(line: bytes) -> bool:
  try:
    return isinstance(json.loads(line), dict)
  except ValueError:
    return False


def open_array_record(paths: Sequence[str]) -> grain.sources.ArrayRecordDataSource:
  for path in paths:
    try:
      grain.sources.ArrayRecordDataSource([path]).__len__()
    except Exception as e:  # array_record raises RuntimeError/ValueError/OSError variously
      raise ValueError(f"{path}: not a readable ArrayRecord file ({type(e).__name__}: {e}).") from e
  return grain.sources.ArrayRecordDataSource(list(paths))


def open_source(path: str) -> grain.MapDataset:
  """A MapDataset of the record bytes of one file, by its suffix."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data file {path!r} does not exist.")
  lower = path.lower()
  if lower.endswith(ARRAY_RECORD_SUFFIXES):
    return grain.MapDataset.source(open_array_record([path]))
  if lower.endswith(JSONL_SUFFIXES):
    return grain.MapDataset.source(JsonlSource(path))
  if lower.endswith(".parquet"):
    return grain.MapDataset.source(ParquetSource(path))
  raise ValueError(f"{path}: unknown data file type; expected a name ending in "
                   f"{ARRAY_RECORD_SUFFIXES + JSONL_SUFFIXES + ('.parquet',)}.")


def expand_paths(paths: Sequence[str]) -> list[str]:
  """Paths with glob patterns (e.g. `out/traces-*.array_record`) expanded, sorted."""
  expanded = []
  for path in paths:
    if glob.has_magic(path):
      matches = sorted(glob.glob(path))
      if not matches:
        raise FileNotFoundError(f"data file pattern {path!r} matches no file.")
      expanded += matches
    else:
      expanded.append(path)
  return expanded


def open_sources(paths: Sequence[str]) -> grain.MapDataset:
  """All files of one source (globs expanded), concatenated in order."""
  datasets = [open_source(p) for p in expand_paths(paths)]
  return datasets[0] if len(datasets) == 1 else grain.MapDataset.concatenate(datasets)
