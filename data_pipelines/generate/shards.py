"""Shard files of a generation job: names, atomic writes, read-back, manifests.

A shard `k` of `n` is three files in the output directory:

    traces-0000k-of-0000n.array_record   one record per request: UTF-8 JSON (sorted keys)
    traces-0000k-of-0000n.jsonl          the same records, one per line, for inspection
    traces-0000k-of-0000n.manifest.json  the shard's counts; written last

Each file is written to a temporary name and renamed, and the shard manifest is
renamed last, so a shard is finished exactly when its manifest and both data files
exist: a killed or resumed job recomputes only unfinished shards.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Sequence

from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

PREFIX = "traces"
JOB_MANIFEST = "manifest.json"


def shard_name(index: int, num_shards: int) -> str:
  return f"{PREFIX}-{index:05d}-of-{num_shards:05d}"


def shard_paths(out_dir: str, index: int, num_shards: int) -> dict[str, str]:
  base = os.path.join(out_dir, shard_name(index, num_shards))
  return {"array_record": base + ".array_record", "jsonl": base + ".jsonl",
          "manifest": base + ".manifest.json"}


def shard_range(index: int, num_shards: int, num_records: int) -> tuple[int, int]:
  """Records [start, stop) of shard `index`: contiguous index ranges, sizes differing by <= 1."""
  return index * num_records // num_shards, (index + 1) * num_records // num_shards


def is_finished(out_dir: str, index: int, num_shards: int) -> bool:
  return all(os.path.exists(p) for p in shard_paths(out_dir, index, num_shards).values())


def encode_record(record: dict) -> bytes:
  return json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8")


def _tmp(path: str) -> str:
  return f"{path}.tmp-{os.getpid()}"


def write_json_atomic(path: str, obj) -> None:
  tmp = _tmp(path)
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def write_shard(out_dir: str, index: int, num_shards: int, records: Sequence[dict],
                manifest: dict) -> None:
  """Writes the shard's data files, then its manifest (each tmp + rename)."""
  paths = shard_paths(out_dir, index, num_shards)
  if os.path.exists(paths["manifest"]):
    os.remove(paths["manifest"])  # unfinished until the new manifest lands
  for path in paths.values():  # temporaries of an attempt that was killed
    for stale in glob.glob(glob.escape(path) + ".tmp-*"):
      os.remove(stale)
  encoded = [encode_record(r) for r in records]
  tmp = _tmp(paths["array_record"])
  writer = ArrayRecordWriter(tmp, "group_size:1")
  for data in encoded:
    writer.write(data)
  writer.close()
  os.replace(tmp, paths["array_record"])
  tmp = _tmp(paths["jsonl"])
  with open(tmp, "wb") as f:
    for data in encoded:
      f.write(data + b"\n")
  os.replace(tmp, paths["jsonl"])
  write_json_atomic(paths["manifest"], manifest)


def read_array_record(path: str) -> list[dict]:
  """The records of an ArrayRecord shard, parsed."""
  reader = ArrayRecordReader(path)
  try:
    return [json.loads(data.decode("utf-8")) for data in reader.read_all()]
  finally:
    reader.close()


def read_manifest(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def iter_shard_records(out_dir: str) -> Iterable[dict]:
  """Every record of a finished job, shard by shard (from the job manifest)."""
  manifest = read_manifest(os.path.join(out_dir, JOB_MANIFEST))
  for shard in manifest["shards"]:
    yield from read_array_record(os.path.join(out_dir, shard["array_record"]))
