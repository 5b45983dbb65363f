"""format <-> parse: round trips (text and token ids), ".." resolution, clear errors."""

import pytest

from cwm_jax.tokenizer import toy
from data_pipelines.traces.format import (encode_trace, encode_trace_with_mask, format_frames,
                                          format_trace)
from data_pipelines.traces.frames import CallFrame, ExceptionFrame, LineFrame, ReturnFrame, Trace
from data_pipelines.traces.parse import TraceParseError, parse_trace, parse_trace_ids

CONTEXT = """
def f(array):
    n = array.pop()
    array.extend([n, n])
    return array
def main():  # << START_OF_TRACE
    return f([1, 1, 2, 2])
"""
EXAMPLE = Trace(CONTEXT, (
    CallFrame({}, "def main():\n"),
    LineFrame({}, "    return f([1, 1, 2, 2])\n"),
    CallFrame({"array": "[1, 1, 2, 2]"}, "def f(array):\n"),
    LineFrame({"array": "[1, 1, 2, 2]"}, "    n = array.pop()\n"),
    LineFrame({"array": "[1, 1, 2]", "n": "2"}, "    array.extend([n, n])\n"),
    LineFrame({"array": "[1, 1, 2, 2, 2]", "n": "2"}, "    return array\n"),
    ReturnFrame("    return array\n", "[1, 1, 2, 2, 2]"),
    ReturnFrame("    return f([1, 1, 2, 2])\n", "[1, 1, 2, 2, 2]"),
))
EXAMPLE_TEXT = format_trace(EXAMPLE)

# CONTEXT and values holding special-token strings and non-ASCII text: text parsing is
# ambiguous for the first, token ids are not.
TRICKY_CONTEXT = """def main():  # << START_OF_TRACE
    s = "<|frame_sep|>é☃"
    raise ValueError(s)
"""
TRICKY = Trace(TRICKY_CONTEXT, (
    CallFrame({}, "def main():\n"),
    LineFrame({}, '    s = "<|frame_sep|>é☃"\n'),
    LineFrame({"s": "'<|frame_sep|>é☃'"}, "    raise ValueError(s)\n"),
    ExceptionFrame("    raise ValueError(s)\n", "ValueError('<|frame_sep|>é☃')"),
    ReturnFrame("    raise ValueError(s)\n", "None"),
))
UNICODE = Trace(CONTEXT.replace("array", "ärräy"), (
    CallFrame({"ärräy": "['ü']"}, "def f(ärräy):\n"),
    LineFrame({"ärräy": "['ü']"}, "    n = ärräy.pop()\n"),
    LineFrame({"ärräy": "[]", "n": "'ü'"}, "    ärräy.extend([n, n])\n"),
    ExceptionFrame("    ärräy.extend([n, n])\n", "KeyboardInterrupt()"),
    LineFrame({"ärräy": "[]", "n": "'ü'"}, "    return ärräy\n"),
    ReturnFrame("    return ärräy\n", "[]"),
), ended=False)


def test_diff_encoding_of_the_example():
  assert '<|line_sep|>{"array": ".."}<|action_sep|>    n = array.pop()\n' in EXAMPLE_TEXT
  assert '{"array": "[1, 1, 2, 2, 2]", "n": ".."}' in EXAMPLE_TEXT
  assert EXAMPLE_TEXT.endswith("<|frame_sep|><|end_of_text|>")


def test_exception_frames_keep_the_baseline_and_returns_reset_it():
  text = format_frames(UNICODE.frames)
  assert '<|line_sep|>{"\\u00e4rr\\u00e4y": "..", "n": ".."}<|action_sep|>    return' in text
  frames = (CallFrame({"x": "1"}, "a\n"), ReturnFrame("a\n", "1"), LineFrame({"x": "1"}, "b\n"))
  assert format_frames(frames).count('"1"}') == 2  # no ".." after the return frame


@pytest.mark.parametrize("trace", [EXAMPLE, UNICODE, Trace("", ()), Trace("x\n", (), False)],
                         ids=["example", "unicode", "empty", "empty_partial"])
def test_text_round_trip(trace):
  text = format_trace(trace)
  assert parse_trace(text, partial=not trace.ended) == trace
  assert format_trace(parse_trace(text, partial=not trace.ended)) == text


def test_frame_equality_ignores_line_numbers():
  assert CallFrame({}, "def main():\n", lineno=6) == CallFrame({}, "def main():\n")
  assert EXAMPLE.return_value == "[1, 1, 2, 2, 2]" and UNICODE.return_value is None


def test_partial_traces_drop_an_unfinished_frame():
  cut = EXAMPLE_TEXT[:EXAMPLE_TEXT.index("    return array\n<|arg_sep|>") + 5]
  partial = parse_trace(cut, partial=True)
  assert not partial.ended and partial.frames == EXAMPLE.frames[:6]
  with pytest.raises(TraceParseError, match="missing <.end_of_text.>"):
    parse_trace(cut[:cut.rindex("<|frame_sep|>") + len("<|frame_sep|>")])


def _replace(old, new, count=1):
  assert old in EXAMPLE_TEXT
  return EXAMPLE_TEXT.replace(old, new, count)


MALFORMED = [
    ("no_bos", EXAMPLE_TEXT[len("<|begin_of_text|>"):], "expected <|begin_of_text|>"),
    ("no_action_sep", _replace('{"array": ".."}<|action_sep|>', '{"array": ".."}'),
     "frame 3 at character .*expected <|action_sep|>, got <|frame_sep|>"),
    ("bad_json", _replace('{"array": ".."}', '{"array": ..}'), "frame 3 .*not valid JSON"),
    ("not_strings", _replace('{"array": ".."}', '{"array": 1}'), "JSON object of strings"),
    ("dots_in_call", _replace('{"array": "[1, 1, 2, 2]"}', '{"array": ".."}'),
     "frame 2 .*in a call frame"),
    ("dots_after_return", _replace('"[1, 1, 2, 2, 2]"<|frame_sep|><|return_sep|>',
                                   '"[1, 1, 2, 2, 2]"<|frame_sep|><|line_sep|>{"a": ".."}'
                                   '<|action_sep|>    return array\n<|frame_sep|><|return_sep|>'),
     "frame 7 .*no baseline"),
    ("dots_unknown_name", _replace('"n": ".."', '"m": ".."'), "baseline frame has no local 'm'"),
    ("value_not_string", _replace('<|arg_sep|>"[1, 1, 2, 2, 2]"', '<|arg_sep|>[1, 1, 2, 2, 2]'),
     "frame 6 .*VALUE must be a JSON string"),
    ("after_eos", EXAMPLE_TEXT + "x", "unexpected text 'x' after <|end_of_text|>"),
    ("no_eos", EXAMPLE_TEXT[:-len("<|end_of_text|>")], "missing <|end_of_text|>"),
    ("unknown_line", _replace("    n = array.pop()\n<", "    n = array.pop(0)\n<"),
     "not a line of CONTEXT"),
    ("no_newline", _replace("    n = array.pop()\n<", "    n = array.pop()<"),
     "one line ending with a newline"),
    ("not_canonical", _replace('{"array": "[1, 1, 2]", "n": "2"}', '{"array":"[1, 1, 2]","n":"2"}'),
     "frame 4 .*not in canonical form"),
    ("dots_missing", _replace('{"array": ".."}', '{"array": "[1, 1, 2, 2]"}'),
     "not in canonical form"),
    ("repeated_name", _replace('"n": ".."', '"n": "..", "n": ".."'), "repeated name"),
    ("stray_arg_sep", _replace("<|line_sep|>{}", "<|arg_sep|>{}"),
     "frame 1 .*expected a frame <|call_sep|>, <|line_sep|>, <|return_sep|> or "
     "<|exception_sep|>, or <|end_of_text|>, got <|arg_sep|>"),
]


@pytest.mark.parametrize("name,text,message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_traces_give_clear_errors(name, text, message):
  with pytest.raises(TraceParseError, match=message.replace("|", r"\|")) as info:
    parse_trace(text)
  if "frame" in message:
    assert info.value.frame is not None and info.value.position is not None


def test_lenient_parsing_accepts_non_canonical_json():
  text = _replace('{"array": "[1, 1, 2]", "n": "2"}', '{"array":"[1, 1, 2]","n":"2"}')
  assert parse_trace(text, strict=False) == EXAMPLE


def test_text_parsing_is_ambiguous_for_special_strings_but_ids_are_not():
  with pytest.raises(TraceParseError):
    parse_trace(format_trace(TRICKY))


@pytest.fixture(scope="module", params=["sentencepiece", "tiktoken"])
def tokenizer(request, tmp_path_factory):
  d = tmp_path_factory.mktemp(request.param)
  if request.param == "tiktoken":
    return toy.toy_tiktoken_tokenizer(d, num_merges=100)
  return toy.toy_sentencepiece_tokenizer(d)


@pytest.mark.parametrize("trace", [EXAMPLE, TRICKY, UNICODE], ids=["example", "tricky", "unicode"])
def test_token_id_round_trip(tokenizer, trace):
  ids = encode_trace(tokenizer, trace)
  assert parse_trace_ids(ids, tokenizer, partial=not trace.ended) == trace
  assert tokenizer.decode(ids) == format_trace(trace)
  specials = [i for i in ids if tokenizer.is_special(i)]
  # Prompt: 3; call/line frame: 3; return/exception frame: 4; <|end_of_text|>.
  assert len(specials) == 3 + 3 * len(trace.frames) + sum(
      isinstance(f, (ReturnFrame, ExceptionFrame)) for f in trace.frames) + trace.ended


def test_token_mask(tokenizer):
  ids, mask = encode_trace_with_mask(tokenizer, EXAMPLE)
  prompt = len(tokenizer.encode(CONTEXT)) + 3
  assert mask == [0] * prompt + [1] * (len(ids) - prompt)
  _, mask = encode_trace_with_mask(tokenizer, EXAMPLE, train_on_context=True)
  assert mask == [0] + [1] * (len(ids) - 1)


def test_ids_with_a_foreign_special_token(tokenizer):
  ids = encode_trace(tokenizer, EXAMPLE)
  ids.insert(5, tokenizer.token_id("eot_id"))
  with pytest.raises(TraceParseError, match="unexpected special token <.eot_id.> .* at token 5"):
    parse_trace_ids(ids, tokenizer)
  cut = encode_trace(tokenizer, EXAMPLE)[:-1]
  with pytest.raises(TraceParseError, match="missing"):
    parse_trace_ids(cut, tokenizer)
  assert parse_trace_ids(cut, tokenizer, partial=True) == Trace(CONTEXT, EXAMPLE.frames, False)
