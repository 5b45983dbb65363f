"""The pdb-style shell: a scripted session over the replayed true trace of a real
program, checked line by line (the program's values follow from its source:
sum_squares(3) = 0 + 1 + 4 = 5)."""

import io

from cwm_jax.debugger.shell import DebuggerShell, run_shell

SCRIPT = """s
s
n
n
p
p total
p nope
n

r
b
w
s
s
s
reset
l
n!
c
foo
n x
help s
q
"""

# User line numbers of PROGRAMS["loops"]: the generated main() follows line 8.
EXPECTED = """Neural debugger: every frame below is the model's prediction; nothing is executed.
Type help for the commands.
--Call--
> prog.py(9)main()
-> def main():
(ndb) s
> prog.py(10)main()
-> return sum_squares(3)
(ndb) s
--Call--
> prog.py(4)sum_squares()
-> def sum_squares(n):
(ndb) n
> prog.py(5)sum_squares()
-> total = 0
(ndb) n
> prog.py(6)sum_squares()
-> for i in range(n):
(ndb) p
n = 3
total = 0
(ndb) p total
0
(ndb) p nope
*** no local 'nope' in sum_squares (predicted locals: n, total)
(ndb) n
> prog.py(7)sum_squares()
-> total += square(i)
(ndb) 
> prog.py(6)sum_squares()
-> for i in range(n):
(ndb) r
--Return--
> prog.py(8)sum_squares()->5
-> return total
(ndb) b
> prog.py(8)sum_squares()
-> return total
(ndb) w
  prog.py(10)main()
-> return sum_squares(3)
> prog.py(8)sum_squares()
-> return total
(ndb) s
--Return--
> prog.py(8)sum_squares()->5
-> return total
(ndb) s
--Return--
> prog.py(10)main()->5
-> return sum_squares(3)
--End of trace-- (main returned 5)
(ndb) s
*** step: the trace has ended (the entry function returned 5); use back or reset
(ndb) reset
--Call--
> prog.py(9)main()
-> def main():
(ndb) l
   4    def sum_squares(n):
   5        total = 0
   6        for i in range(n):
   7            total += square(i)
   8        return total
   9 -> def main():
  10        return sum_squares(3)
(ndb) n!
> prog.py(10)main()
-> return sum_squares(3)
(ndb) c
--Return--
> prog.py(10)main()->5
-> return sum_squares(3)
--End of trace-- (main returned 5)
(ndb) foo
*** Unknown command 'foo'. Type help to list the commands.
(ndb) n x
*** next takes no argument or '!' (jump: force the return), got 'x'
(ndb) help s
s(tep): predict the next frame, stepping into calls.
(ndb) q
"""


def test_scripted_session(make_debugger):
  out = io.StringIO()
  run_shell(make_debugger("loops"), stdin=io.StringIO(SCRIPT), stdout=out)
  assert out.getvalue() == EXPECTED


def test_help_lists_every_command_and_end_of_input_quits(make_debugger):
  out = io.StringIO()
  run_shell(make_debugger("loops"), stdin=io.StringIO("help\n"), stdout=out)
  text = out.getvalue()
  for command in ("s(tep)", "n(ext)", "r(eturn)", "c(ont(inue))", "b(ack)", "reset",
                  "p(rint)", "w(here)", "l(ist)", "h(elp)", "q(uit)"):
    assert command in text
  assert text.endswith("(ndb) \n")  # end of input: a last prompt, then quit


def test_exception_stop_and_aliases(make_debugger, true_traces):
  """`--Exception--` shows the raised repr; `return`, `cont`, `exit` are aliases."""
  out = io.StringIO()
  shell = DebuggerShell(make_debugger("exception"), stdin=io.StringIO(""), stdout=out)
  shell.preloop()
  exception = next(f for f in true_traces["exception"].frames if f.event == "exception")
  while shell.debugger.state.event != "exception":
    shell.onecmd("s")
  assert f"--Exception-- {exception.value}\n" in out.getvalue()
  assert "-> raise ValueError(\"negative: %d\" % v)" in out.getvalue()
  assert shell.onecmd("return") is None and shell.debugger.state.event == "return"
  assert shell.onecmd("cont") is None and shell.debugger.state.ended
  assert shell.onecmd("exit") is True
