"""A small LaTeX answer -> sympy parser, our fallback when math-verify cannot parse.

It covers what MATH answers are made of: integers, decimals, thousands separators,
\\frac/\\dfrac/\\tfrac (also `\\frac43`), \\sqrt and \\sqrt[n], powers, \\pi, \\infty,
\\cdot/\\times, implicit products (`2\\sqrt{5}`, `3R^2`), single-letter variables,
signs, parentheses, tuples/intervals `(a, b)`/`[a, b)` and equations `y = 2x`;
units in \\text{...}, degrees, percent signs and spacing commands are dropped first.

Model output is untrusted, so this parser builds sympy objects directly from
tokens and never calls `sympify`/`parse_expr` (which `eval` text). Numbers are
capped in size and powers in exponent so that no answer can make the comparison
run for long.
"""

from __future__ import annotations

import re

import sympy

MAX_CHARS = 400
MAX_DIGITS = 60
MAX_EXPONENT = 200

_DROP = (r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\ ", r"\displaystyle", "$",
         r"^\circ", r"^{\circ}", r"\circ", r"\%", "%", r"\$")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\s*\{[^{}]*\}")
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_TOKEN_RE = re.compile(r"\s*(\d+\.\d*|\.\d+|\d+|\\[A-Za-z]+|[A-Za-z]|[-+*/^(){}\[\],=])")


class LatexParseError(ValueError):
  """The answer is outside what this parser understands."""


def normalise_text(answer: str) -> str:
  """Whitespace-free answer text with formatting that carries no value removed."""
  text = answer.strip()
  text = _TEXT_RE.sub("", text) if _TEXT_RE.sub("", text).strip() else re.sub(
      r"\\(?:text|textbf|mathrm|mbox|mathbf)\s*\{([^{}]*)\}", r"\1", text)
  for piece in _DROP:
    text = text.replace(piece, "")
  text = text.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac")
  text = re.sub(r"\s+", "", text).rstrip(".")
  if _THOUSANDS_RE.match(text):
    text = text.replace(",", "")
  return text


class _Parser:

  def __init__(self, text: str):
    self.tokens, pos = [], 0
    while pos < len(text):
      m = _TOKEN_RE.match(text, pos)
      if not m:
        raise LatexParseError(f"unexpected character {text[pos]!r}")
      self.tokens.append(m.group(1))
      pos = m.end()
    self.k = 0

  def peek(self) -> str | None:
    return self.tokens[self.k] if self.k < len(self.tokens) else None

  def take(self, expected: str | None = None) -> str:
    tok = self.peek()
    if tok is None or (expected is not None and tok != expected):
      raise LatexParseError(f"expected {expected or 'more'}, got {tok!r}")
    self.k += 1
    return tok

  def expr(self):
    value = self.term()
    while self.peek() in ("+", "-"):
      op = self.take()
      rhs = self.term()
      value = value + rhs if op == "+" else value - rhs
    return value

  def term(self):
    value = self.unary()
    while True:
      tok = self.peek()
      if tok in ("*", r"\cdot", r"\times"):
        self.take()
        value = value * self.unary()
      elif tok in ("/", r"\div"):
        self.take()
        value = value / self.unary()
      elif tok is not None and tok not in ("+", "-", ")", "}", "]", ",", "=", "^"):
        value = value * self.power()  # implicit product
      else:
        return value

  def unary(self):
    if self.peek() in ("-", "+"):
      sign = -1 if self.take() == "-" else 1
      return sign * self.unary()
    return self.power()

  def power(self):
    base = self.atom()
    if self.peek() == "^":
      self.take()
      exponent = self.group_or_atom()
      if exponent.is_number and abs(exponent) > MAX_EXPONENT:
        raise LatexParseError("exponent too large")
      return sympy.Pow(base, exponent)
    return base

  def group_or_atom(self):
    """A {group}, or one token: `\\frac43` and `x^2` take single-character arguments."""
    if self.peek() == "{":
      self.take("{")
      value = self.expr()
      self.take("}")
      return value
    tok = self.peek()
    if tok is not None and tok.isdigit() and len(tok) > 1:  # \frac43: digits one at a time
      self.tokens[self.k:self.k + 1] = [tok[0], tok[1:]]
    return self.atom()

  def atom(self):
    tok = self.take()
    if tok[0].isdigit() or tok[0] == ".":
      if len(tok) > MAX_DIGITS:
        raise LatexParseError("number too long")
      return sympy.Rational(tok) if "." in tok else sympy.Integer(tok)
    if tok in ("(", "{", "["):
      value = self.expr()
      self.take({"(": ")", "{": "}", "[": "]"}[tok])
      return value
    if tok == r"\frac":
      num = self.group_or_atom()
      return num / self.group_or_atom()
    if tok == r"\sqrt":
      if self.peek() == "[":
        self.take("[")
        n = self.expr()
        self.take("]")
        return sympy.root(self.group_or_atom(), n)
      return sympy.sqrt(self.group_or_atom())
    if tok == r"\pi":
      return sympy.pi
    if tok == r"\infty":
      return sympy.oo
    if len(tok) == 1 and tok.isalpha():
      return sympy.Symbol(tok)
    raise LatexParseError(f"unsupported token {tok!r}")


def _parse_expr(text: str):
  parser = _Parser(text)
  value = parser.expr()
  if parser.peek() is not None:
    raise LatexParseError(f"unexpected {parser.peek()!r}")
  return value


def _split_top(text: str, sep: str) -> list[str]:
  parts, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    depth += ch in "([{"
    depth -= ch in ")]}"
    if ch == sep and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  return parts + [text[start:]]


def parse_answer(answer: str):
  """The answer as a comparable value: ("expr", e), ("eq", lhs - rhs) or
  ("tuple", open, close, (e1, e2, ...)). LatexParseError when unsupported."""
  text = normalise_text(answer)
  if not text or len(text) > MAX_CHARS:
    raise LatexParseError("empty or too long")
  if "=" in text:
    sides = text.split("=")
    if len(sides) != 2:
      raise LatexParseError("more than one '='")
    lhs, rhs = (_parse_expr(s) for s in sides)
    if isinstance(lhs, sympy.Symbol):  # `x = 5` answers 5 (and `y = 2x` stays an equation)
      return ("eq", lhs - rhs, lhs, rhs)
    return ("eq", lhs - rhs, None, None)
  if text[0] in "([" and text[-1] in ")]":
    parts = _split_top(text[1:-1], ",")
    if len(parts) > 1:
      return ("tuple", text[0], text[-1], tuple(_parse_expr(p) for p in parts))
  parts = _split_top(text, ",")
  if len(parts) > 1:  # a list of answers, e.g. "1,-2"
    return ("tuple", "", "", tuple(_parse_expr(p) for p in parts))
  return ("expr", _parse_expr(text))


def _same(a, b) -> bool:
  if a == b:
    return True
  try:
    diff = sympy.simplify(a - b)
  except (TypeError, ValueError, AttributeError):
    return False
  return diff == 0


def equivalent(pred: str, gold: str) -> bool:
  """Whether two answers denote the same value (LatexParseError if either is unsupported)."""
  p, g = parse_answer(pred), parse_answer(gold)
  if p[0] == "eq" and g[0] != "eq" and p[2] is not None:
    p = ("expr", p[3])  # "x = 5" against "5"
  if g[0] == "eq" and p[0] != "eq" and g[2] is not None:
    g = ("expr", g[3])
  if p[0] != g[0]:
    return False
  if p[0] == "expr":
    return _same(p[1], g[1])
  if p[0] == "eq":
    return _same(p[1], g[1]) or _same(p[1], -g[1])
  return (p[1:3] == g[1:3] and len(p[3]) == len(g[3]) and
          all(_same(a, b) for a, b in zip(p[3], g[3])))
