"""An Orbax checkpoint item holding one JSON dict *per process*.

Each process of a multi-process run reads its own shard of the data, so each
one has its own input-iterator state. Orbax's `JsonCheckpointHandler` writes
only on the primary host; this handler writes `process_<i>.json` from every
process into the same item directory (which Orbax creates, and commits
atomically with the rest of the step) and restores the file of the calling
process.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath


def process_file(process_index: int) -> str:
  return f"process_{process_index}.json"


class ProcessJsonHandler(ocp.CheckpointHandler):
  """Saves and restores this process's JSON dict (synchronously: it is small)."""

  def save(self, directory: epath.Path, args: "ProcessJsonSave") -> None:
    path = epath.Path(directory) / process_file(jax.process_index())
    path.write_text(json.dumps(args.item))

  def restore(self, directory: epath.Path,
              args: Optional["ProcessJsonRestore"] = None) -> Mapping[str, Any]:
    del args
    directory = epath.Path(directory)
    path = directory / process_file(jax.process_index())
    if not path.exists():
      found = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
      raise FileNotFoundError(
          f"{path} is missing: this checkpoint holds per-process state {found}, "
          f"and this is process {jax.process_index()} of {jax.process_count()} "
          "(resume with the same number of processes).")
    return json.loads(path.read_text())


@ocp.args.register_with_handler(ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class ProcessJsonSave(ocp.args.CheckpointArgs):
  item: Mapping[str, Any]


@ocp.args.register_with_handler(ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class ProcessJsonRestore(ocp.args.CheckpointArgs):
  pass
