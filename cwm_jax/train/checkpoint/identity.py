"""The identity of the experiment a checkpoint directory belongs to.

A JSON dict (the lead passes model config, stage and run name) stored once as
`DIR/identity.json`. Re-running with a workdir that already holds another
experiment's checkpoints must fail loudly instead of resuming the wrong run.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import jax
from absl import logging
from etils import epath

IDENTITY_FILE = "identity.json"


def normalize(identity: dict) -> dict:
  """The dict as it reads back from JSON (tuples -> lists, ...)."""
  if not isinstance(identity, dict):
    raise TypeError(f"checkpoint identity: expected a JSON dict, got {type(identity).__name__}.")
  try:
    return json.loads(json.dumps(identity))
  except (TypeError, ValueError) as e:
    raise ValueError(f"checkpoint identity is not JSON-serialisable ({e}).") from None


def differences(stored: Any, given: Any, prefix: str = "") -> list[str]:
  """'key: stored vs given' for every differing leaf (dotted key paths)."""
  if isinstance(stored, dict) and isinstance(given, dict):
    out = []
    for key in sorted(set(stored) | set(given)):
      name = f"{prefix}.{key}" if prefix else str(key)
      if key not in stored:
        out.append(f"{name}: absent in the directory vs {given[key]!r} given")
      elif key not in given:
        out.append(f"{name}: {stored[key]!r} in the directory vs absent in the given identity")
      else:
        out.extend(differences(stored[key], given[key], name))
    return out
  if stored != given:
    return [f"{prefix or '<identity>'}: {stored!r} in the directory vs {given!r} given"]
  return []


def read_identity(directory: epath.Path) -> Optional[dict]:
  path = directory / IDENTITY_FILE
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    logging.warning("%s is not valid JSON (%s); treating the directory as unlabelled.", path, e)
    return None


def check_and_store(directory: epath.Path, identity: Optional[dict], has_checkpoints: bool) -> None:
  """Raises if `directory` holds checkpoints of another identity; otherwise
  records `identity` there (process 0 only)."""
  if identity is None:
    return
  given = normalize(identity)
  stored = read_identity(directory)
  if stored is not None and has_checkpoints:
    diffs = differences(stored, given)
    if diffs:
      raise ValueError(
          f"{directory} holds checkpoints of a different experiment; differing identity keys: "
          + "; ".join(diffs) + ". Use another workdir, or delete that directory to start over.")
    return
  if stored == given or jax.process_index() != 0:
    return
  tmp = directory / (IDENTITY_FILE + ".tmp")
  tmp.write_text(json.dumps(given, indent=2, sort_keys=True))
  tmp.replace(directory / IDENTITY_FILE)
