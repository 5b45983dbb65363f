"""Chat, tool, reasoning and trace-prompt layouts against FORMATS.md, with both tokenizers."""

import pytest

from cwm_jax.tokenizer import formats, toy

MESSAGES = [
    {"role": "system", "content": "  You are X.\n"},
    {"role": "user", "content": "Run <|eot_id|> please\n"},
    {"role": "assistant", "content": "<tool: python>\nprint(1)\n</tool>\n"},
    {"role": "tool", "name": "python", "content": "completed.\n[stdout]1\n[/stdout]\n"},
    {"role": "assistant", "content": " Done. "},
]

# Written out by hand from FORMATS.md.
EXPECTED_TEXT = (
    "<|begin_of_text|>"
    "<|start_header_id|>system<|end_header_id|>\n\nYou are X.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nRun <|eot_id|> please<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n<tool: python>\nprint(1)\n</tool><|eot_id|>"
    "<|start_header_id|>tool: python<|end_header_id|>\n\ncompleted.\n[stdout]1\n[/stdout]\n<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nDone.<|eot_id|>")
PROMPT_SUFFIX = "<|start_header_id|>assistant<|end_header_id|>\n\n"

# FORMATS.md, "Reasoning mode".
PREAMBLE = """You are a helpful AI assistant. You always reason before responding, using the following format:

<think>
your internal reasoning
</think>
your external response"""

# FORMATS.md, worked example.
TRACE_CONTEXT = """
def f(array):
    n = array.pop()
    array.extend([n, n])
    return array
def main():  # << START_OF_TRACE
    return f([1, 1, 2, 2])
"""


@pytest.fixture(scope="module", params=["tiktoken", "sentencepiece"])
def tok(request, tmp_path_factory):
  d = tmp_path_factory.mktemp(request.param)
  if request.param == "tiktoken":
    return toy.toy_tiktoken_tokenizer(d)
  return toy.toy_sentencepiece_tokenizer(d)


def _message_ids(tok, header, body):
  return [tok.token_id("start_header_id"), *tok.encode(header), tok.token_id("end_header_id"),
          *tok.encode("\n\n"), *tok.encode(body), tok.token_id("eot_id")]


def test_format_dialog_text():
  assert formats.format_dialog(MESSAGES) == EXPECTED_TEXT
  assert formats.format_dialog(MESSAGES, add_generation_prompt=True) == EXPECTED_TEXT + PROMPT_SUFFIX
  assert (formats.format_dialog(MESSAGES, add_generation_prompt=True, reasoning=True)
          == EXPECTED_TEXT + PROMPT_SUFFIX + "<think>\n")


def test_encode_dialog_layout(tok):
  ids = formats.encode_dialog(tok, MESSAGES)
  expected = [tok.bos_id]
  expected += _message_ids(tok, "system", "You are X.")
  expected += _message_ids(tok, "user", "Run <|eot_id|> please")
  expected += _message_ids(tok, "assistant", "<tool: python>\nprint(1)\n</tool>")
  expected += _message_ids(tok, "tool: python", "completed.\n[stdout]1\n[/stdout]\n")
  expected += _message_ids(tok, "assistant", "Done.")
  assert ids == expected
  assert tok.decode(ids) == EXPECTED_TEXT
  # The user's "<|eot_id|>" is text: only the five structural end-of-turn tokens.
  assert ids.count(tok.token_id("eot_id")) == 5
  assert ids.count(tok.bos_id) == 1


@pytest.mark.parametrize("reasoning", [False, True])
def test_generation_prompt(tok, reasoning):
  base = formats.encode_dialog(tok, MESSAGES[:2])
  ids = formats.encode_dialog(tok, MESSAGES[:2], add_generation_prompt=True, reasoning=reasoning)
  suffix = [tok.token_id("start_header_id"), *tok.encode("assistant"),
            tok.token_id("end_header_id"), *tok.encode("\n\n")]
  if reasoning:
    suffix += tok.encode("<think>\n")
  assert ids == base + suffix
  assert tok.decode(ids).endswith(PROMPT_SUFFIX + ("<think>\n" if reasoning else ""))


def test_reasoning_without_generation_prompt_changes_nothing(tok):
  assert formats.encode_dialog(tok, MESSAGES, reasoning=True) == formats.encode_dialog(tok, MESSAGES)


def _trained_spans(tok, ids, mask):
  spans, current = [], []
  for i, m in zip(ids, mask):
    if m:
      current.append(i)
    elif current:
      spans.append(tok.decode(current))
      current = []
  if current:
    spans.append(tok.decode(current))
  return spans


def test_loss_mask(tok):
  ids, mask = formats.encode_dialog_with_mask(tok, MESSAGES, add_generation_prompt=True)
  assert ids == formats.encode_dialog(tok, MESSAGES, add_generation_prompt=True)
  assert len(mask) == len(ids) and set(mask) == {0, 1}
  assert _trained_spans(tok, ids, mask) == [
      "<tool: python>\nprint(1)\n</tool><|eot_id|>", "Done.<|eot_id|>"]
  assert mask[0] == 0 and mask[-1] == 0


def test_loss_mask_roles_and_per_message_override(tok):
  messages = [dict(m) for m in MESSAGES]
  messages[4]["train"] = False
  ids, mask = formats.encode_dialog_with_mask(tok, messages, train_roles=("assistant", "tool"))
  # Headers stay 0, so the assistant and tool bodies are separate spans.
  assert _trained_spans(tok, ids, mask) == [
      "<tool: python>\nprint(1)\n</tool><|eot_id|>",
      "completed.\n[stdout]1\n[/stdout]\n<|eot_id|>"]
  with pytest.raises(ValueError, match="train_roles has unknown role 'bot'"):
    formats.encode_dialog_with_mask(tok, MESSAGES, train_roles=("bot",))


def test_trace_prompt(tok):
  text = formats.format_trace_prompt(TRACE_CONTEXT)
  assert text == "<|begin_of_text|><|trace_context_start|>" + TRACE_CONTEXT + "<|frame_sep|>"
  ids = formats.encode_trace_prompt(tok, TRACE_CONTEXT)
  assert ids == [tok.bos_id, tok.token_id("trace_context_start"), *tok.encode(TRACE_CONTEXT),
                 tok.token_id("frame_sep")]
  assert tok.decode(ids) == text
  sneaky = "x = '<|frame_sep|>'\n"
  assert tok.token_id("frame_sep") not in formats.encode_trace_prompt(tok, sneaky)[:-1]


def test_system_prompt():
  assert formats.REASONING_PREAMBLE == PREAMBLE
  assert formats.system_prompt(reasoning=True) == PREAMBLE
  assert formats.system_prompt(reasoning=False) == "You are a helpful AI assistant."
  with_env = formats.system_prompt(reasoning=True, environment="\nTools: bash\n")
  assert with_env == PREAMBLE + "\n\n# Environment\n\nTools: bash"
  with pytest.raises(ValueError, match="description must not be empty"):
    formats.system_prompt(reasoning=False, description=" ")


# ---------------------------------------------------------------- tools and reasoning


@pytest.mark.parametrize("name, args", [
    ("python", "print(1)"),
    ("bash", "ls -la\ncat x | head\n"),
    ("edit", "a.py\n<<<<<<< SEARCH\nold\n=======\nnew\n>>>>>>> REPLACE"),
    ("submit", ""),
])
def test_tool_call_round_trip(name, args):
  text = formats.format_tool_call(name, args)
  assert text == f"<tool: {name}>\n{args}\n</tool>"
  assert formats.parse_tool_calls("I will call it.\n" + text + "\nthen stop") == [
      formats.ToolCall(name, args)]


def test_parse_several_tool_calls():
  text = (formats.format_tool_call("bash", "ls") + "\ntext\n"
          + formats.format_tool_call("python", "x = '</tool>'"))
  assert formats.parse_tool_calls(text) == [("bash", "ls"), ("python", "x = '</tool>'")]
  assert formats.parse_tool_calls("<tool: bad-name>\nx\n</tool>") == []
  assert formats.parse_tool_calls("no call here") == []


@pytest.mark.parametrize("name", ["bad-name", "", "two words", "x\n"])
def test_tool_call_bad_name(name):
  with pytest.raises(ValueError, match="must match"):
    formats.format_tool_call(name, "x")


@pytest.mark.parametrize("text, expected", [
    ("<think>\nhmm, 2+2\n</think>\n4", ("hmm, 2+2", "4")),
    ("hmm\n</think>\nThe answer is 4.\n", ("hmm", "The answer is 4.")),
    ("</think>", ("", "")),
    ("no end of thinking", ("no end of thinking", None)),
    ("a</think>b</think>c", ("a</think>b</think>c", None)),
])
def test_split_reasoning(text, expected):
  assert formats.split_reasoning(text) == expected


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("message, match", [
    ({"role": "bot", "content": "hi"}, r"messages\[1\] has unknown role 'bot'"),
    ({"content": "hi"}, r"messages\[1\] has unknown role None"),
    ({"role": "tool", "content": "out"}, r"messages\[1\] has role 'tool' but no tool name"),
    ({"role": "tool", "name": " ", "content": "out"}, r"no tool name"),
    ({"role": "user"}, r"messages\[1\] \(user\) needs a str 'content', got NoneType"),
    ("hello", r"messages\[1\] must be a dict"),
])
def test_bad_messages(tok, message, match):
  dialog = [{"role": "user", "content": "ok"}, message]
  with pytest.raises(ValueError, match=match):
    formats.encode_dialog(tok, dialog)
  with pytest.raises(ValueError, match=match):
    formats.format_dialog(dialog)
