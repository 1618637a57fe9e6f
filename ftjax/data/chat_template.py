"""Renders conversations with a chat template and marks the assistant tokens the loss trains on.

The mask is found by rendering prefixes, so it works with any template (no `{% generation %}`
markers needed): for each assistant message i, the text of `messages[:i]` with the generation
prompt (`...<|im_start|>assistant\\n`) is where the reply starts, and the text of
`messages[:i+1]` without trailing whitespace is where it ends, just after its end-of-turn token
(`<|im_end|>`). The full text is tokenised once with character offsets, and a token is an
assistant token when its characters overlap such a span. This matches what
`apply_chat_template(..., return_assistant_tokens_mask=True)` returns for templates with
generation markers: reply + end-of-turn token are 1; role headers, user/system turns and the
newline after `<|im_end|>` are 0. A template whose prefixes do not render as prefixes of the
full text (some templates rewrite earlier turns) is refused with a `UserError`.
"""

from collections.abc import Sequence

import numpy as np

from ftjax.errors import UserError

# SmolLM2-style ChatML, for tokenizers that ship without a template (`data.chat_template="chatml"`).
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

_CHUNK = 1024  # Texts per tokenizer call.


def resolve_template(tokenizer, chat_template: str = "") -> str | None:
  """The Jinja template to use: '' = the tokenizer's own, 'chatml' = `CHATML`, else the text."""
  if chat_template == "chatml":
    return CHATML
  if chat_template:
    return chat_template
  if not getattr(tokenizer, "chat_template", None):
    raise UserError("the tokenizer has no chat template: set data.chat_template "
                    "('chatml' or a Jinja template)")
  return None  # apply_chat_template uses the tokenizer's.


def render(tokenizer, messages: Sequence[dict], template: str | None = None, *,
           add_generation_prompt: bool = False) -> str:
  """The template's text for `messages` (no tokenisation)."""
  try:
    text = tokenizer.apply_chat_template(
        list(messages), chat_template=template, tokenize=False,
        add_generation_prompt=add_generation_prompt)
  except Exception as e:  # Jinja errors come in many types; name the culprit.
    raise UserError(f"chat template failed on a conversation: {type(e).__name__}: {e}") from e
  return text


def render_with_spans(tokenizer, messages: Sequence[dict], template: str | None = None
                      ) -> tuple[str, list[tuple[int, int]]]:
  """The full text and the `[start, end)` character spans of the assistant replies."""
  full = render(tokenizer, messages, template)
  spans = []
  for i, message in enumerate(messages):
    if message["role"] != "assistant":
      continue
    before = render(tokenizer, messages[:i], template, add_generation_prompt=True)
    through = render(tokenizer, messages[:i + 1], template)
    if not (through.startswith(before) and full.startswith(through)):
      raise UserError("the chat template does not render conversation prefixes as prefixes "
                      "of the whole conversation, so assistant turns cannot be located; "
                      "set data.chat_template to a template that does")
    spans.append((len(before), max(len(through.rstrip()), len(before))))
  return full, spans


def token_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
               ) -> np.ndarray:
  """1 for tokens whose `[start, end)` characters overlap any span, else 0 (int32)."""
  mask = np.zeros(len(offsets), np.int32)
  if not len(offsets) or not spans:
    return mask
  offsets = np.asarray(offsets, np.int64).reshape(-1, 2)
  for start, end in spans:
    mask |= ((offsets[:, 0] < end) & (offsets[:, 1] > start)).astype(np.int32)
  return mask


def encode(tokenizer, conversations: Sequence[Sequence[dict]], template: str | None = None, *,
           last_reply_only: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
  """Token ids and assistant masks (both int32) of each conversation, untruncated; with
  `last_reply_only` the mask marks the final assistant reply alone (a preference pair's reply
  after a history that holds earlier assistant turns)."""
  rendered = [render_with_spans(tokenizer, messages, template) for messages in conversations]
  if last_reply_only:
    rendered = [(text, spans[-1:]) for text, spans in rendered]
  out = []
  for start in range(0, len(rendered), _CHUNK):
    chunk = rendered[start:start + _CHUNK]
    enc = tokenizer([text for text, _ in chunk], add_special_tokens=False,
                    return_offsets_mapping=True, return_attention_mask=False)
    for (_, spans), ids, offsets in zip(chunk, enc["input_ids"], enc["offset_mapping"]):
      out.append((np.asarray(ids, np.int32), token_mask(offsets, spans)))
  return out


def prompt_messages(messages: Sequence[dict]) -> tuple[list[dict], str]:
  """Messages before the last assistant turn, and that turn's content (the reference reply)."""
  last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
  return list(messages[:last]), messages[last]["content"]
