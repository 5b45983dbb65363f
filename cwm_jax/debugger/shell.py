"""`DebuggerShell`: the interactive, pdb-style front end of `NeuralDebugger`.

Each stop prints like pdb: an event banner (`--Call--`, `--Return--`,
`--Exception--`), the location `> FILE(LINE)FUNCTION()` (`->VALUE` after it on a
return) and `-> SOURCE LINE`. Errors start with `*** `. An empty line repeats the
last command; end of input quits.
"""

from __future__ import annotations

import cmd
import sys
from typing import TextIO

from cwm_jax.debugger.model import TraceModelError
from cwm_jax.debugger.session import DebuggerError, DebuggerState, NeuralDebugger

INTRO = ("Neural debugger: every frame below is the model's prediction; nothing is executed.\n"
         "Type help for the commands.")


class DebuggerShell(cmd.Cmd):
  """Reads commands from `stdin`, writes to `stdout` (the console by default)."""

  prompt = "(ndb) "

  def __init__(self, debugger: NeuralDebugger, stdin: TextIO | None = None,
               stdout: TextIO | None = None):
    super().__init__(stdin=stdin, stdout=stdout)
    self.use_rawinput = stdin is None
    self.debugger = debugger
    self.echo = stdin is not None and not stdin.isatty()  # show commands read from a script

  # ---------------------------------------------------------------- plumbing

  def say(self, text: str = "") -> None:
    self.stdout.write(text + "\n")

  def error(self, text: str) -> None:
    self.say("*** " + text.replace("\n", "\n    "))

  def preloop(self) -> None:
    self.say(INTRO)
    self._move(self.debugger.step)

  def precmd(self, line: str) -> str:
    if self.echo and line != "EOF":
      self.say(line.rstrip("\n"))
    return line

  def default(self, line: str) -> None:
    self.error(f"Unknown command {line.split()[0]!r}. Type help to list the commands.")

  def emptyline(self) -> bool:
    if self.lastcmd:
      return self.onecmd(self.lastcmd)
    return False

  def _move(self, command, *args) -> None:
    try:
      self.show(command(*args))
    except (DebuggerError, TraceModelError) as e:
      self.error(str(e))
    except KeyboardInterrupt:
      self.error("interrupted: nothing changed")

  def _no_args(self, name: str, arg: str) -> bool:
    if arg.strip():
      self.error(f"{name} takes no argument, got {arg.strip()!r}")
      return False
    return True

  def _force(self, name: str, arg: str) -> bool | None:
    arg = arg.strip()
    if arg in ("", "!", "force"):
      return bool(arg)
    self.error(f"{name} takes no argument or '!' (jump: force the return), got {arg!r}")
    return None

  # ---------------------------------------------------------------- display

  def location(self, state: DebuggerState) -> str:
    line = "?" if state.lineno is None else str(state.lineno)
    where = f"> {self.debugger.name}({line}){state.function or '?'}()"
    if state.event == "return":
      where += "->" + str(state.value)
    text = state.source_line.strip()
    if state.lineno is None:
      text += "   (not a line of the source)"
    return where + "\n-> " + text

  def show(self, state: DebuggerState) -> None:
    if state.event == "end":
      active = state.depth
      self.say(f"--End of trace-- (the model ended the trace with {active} invocation"
               f"{'s' if active != 1 else ''} still active)")
      return
    if state.event == "call":
      self.say("--Call--")
    elif state.event == "return":
      self.say("--Return--")
    elif state.event == "exception":
      self.say(f"--Exception-- {state.value}")
    self.say(self.location(state))
    if state.ended:
      self.say(f"--End of trace-- ({state.function} returned {state.value})")

  # ---------------------------------------------------------------- commands

  def do_step(self, arg):
    """s(tep): predict the next frame, stepping into calls."""
    if self._no_args("step", arg):
      self._move(self.debugger.step)

  def do_next(self, arg):
    """n(ext) [!]: continue to the next line (or return) of the current function,
    running through the calls it makes. `n!` jumps over each call instead: the
    callee's return is forced right after its call frame."""
    force = self._force("next", arg)
    if force is not None:
      self._move(self.debugger.next, force)

  def do_out(self, arg):
    """r(eturn) / out [!]: continue until the current function returns. `r!` jumps:
    the return is forced as the very next frame."""
    force = self._force("return", arg)
    if force is not None:
      self._move(self.debugger.out, force)

  def do_continue(self, arg):
    """c(ont(inue)): predict every frame up to the end of the trace."""
    if self._no_args("continue", arg):
      self._move(self.debugger.cont)

  def do_back(self, arg):
    """b(ack): undo the last frame (the next command predicts again from there)."""
    if self._no_args("back", arg):
      self._move(self.debugger.back)

  def do_reset(self, arg):
    """reset / restart: go back to the first frame of the trace."""
    if self._no_args("reset", arg):
      self._move(self.debugger.reset)

  def do_print(self, arg):
    """p(rint) [name]: the predicted locals of the current frame, or one of them
    (`__return__` / `__exception__` on a return / exception frame)."""
    names = arg.split()
    if len(names) > 1:
      self.error(f"print takes one variable name, got {arg.strip()!r}")
      return
    try:
      values = self.debugger.print(names[0] if names else None)
    except DebuggerError as e:
      self.error(str(e))
      return
    if names:
      self.say(values[names[0]])
    elif not values:
      self.say("(no locals)")
    else:
      for name, value in values.items():
        self.say(f"{name} = {value}")

  def do_where(self, arg):
    """w(here): the stack of active (predicted) invocations, innermost last."""
    if not self._no_args("where", arg):
      return
    stack = self.debugger.stack
    if not stack:
      self.say("(no frame yet)")
    source_map = self.debugger.source_map
    for k, inv in enumerate(stack):
      mark = ">" if k == len(stack) - 1 else " "
      lineno = source_map.user_line(inv.lineno)
      text = source_map.lines[inv.lineno - 1].strip() if inv.lineno else "?"
      self.say(f"{mark} {self.debugger.name}({'?' if lineno is None else lineno})"
               f"{inv.function}()\n-> {text}")

  def do_list(self, arg):
    """l(ist): the source around the current line (`->` marks it)."""
    if not self._no_args("list", arg):
      return
    source_map = self.debugger.source_map
    current = self.debugger.state.lineno
    offset = source_map.offset
    first_user = 1
    last_user = max(k for k, line in enumerate(source_map.lines, 1) if line.strip()) - offset
    center = current if current is not None else first_user
    lo, hi = max(first_user, center - 5), min(last_user, center + 5)
    for user in range(lo, hi + 1):
      text = source_map.lines[user + offset - 1].rstrip("\n")
      mark = "->" if user == current else "  "
      self.say(f"{user:4d} {mark} {text}")

  def do_quit(self, arg):
    """q(uit) / exit: leave the debugger."""
    return True

  def do_EOF(self, arg):  # pylint: disable=invalid-name
    """End of input: leave the debugger."""
    self.say("")
    return True

  def do_help(self, arg):
    """h(elp) [command]: the commands, or one command's help."""
    name = _ALIASES.get(arg.strip(), arg.strip())
    if name:
      method = getattr(self, "do_" + name, None)
      if method is None:
        self.error(f"No help for {arg.strip()!r}: not a command. Type help to list them.")
      else:
        self.say(" ".join(line.strip() for line in method.__doc__.splitlines()))
      return
    self.say("Commands (every frame is predicted by the model, nothing runs):")
    for name in _COMMANDS:
      self.say("  " + " ".join(line.strip() for line in getattr(self, "do_" + name).__doc__
                               .splitlines()))


_COMMANDS = ("step", "next", "out", "continue", "back", "reset", "print", "where", "list", "help",
             "quit")
_ALIASES = {"s": "step", "n": "next", "r": "out", "return": "out", "c": "continue",
            "cont": "continue", "b": "back", "restart": "reset", "p": "print", "w": "where",
            "l": "list", "h": "help", "?": "help", "q": "quit", "exit": "quit"}
for _alias, _name in _ALIASES.items():
  if _alias.isidentifier():
    setattr(DebuggerShell, "do_" + _alias, getattr(DebuggerShell, "do_" + _name))


def run_shell(debugger: NeuralDebugger, stdin: TextIO | None = None,
              stdout: TextIO | None = None) -> None:
  """Runs the interactive session until quit or end of input."""
  shell = DebuggerShell(debugger, stdin=stdin, stdout=stdout or sys.stdout)
  shell.cmdloop()
