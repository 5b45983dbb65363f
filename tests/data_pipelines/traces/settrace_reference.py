"""The reference for the tracer's frames: a bare `sys.settrace` recorder on the real program.

Run as a script in a subprocess (trusted test programs only, PYTHONHASHSEED=0):

    python settrace_reference.py < [CONTEXT, ...]

For each CONTEXT it runs the text as the module `__main__`, then calls the function
whose `def` line ends with `  # << START_OF_TRACE` under `sys.settrace`, recording
every event of every frame whose code comes from CONTEXT until the entry returns. It
prints one JSON list per CONTEXT of [event, lineno, payload]: for call/line events the
frame's locals {name: repr} in `f_locals` order, for return/exception events the repr
of the value (the exception instance). Memory addresses (` at 0x...`) are removed
from reprs. No diff encoding, no limits: the plain truth the trace must encode.
"""

import json
import re
import sys

_ADDRESS_RE = re.compile(r" at 0x[0-9a-fA-F]+")
_FILENAME = "<reference_context>"


def _repr(value):
  return _ADDRESS_RE.sub("", repr(value))


def record(context):
  entry = next(re.match(r"def (\w+)", line).group(1) for line in context.split("\n")
               if line.endswith("  # << START_OF_TRACE"))
  module = {"__name__": "__main__"}
  exec(compile(context, _FILENAME, "exec"), module)  # pylint: disable=exec-used
  events, state = [], {"entry": None, "done": False}

  def local(frame, event, arg):
    if state["done"]:
      return None
    if event == "line":
      events.append(["line", frame.f_lineno, {k: _repr(v) for k, v in frame.f_locals.items()}])
    elif event == "return":
      events.append(["return", frame.f_lineno, _repr(arg)])
      if frame is state["entry"]:
        state["done"] = True
    elif event == "exception":
      events.append(["exception", frame.f_lineno, _repr(arg[1])])
    return local

  def on_call(frame, event, arg):
    if state["done"] or frame.f_code.co_filename != _FILENAME:
      return None
    if state["entry"] is None:
      state["entry"] = frame
    events.append(["call", frame.f_lineno, {k: _repr(v) for k, v in frame.f_locals.items()}])
    return local

  sys.settrace(on_call)
  try:
    module[entry]()
  except Exception:  # pylint: disable=broad-except
    pass  # the program's own exception, after its events were recorded
  finally:
    sys.settrace(None)
  return events


def main():
  json.dump([record(context) for context in json.load(sys.stdin)], sys.stdout)


if __name__ == "__main__":
  main()
