"""Source (+ a call) -> the trace CONTEXT the model is prompted with, and the map back
from predicted SOURCE_LINEs to line numbers of the user's file.

Two ways in, matching how traces are made (FORMATS.md):
- a *context file*: its entry function's `def` line already ends with
  `  # << START_OF_TRACE`; CONTEXT is the file as is;
- a *function source* and a call such as `f(1, 2)`: CONTEXT is the CruxEval layout
  "\\n" + code + "\\ndef main():  # << START_OF_TRACE\\n    return CALL\\n", so the
  released model sees the prompt form it was trained on.

The trace text has no line numbers, so `SourceMap.resolve` recovers them from the
text of a predicted line: among the lines with that text it prefers those of the
function the frame runs in (tracked from its call frame), then the first one at or
after the previous line of that invocation. Lines are reported in the numbering of
the user's file; the generated `main` wrapper continues after its last line.

Comprehensions, generator expressions and lambdas run in frames of their own
(FORMATS.md rule 6), whose call frame shows the expression's line rather than a
`def`: `SourceMap.resolve_call` names them as Python does (`<listcomp>`, `<lambda>`,
...) from the expressions on that line and the frame's locals (`.0`, the implicit
iterator, for comprehensions; the parameters first for lambdas).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Sequence

from data_pipelines.traces import tracer_program as tp


class SourceError(ValueError):
  """The source or the call cannot be made into a trace CONTEXT."""


def make_context(source: str, call: str | None = None, *, name: str = "<source>") -> str:
  """CONTEXT for `source`, entered through `call` (an expression) or through the
  function marked `  # << START_OF_TRACE` when `call` is None."""
  if not isinstance(source, str):
    raise TypeError(f"source must be str, got {type(source).__name__}")
  source = source.replace("\r\n", "\n").replace("\r", "\n")
  _check_parses(source, name)
  marked = [i + 1 for i, line in enumerate(source.split("\n")) if line.endswith(tp.MARKER)]
  if call is None:
    if not marked:
      raise SourceError(f"{name} has no entry function: end the `def` line of the function to "
                        f"debug with {tp.MARKER.strip()!r} (a context file), or give a call "
                        "such as --call 'f(1, 2)'")
    context = source
  else:
    if marked:
      raise SourceError(f"{name} already marks an entry function (line {marked[0]} ends with "
                        f"{tp.MARKER.strip()!r}); drop the call or the marker")
    _check_call(call)
    context = "\n" + source.rstrip("\n") + "\ndef main():" + tp.MARKER + "\n    return " + \
        call.strip() + "\n"
  try:
    tp.find_entry(context)
  except ValueError as e:
    raise SourceError(f"{name}: {e}") from None
  except SyntaxError as e:
    raise SourceError(f"{name}: the call {call!r} does not fit in the generated main() "
                      f"({e.msg})") from None
  return context


def _check_parses(source: str, name: str) -> None:
  try:
    ast.parse(source, name)
  except SyntaxError as e:
    where = f"line {e.lineno}" + (f", column {e.offset}" if e.offset else "")
    raise SourceError(f"{name} is not valid Python ({where}: {e.msg})") from None


def _check_call(call: str) -> None:
  if not isinstance(call, str) or not call.strip() or "\n" in call.strip():
    raise SourceError(f"the call must be one Python expression on one line, e.g. 'f(1, 2)', "
                      f"got {call!r}")
  try:
    ast.parse(call.strip(), mode="eval")
  except SyntaxError as e:
    raise SourceError(f"the call {call!r} is not a Python expression ({e.msg})") from None


@dataclasses.dataclass(frozen=True)
class Scope:
  """A function (or class body) of CONTEXT: its name and its lines first..last
  (`first` includes decorators; `def_line` is the `def`/`class` line)."""
  name: str
  first: int
  def_line: int
  last: int

  def __contains__(self, lineno: int) -> bool:
    return self.first <= lineno <= self.last


_INLINE_NAMES = {ast.ListComp: "<listcomp>", ast.SetComp: "<setcomp>",
                 ast.DictComp: "<dictcomp>", ast.GeneratorExp: "<genexpr>",
                 ast.Lambda: "<lambda>"}


@dataclasses.dataclass(frozen=True)
class _Inline:
  """A comprehension, generator expression or lambda: its scope, its span
  ((line, column) to (line, column)) and, for a lambda, its parameter names."""
  scope: Scope
  start: tuple[int, int]
  end: tuple[int, int]
  params: tuple[str, ...] | None

  def within(self, other: "_Inline") -> bool:
    return other.start <= self.start and self.end <= other.end and self != other


def _lambda_params(node: ast.Lambda) -> tuple[str, ...]:
  a = node.args
  names = [x.arg for x in a.posonlyargs + a.args]
  names += [a.vararg.arg] if a.vararg else []
  names += [x.arg for x in a.kwonlyargs]
  names += [a.kwarg.arg] if a.kwarg else []
  return tuple(names)


class SourceMap:
  """CONTEXT's lines and scopes, and the offset to the user's line numbers."""

  def __init__(self, context: str, offset: int = 0):
    self.context = context
    self.offset = offset  # user line = CONTEXT line - offset
    lines = tp.context_lines(context)
    self.lines = [tp.source_line(lines, k) for k in range(1, len(lines) + 1)]
    self.scopes = [Scope(n.name, min([n.lineno] + [d.lineno for d in n.decorator_list]),
                         n.lineno, n.end_lineno)
                   for n in ast.walk(ast.parse(context))
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    self._loops = {n.lineno: (n.body[0].lineno, max(b.end_lineno for b in n.body))
                   for n in ast.walk(ast.parse(context))
                   if isinstance(n, (ast.For, ast.AsyncFor, ast.While))}  # header -> body
    self._inline: dict[int, list[_Inline]] = {}  # by first line, in source order
    for n in ast.walk(ast.parse(context)):
      if type(n) in _INLINE_NAMES:
        params = _lambda_params(n) if isinstance(n, ast.Lambda) else None
        self._inline.setdefault(n.lineno, []).append(_Inline(
            Scope(_INLINE_NAMES[type(n)], n.lineno, n.lineno, n.end_lineno),
            (n.lineno, n.col_offset), (n.end_lineno, n.end_col_offset), params))
    for inlines in self._inline.values():
      inlines.sort(key=lambda i: i.start)
    self._by_text: dict[str, list[int]] = {}
    for k, line in enumerate(self.lines, 1):
      self._by_text.setdefault(line, []).append(k)

  def scope_of(self, lineno: int) -> Scope | None:
    """The innermost function or class body containing CONTEXT line `lineno`."""
    inside = [s for s in self.scopes if lineno in s]
    return min(inside, key=lambda s: s.last - s.first) if inside else None

  def resolve_call(self, source_line: str, local_names: Sequence[str] = (),
                   caller: Scope | None = None) -> tuple[int | None, Scope | None]:
    """(CONTEXT line, scope) of a call frame: a `def` (or first decorator) line with
    this text; else a comprehension or lambda on such a line that fits the frame's
    locals (`local_names`) and its caller's scope; else any line with the text (a
    generator resuming)."""
    found = self._by_text.get(source_line, [])
    for k in found:
      scope = next((s for s in self.scopes if k in (s.first, s.def_line)), None)
      if scope is not None:
        return k, scope
    for k in found:
      inline = self._inline_call(k, list(local_names), caller)
      if inline is not None:
        return k, inline.scope
    if found:
      return found[0], self.scope_of(found[0])
    return None, None

  def _inline_call(self, lineno: int, names: list[str], caller: Scope | None
                   ) -> _Inline | None:
    """The expression on `lineno` whose frame has locals `names`: comprehensions have
    `.0` first, lambdas their parameters. Of several, one nested in the caller's
    expression (a comprehension inside a comprehension), else the outermost."""
    fits = [i for i in self._inline.get(lineno, [])
            if (i.params is None) == (names[:1] == [".0"]) and
            (i.params is None or tuple(names[:len(i.params)]) == i.params)]
    outer = next((i for inlines in self._inline.values() for i in inlines
                  if i.scope == caller), None)
    if outer is not None:
      nested = [i for i in fits if i.within(outer)]
      fits = nested or fits
    top = [i for i in fits if not any(i.within(j) for j in fits)]
    return (top or fits or [None])[0]

  def resolve(self, source_line: str, scope: Scope | None, previous: int | None,
              event: str = "line") -> int | None:
    """CONTEXT line of a line/return/exception frame running in `scope`, whose
    previous frame was at line `previous`. Identical lines are told apart by where
    execution can go next: a return/exception happens on the line just run; a line
    event goes back to the header of a loop that encloses `previous`, else forward
    (the nearest line after `previous`). A text-only guess: it can be wrong for
    identical lines in two branches of one `if`."""
    found = self._by_text.get(source_line, [])
    if scope is not None:
      own = [k for k in found if self.scope_of(k) == scope]
      found = own or [k for k in found if k in scope] or found
    if len(found) < 2 or previous is None:
      return found[0] if found else None
    if event != "line" and previous in found:
      return previous
    headers = [k for k in found if k in self._loops and
               self._loops[k][0] <= previous <= self._loops[k][1]]
    if headers:
      return max(headers)  # the innermost enclosing loop
    later = [k for k in found if k > previous]
    if later:
      return later[0]
    return previous if previous in found else found[0]

  def user_line(self, lineno: int | None) -> int | None:
    return None if lineno is None else lineno - self.offset


def context_offset(call: str | None) -> int:
  """Lines CONTEXT adds before the user's first line: 1 for the CruxEval layout."""
  return 0 if call is None else 1
