"""Program sources -> trace requests (CONTEXT + stdin) for the tracer.

- Function level (CruxEval records `{code, input}`): FORMATS.md fixes CONTEXT as
  "\\n" + code + "\\ndef main():  # << START_OF_TRACE\\n    return f(" + INPUT + ")\\n".
- Competitive programming (a solution program + its stdin): the solution's own
  entry function (`main`/`solve`/... called once at top level) is marked and its call
  removed; a flat script is wrapped into `def main():`. The program reads the given
  stdin; its stdout comes back with the trace.
- Repository level: see data_pipelines/programs/repo_traces.py (`trace_repo`): a
  repository's tests run under the tracer (`_RepoTracer` in tracer_program.py), which
  cuts function-level traces with a maximum stack depth and a seeded step-in
  probability; each cut's CONTEXT is the source of the files it touches, the traced
  function's `def` line marked.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import os
import tokenize
from collections.abc import Iterable, Mapping

from data_pipelines.traces.tracer_program import MARKER

ENTRY_NAMES = ("main", "solve", "solution", "run")


@dataclasses.dataclass(frozen=True)
class TraceRequest:
  """One program to trace: CONTEXT (with the START_OF_TRACE marker) and its stdin."""
  context: str
  stdin: str = ""
  id: str = ""


# ---------------------------------------------------------------- CruxEval


def cruxeval_context(code: str, input: str) -> str:  # noqa: A002 (the field's name)
  """The CONTEXT of a CruxEval record, exactly as FORMATS.md writes it."""
  return "\n" + code + "\ndef main():  # << START_OF_TRACE\n    return f(" + input + ")\n"


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  records = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except ValueError as e:
          raise ValueError(f"{path}:{n}: not a JSON object ({e})") from None
  return records


def cruxeval_requests(records: Iterable[Mapping]) -> list[TraceRequest]:
  """CruxEval records (fields `code`, `input`, optional `id`) -> requests."""
  requests = []
  for n, record in enumerate(records):
    if not isinstance(record.get("code"), str) or not isinstance(record.get("input"), str):
      raise ValueError(f"CruxEval record {n} ({record.get('id', '?')}) needs str fields 'code' "
                       f"and 'input', got keys {sorted(record)}")
    requests.append(TraceRequest(cruxeval_context(record["code"], record["input"]),
                                 id=str(record.get("id", n))))
  return requests


# ---------------------------------------------------------------- competitive programming


def _is_main_guard(node: ast.stmt) -> bool:
  """`if __name__ == "__main__":`"""
  if not isinstance(node, ast.If) or node.orelse:
    return False
  test = node.test
  return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and
          test.left.id == "__name__" and len(test.comparators) == 1 and
          isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "__main__")


def _bare_call(node: ast.stmt) -> str | None:
  """The name called by a statement `name()`, else None."""
  if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and
      isinstance(node.value.func, ast.Name) and not node.value.args and not node.value.keywords):
    return node.value.func.id
  return None


def _entry_calls(tree: ast.Module) -> list[tuple[str, ast.stmt, ast.If | None]]:
  """Top-level `name()` statements, also inside `if __name__ == "__main__":`."""
  calls = []
  for node in tree.body:
    if _bare_call(node):
      calls.append((_bare_call(node), node, None))
    elif _is_main_guard(node):
      calls += [(_bare_call(s), s, node) for s in node.body if _bare_call(s)]
  return calls


def _mark_entry(program: str, tree: ast.Module, lines: list[str]) -> str | None:
  """CONTEXT with the program's own entry function marked, or None if it has none."""
  defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
  calls = [c for c in _entry_calls(tree) if c[0] in defs and c[0] in ENTRY_NAMES]
  if len(calls) != 1 or len([c for c in _entry_calls(tree) if c[0] == calls[0][0]]) != 1:
    return None
  name, stmt, guard = calls[0]
  node = defs[name]
  args = node.args
  required = len(args.posonlyargs) + len(args.args) - len(args.defaults)
  if required or any(d is None for d in args.kw_defaults):
    return None  # the entry is called with no arguments
  header = lines[node.lineno - 1].rstrip()
  if not header.endswith(":") or node.body[0].lineno == node.lineno or "#" in header:
    return None  # a multi-line or commented header, or a one-line body
  lines = list(lines)
  lines[node.lineno - 1] = header + MARKER
  # Remove the call; a guard left empty keeps a `pass` so the module still compiles.
  indent = lines[stmt.lineno - 1][:stmt.col_offset]
  empty_guard = guard is not None and len(guard.body) == 1
  lines[stmt.lineno - 1:stmt.end_lineno] = [indent + "pass"] if empty_guard else []
  return "\n".join(lines)


def _wrap_script(program: str, tree: ast.Module) -> str:
  """A flat script as the body of `def main():` (its globals become locals)."""
  if any(isinstance(n, (ast.Global, ast.Nonlocal)) for n in ast.walk(tree)):
    raise ValueError("cannot wrap a script that uses `global`/`nonlocal` into main()")
  for tok in tokenize.generate_tokens(io.StringIO(program).readline):
    if tok.type == tokenize.STRING and tok.start[0] != tok.end[0]:
      raise ValueError(f"cannot wrap a script with a multi-line string (line {tok.start[0]}) "
                       "into main(): indenting it would change the string")
  body = [("    " + line if line.strip() else line) for line in program.split("\n")]
  while body and not body[-1].strip():
    body.pop()
  if not body:
    body = ["    pass"]
  return "\n".join(["def main():" + MARKER, *body])


def competitive_context(program: str) -> str:
  """CONTEXT for a competitive-programming solution (reads stdin, writes stdout).

  If the program calls one entry function (`main`, `solve`, `solution` or `run`, no
  arguments) once at top level or under `if __name__ == "__main__":`, that function
  is the entry and the call is removed. Otherwise the whole script becomes the body of
  `def main():`. CONTEXT always ends with a newline.
  """
  program = program.replace("\r\n", "\n").replace("\r", "\n")
  if MARKER in program:
    raise ValueError(f"the program already contains {MARKER!r}")
  try:
    tree = ast.parse(program)
  except SyntaxError as e:
    raise ValueError(f"the program does not parse: {e}") from None
  context = _mark_entry(program, tree, program.split("\n"))
  if context is None:
    context = _wrap_script(program, tree)
  return context.rstrip("\n") + "\n"


def competitive_request(program: str, stdin: str = "", id: str = "") -> TraceRequest:  # noqa: A002
  return TraceRequest(competitive_context(program), stdin, id)
