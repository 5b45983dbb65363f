"""The reference for the debugger's commands: the real pdb, run on the real program.

Run as a script in a subprocess (trusted test programs only):

    python pdb_reference.py < {"context": str, "commands": [pdb command, ...]}

It executes CONTEXT as a module, then `pdb.Pdb.runcall(entry)` with the commands on
pdb's stdin, and prints one JSON list of stops: {"event", "lineno" (CONTEXT
numbering), "function", "locals" ({name: repr}, without pdb's __return__ and without
memory addresses, as FORMATS.md rule 7 writes reprs), "value" (repr returned or
raised, else null)}. pdb's first stop is the entry's first line
(bdb does not stop at the call of the function it was asked to run).
"""

import io
import json
import os
import pdb
import re
import sys
import tempfile

_ADDRESS_RE = re.compile(r" at 0x[0-9a-fA-F]+")


class RecordingPdb(pdb.Pdb):
  """pdb that records each stop before reading the next command."""

  def __init__(self, commands):
    super().__init__(stdin=io.StringIO("".join(c + "\n" for c in commands)), stdout=io.StringIO())
    self.use_rawinput = False
    self.stops, self._event, self._value = [], None, None

  def user_call(self, frame, argument_list):
    self._event, self._value = "call", None
    super().user_call(frame, argument_list)

  def user_line(self, frame):
    self._event, self._value = "line", None
    super().user_line(frame)

  def user_return(self, frame, return_value):
    self._event, self._value = "return", repr(return_value)
    super().user_return(frame, return_value)

  def user_exception(self, frame, exc_info):
    self._event, self._value = "exception", repr(exc_info[1])
    super().user_exception(frame, exc_info)

  def interaction(self, frame, traceback):
    if frame is not None:
      local_vars = {k: _ADDRESS_RE.sub("", repr(v)) for k, v in frame.f_locals.items()
                    if k not in ("__return__", "__exception__")}
      self.stops.append({"event": self._event, "lineno": frame.f_lineno,
                         "function": frame.f_code.co_name, "locals": local_vars,
                         "value": self._value})
    super().interaction(frame, traceback)


def main():
  request = json.load(sys.stdin)
  context = request["context"]
  marker = "  # << START_OF_TRACE"
  entry = next(re.match(r"def (\w+)", line).group(1) for line in context.split("\n")
               if line.endswith(marker))
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "prog.py")
    with open(path, "w") as f:
      f.write(context)
    module = {"__name__": "__main__", "__file__": path}
    exec(compile(context, path, "exec"), module)  # pylint: disable=exec-used
    debugger = RecordingPdb(request["commands"])
    try:
      debugger.runcall(module[entry])
    except pdb.bdb.BdbQuit:
      pass
    except Exception:  # pylint: disable=broad-except
      pass  # the program's own exception, after its stops were recorded
  json.dump(debugger.stops, sys.stdout)


if __name__ == "__main__":
  main()
