"""Console hygiene for entry points: library INFO chatter off, our progress lines on."""

from __future__ import annotations

import logging as py_logging

from absl import logging

# Libraries that log several INFO lines per checkpoint or per compile.
CHATTY = ("/orbax/", "/jax/_src/", "/etils/", "/grain/")


class _DropLibraryInfo(py_logging.Filter):
  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or not any(p in record.pathname for p in CHATTY)


def quiet_library_logs() -> None:
  """Keeps WARNING and above from every library, INFO only from this project."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
    handler.addFilter(_DropLibraryInfo())
